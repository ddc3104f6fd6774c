"""Prices as exact integers, and the cost of a request (pure).

Config prices are USD per 1M tokens and USD per GPU-hour; here they become integer pico-USD per token and
per GPU-hour, so a request's cost is an integer and totals add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenyard.config import BackendConfig
from tokenyard.meter.model import PUSD_PER_USD

_PUSD_PER_USD_PER_1M = PUSD_PER_USD // 1_000_000  # $1 per 1M tokens = 1e6 pico-USD per token


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Per-token prices of one backend, in pico-USD (0 for dedicated: it bills GPU time instead)."""

    input_pusd: int
    cached_input_pusd: int
    output_pusd: int
    cache_write_input_pusd: int = 0  # a token written into a prompt cache

    def cost_pusd(
        self, prompt_tokens: int, cached_tokens: int, completion_tokens: int, cache_write_tokens: int = 0
    ) -> int:
        """The cost of one request. Cached prompt tokens (read from a cache) and cache-write tokens (written
        into one) are both parts of ``prompt_tokens``; each part is billed at its own price."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(cache_write_tokens, prompt_tokens - cached) if cache_write_tokens > 0 else 0
        return (
            (prompt_tokens - cached - written) * self.input_pusd
            + cached * self.cached_input_pusd
            + written * self.cache_write_input_pusd
            + completion_tokens * self.output_pusd
        )


FREE = TokenPrices(0, 0, 0)


def usd_per_1m_to_pusd(price: float) -> int:
    """USD per 1M tokens → pico-USD per token (exact for prices with up to six decimals)."""
    return round(price * _PUSD_PER_USD_PER_1M)


def token_prices(backend: BackendConfig) -> TokenPrices:
    """A backend's per-token prices; a dedicated backend's tokens cost nothing extra."""
    if backend.kind == "dedicated":
        return FREE
    prices = backend.prices
    cached = prices.input_per_1m if prices.cached_input_per_1m is None else prices.cached_input_per_1m
    written = prices.cache_write_input_per_1m
    written = prices.input_per_1m if written is None else written
    return TokenPrices(
        usd_per_1m_to_pusd(prices.input_per_1m),
        usd_per_1m_to_pusd(cached),
        usd_per_1m_to_pusd(prices.output_per_1m),
        usd_per_1m_to_pusd(written),
    )


def gpu_hour_pusd(backend: BackendConfig) -> int:
    """A dedicated backend's price of one GPU for one hour, in pico-USD."""
    return round((backend.gpu_hour_price or 0.0) * PUSD_PER_USD)
