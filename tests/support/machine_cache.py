"""Where tests keep what is slow to build, outside the repo and once per machine: ``~/.cache/tokenyard``, or
``$TOKENYARD_CACHE_DIR`` (the shell scripts in ``tests/real_upstream/`` read the same variable)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("TOKENYARD_CACHE_DIR") or Path.home() / ".cache" / "tokenyard")
