"""The config in force while tokenyard runs: one holder that a reload swaps, read by every part that follows
reloads (the request path, admin, the advisor and the async track, the last two through callables).

What the request path derives from the config — the key ring, the classifier's rules — is built once per
(re)load, here, never per request. ``current`` is a single attribute holding a frozen snapshot, so a reader
sees the old settings or the new ones, never half of each.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenyard.admission.auth import KeyRing
from tokenyard.admission.classify import Rule
from tokenyard.config import TokenyardConfig
from tokenyard.queue.settings import AsyncTrackConfig


@dataclass(frozen=True, slots=True)
class Settings:
    """One loaded config and what is derived from it."""

    config: TokenyardConfig
    keys: KeyRing
    async_track: AsyncTrackConfig | None  # None: the async track does not run (every request is real time)
    async_rules: tuple[Rule, ...]

    @classmethod
    def of(cls, config: TokenyardConfig, *, async_track_runs: bool) -> Settings:
        """The settings of ``config``; ``async_track_runs`` is fixed at start-up (it needs a job store)."""
        track = config.async_track if async_track_runs else None
        return cls(config, KeyRing(config.keys), track, track.classifier_rules() if track else ())


class LiveConfig:
    """The settings in force; ``swap`` replaces them whole."""

    __slots__ = ("_async_track_runs", "current")

    def __init__(self, config: TokenyardConfig, *, async_track_runs: bool) -> None:
        self._async_track_runs = async_track_runs
        self.current = Settings.of(config, async_track_runs=async_track_runs)

    @property
    def config(self) -> TokenyardConfig:
        """The config in force."""
        return self.current.config

    def swap(self, config: TokenyardConfig) -> None:
        """Put ``config`` in force (a reload): every reader sees it from its next read."""
        self.current = Settings.of(config, async_track_runs=self._async_track_runs)

    def async_track(self) -> AsyncTrackConfig:
        """The async-track settings in force (for parts that take them as a callable)."""
        return self.current.config.async_track
