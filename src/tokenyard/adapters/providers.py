"""How each provider is called: the headers that carry its key and how a path becomes its URL (pure).

Decided once, when a client is built, so a request pays nothing for it:

- ``openai`` (and every OpenAI-compatible engine): ``Authorization: Bearer <key>``, ``{base_url}{path}``;
- ``anthropic``: ``x-api-key: <key>`` and ``anthropic-version``, ``{base_url}{path}`` (base ``…/v1``);
- ``azure``: ``api-key: <key>``; the deployment's endpoints (chat completions, completions, embeddings)
  under ``{base_url}/openai/deployments/{deployment}{path}``, every other path (the Responses API and its
  stored responses, whose body names the deployment as its ``model``) under ``{base_url}/openai{path}``,
  each with ``?api-version=``: what Azure's REST reference and the ``openai`` SDK's ``AzureOpenAI`` do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote

from tokenyard.wire import anthropic

Provider = Literal["openai", "anthropic", "azure"]

# The paths Azure serves under a deployment; the rest live beside the deployments, under /openai.
AZURE_DEPLOYMENT_PATHS: Final = frozenset({"/chat/completions", "/completions", "/embeddings"})
AZURE_KEY_HEADER: Final = "api-key"


@dataclass(frozen=True, slots=True)
class AzureTarget:
    """Where an Azure OpenAI model lives: its deployment name and the API version every call asks for."""

    deployment: str
    api_version: str


def auth_headers(provider: Provider, api_key: str | None) -> dict[str, str]:
    """The headers a provider reads its key (and, for Anthropic, its API version) from; no key, no auth."""
    headers: dict[str, str] = {}
    if provider == "anthropic":
        headers[anthropic.VERSION_HEADER] = anthropic.DEFAULT_VERSION
    if not api_key:
        return headers
    if provider == "anthropic":
        headers[anthropic.API_KEY_HEADER] = api_key
    elif provider == "azure":
        headers[AZURE_KEY_HEADER] = api_key
    else:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


UrlFor = Callable[[str], str]
"""A path (``/chat/completions``, ``/responses/resp_1``) → the provider's full URL for it."""


def url_for(provider: Provider, base_url: str, azure: AzureTarget | None = None) -> UrlFor:
    """How paths become URLs for this provider and base URL (``base_url`` without a trailing slash)."""
    base = base_url.rstrip("/")
    if provider != "azure":
        return base.__add__
    if azure is None:
        raise ValueError("an azure upstream needs its deployment and api_version")
    deployment = f"{base}/openai/deployments/{quote(azure.deployment, safe='')}"
    beside = f"{base}/openai"
    query = f"?api-version={quote(azure.api_version, safe='')}"

    def azure_url(path: str) -> str:
        # A path that already carries a query (a relay's ``?after=``) gets the version as one more member.
        stem, mark, rest = path.partition("?")
        root = deployment if stem in AZURE_DEPLOYMENT_PATHS else beside
        return root + stem + query + ("&" + rest if mark else "")

    return azure_url
