#!/usr/bin/env bash
# Creates a virtualenv with LiteLLM's proxy (litellm[proxy]) outside the repo, once per machine.
#
# LiteLLM pulls in many dependencies that tokenyard must not share, so it gets its own virtualenv
# (default ~/.cache/tokenyard/litellm-venv, or under $TOKENYARD_CACHE_DIR). A run that finds it
# prints the path of its `litellm` command and does nothing else.
set -euo pipefail

LITELLM_VERSION=1.81.16  # pinned: newer releases move the proxy into a package PyPI here lacks
CACHE="${TOKENYARD_CACHE_DIR:-$HOME/.cache/tokenyard}"
VENV="$CACHE/litellm-venv"
STAMP="$VENV/.tokenyard-litellm-$LITELLM_VERSION"

if [[ ! -e $STAMP ]]; then
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"
  touch "$STAMP"
fi
echo "$VENV/bin/litellm"
