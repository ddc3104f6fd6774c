"""Waiting for effects that land a little later, without a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def eventually(check: Any, timeout_s: float = 10.0) -> None:
    """Poll an async ``check`` until it stops raising AssertionError (for effects that land a bit later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
