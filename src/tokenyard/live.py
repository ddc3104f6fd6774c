"""The config in force while tokenyard runs: one holder that a reload swaps, read by every part that follows
reloads (the request path, admin, the advisor and the async track, the last two through callables).

What the request path derives from the config — the key ring, the classifier's rules — is built once per
(re)load, here, never per request. ``current`` is a single attribute holding a frozen snapshot, so a reader
sees the old settings or the new ones, never half of each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenyard.admission.auth import NO_STORED_KEYS, KeyRing, StoredKeys
from tokenyard.admission.classify import Rule
from tokenyard.config import TokenyardConfig, is_loopback
from tokenyard.queue.settings import AsyncTrackConfig


@dataclass(frozen=True, slots=True)
class Settings:
    """One loaded config and what is derived from it."""

    config: TokenyardConfig
    keys: KeyRing
    async_track: AsyncTrackConfig | None  # None: the async track does not run (every request is real time)
    async_rules: tuple[Rule, ...]

    @classmethod
    def of(
        cls,
        config: TokenyardConfig,
        *,
        async_track_runs: bool,
        stored: StoredKeys = NO_STORED_KEYS,
        wall: Callable[[], float] = time.time,
    ) -> Settings:
        """The settings of ``config``; ``async_track_runs`` is fixed at start-up (it needs a job store), and
        ``stored`` are the keys made through the admin API, as last read from the store."""
        track = config.async_track if async_track_runs else None
        keys = KeyRing(
            config.keys,
            loopback=is_loopback(config.server.host),
            admin_key=config.server.admin_key is not None,
            stored=stored,
            wall=wall,
        )
        return cls(config, keys, track, track.classifier_rules() if track else ())


class LiveConfig:
    """The settings in force; ``swap`` replaces them whole, ``keep_stored_keys`` the admin API's keys."""

    __slots__ = ("_async_track_runs", "_wall", "current")

    def __init__(
        self, config: TokenyardConfig, *, async_track_runs: bool, wall: Callable[[], float] = time.time
    ) -> None:
        self._async_track_runs = async_track_runs
        self._wall = wall
        self.current = Settings.of(config, async_track_runs=async_track_runs, wall=wall)

    @property
    def config(self) -> TokenyardConfig:
        """The config in force."""
        return self.current.config

    def swap(self, config: TokenyardConfig) -> None:
        """Put ``config`` in force (a reload): every reader sees it from its next read."""
        stored = self.current.keys.stored  # not the file's: they stay what the store last said
        self.current = Settings.of(
            config, async_track_runs=self._async_track_runs, stored=stored, wall=self._wall
        )

    def keep_stored_keys(self, stored: StoredKeys) -> None:
        """Put the admin API's keys, as just read from the store, in force."""
        self.current.keys.stored = stored

    def async_track(self) -> AsyncTrackConfig:
        """The async-track settings in force (for parts that take them as a callable)."""
        return self.current.config.async_track
