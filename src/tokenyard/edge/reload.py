"""Reloading the config while running: re-read the file, keep what needs a restart, swap the rest in whole.

Every part that follows reloads reads the one ``LiveConfig``; nothing is handed the new config by hand. Only
the admin API's session secret is redone: it is agreed anew with the other replicas through the store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from tokenyard.config import TokenyardConfig, load_config
from tokenyard.errors import ConfigError
from tokenyard.live import LiveConfig

log = logging.getLogger("tokenyard")

# Sections a running proxy cannot swap (its backends, their clients and state; its store): a reload that
# changes them says so, and they wait for a restart.
RESTART_ONLY: Final = ("backends", "models", "meter", "routing", "telemetry")


def merged(old: TokenyardConfig, new: TokenyardConfig) -> tuple[TokenyardConfig, list[str]]:
    """``new`` as it can apply while running (restart-only sections and the listener kept from ``old``), and
    the sections that changed but need a restart."""
    needs_restart = [name for name in RESTART_ONLY if getattr(new, name) != getattr(old, name)]
    # The listener stays where it is (the command line may have moved it from the file's).
    kept = {name: getattr(old, name) for name in RESTART_ONLY}
    server = new.server.model_copy(update={"host": old.server.host, "port": old.server.port})
    return new.model_copy(update={**kept, "server": server}), needs_restart


class Reloader:
    """Re-reads this replica's config file (``None``: the built-in quick start) into ``live``."""

    def __init__(
        self,
        path: str | None,
        live: LiveConfig,
        *,
        agree_session_secret: Callable[[], Awaitable[None]],
    ) -> None:
        self.path = path
        self.live = live
        self.agree_session_secret = agree_session_secret

    async def here(self) -> dict[str, Any]:
        """Re-read the file and apply what may change while running (SIGHUP does this)."""
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            log.warning("reload refused, the config is invalid:\n%s", exc)
            return {"reloaded": False, "problems": [f"{p}: {m}" if p else m for p, m in exc.problems]}
        config, needs_restart = merged(self.live.config, new)
        self.live.swap(config)
        # A new admin key needs a new session secret, agreed with the replicas.
        await self.agree_session_secret()
        log.info(
            "config reloaded%s", f"; needs a restart for: {', '.join(needs_restart)}" if needs_restart else ""
        )
        return {"reloaded": True, "needs_restart": needs_restart}
