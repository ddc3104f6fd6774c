"""Real upstreams nobody on the project wrote, started once per session, each behind a recording relay.

- LiteLLM's proxy with ``mock_response`` models, from its own virtualenv (``setup_litellm.sh``);
- llama.cpp's ``llama-server`` running SmolLM2-135M-Instruct (``build_llama_server.sh``): one instance for
  chat and completions, one started with ``--embeddings`` for embeddings.

Both install outside the repo (``~/.cache/tokenyard`` or ``$TOKENYARD_CACHE_DIR``), once per machine;
``.ci/run`` runs the two scripts. Where they are missing the tests skip, saying how to install them; where
``TOKENYARD_REQUIRE_REAL_UPSTREAMS=1`` (``.ci/run`` exports it) or ``CI=true``, a missing one fails instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.real_upstream.upstreams import (
    LITELLM,
    LITELLM_KEY,
    Upstream,
    litellm_upstream,
    llama_upstream,
    need,
    need_llama,
    running,
)
from tests.real_upstream.yard import Yard, open_yard


@pytest.fixture(scope="session")
async def litellm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Upstream]:
    """LiteLLM's proxy, started once for the session."""
    need(LITELLM, "LiteLLM's proxy", "tests/real_upstream/setup_litellm.sh")
    async with running(litellm_upstream(tmp_path_factory.mktemp("litellm"))) as upstream:
        yield upstream


@pytest.fixture(scope="session")
async def llama(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Upstream]:
    """llama-server for chat and completions, started once for the session."""
    need_llama()
    async with running(llama_upstream(tmp_path_factory.mktemp("llama"))) as upstream:
        yield upstream


@pytest.fixture(scope="session")
async def llama_embed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Upstream]:
    """llama-server for embeddings (``--embeddings --pooling mean``), started once for the session."""
    need_llama()
    async with running(llama_upstream(tmp_path_factory.mktemp("llama-embed"), embeddings=True)) as upstream:
        yield upstream


@pytest.fixture(scope="session")
async def litellm_yard(litellm: Upstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Yard]:
    """tokenyard in front of LiteLLM (through a relay): models ``mock-chat`` and ``mock-embed``."""
    async with open_yard(
        "litellm",
        tmp_path_factory.mktemp("yard-litellm"),
        {"litellm": (litellm.port, LITELLM_KEY)},
        {"mock-chat": "litellm", "mock-embed": "litellm"},
        chat_model="mock-chat",
        embed_model="mock-embed",
    ) as yard:
        yield yard


@pytest.fixture(scope="session")
async def llama_yard(
    llama: Upstream, llama_embed: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Yard]:
    """tokenyard in front of two llama-servers (through relays): models ``smollm2`` and ``smollm2-embed``."""
    async with open_yard(
        "llama",
        tmp_path_factory.mktemp("yard-llama"),
        {"llama": (llama.port, None), "llama-embed": (llama_embed.port, None)},
        {"smollm2": "llama", "smollm2-embed": "llama-embed"},
        chat_model="smollm2",
        embed_model="smollm2-embed",
        metrics_urls={"llama": f"http://127.0.0.1:{llama.port}/metrics"},
    ) as yard:
        yield yard


@pytest.fixture(params=["litellm", "llama"])
def yard(request: pytest.FixtureRequest) -> Yard:
    """Each real upstream in turn, behind tokenyard."""
    got: Yard = request.getfixturevalue(f"{request.param}_yard")
    return got
