#!/usr/bin/env bash
# Installs the real upstreams the tier in tests/real_upstream/ runs against, once per machine, outside the
# repo (~/.cache/tokenyard, or $TOKENYARD_CACHE_DIR): LiteLLM's proxy in a virtualenv of its own (about
# 1.5 minutes) and llama.cpp's llama-server built from source (about 15-30 minutes on 2 cores). A run that
# finds both does nothing. Building needs cmake, a C++ compiler and make (Debian: cmake g++ make).
set -euo pipefail
here="$(dirname "$0")"
echo "real upstreams: LiteLLM's proxy and llama-server (first run only: builds llama-server, ~15-30 min)" >&2
bash "$here/setup_litellm.sh" >/dev/null
bash "$here/build_llama_server.sh" >/dev/null
