"""What the queue reads of a backend, through protocols: the queue never imports the proxy's ``Backend``.

``Deployed`` is the part every reader shares — a name, a config, a circuit breaker; placement
(``dispatcher.Deployment``) and the provider-batch lifecycle (``provider_batches.BatchBackend``) each extend
it with what they read besides. ``proxy.backends.Backend`` is all of them.
"""

from __future__ import annotations

from typing import Protocol

from tokenyard.config import BackendConfig


class Breaker(Protocol):
    """Whether a backend may be sent work now (``proxy.breaker.CircuitBreaker`` is one)."""

    def available(self, now: float) -> bool:
        """Whether a request may be sent now."""
        ...


class Deployed(Protocol):
    """A configured backend, as the queue sees any of them."""

    @property
    def name(self) -> str:
        """The backend's name in the config."""
        ...

    @property
    def config(self) -> BackendConfig:
        """Its configuration (its kind)."""
        ...

    @property
    def breaker(self) -> Breaker:
        """Its circuit breaker."""
        ...
