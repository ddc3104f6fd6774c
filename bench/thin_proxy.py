"""The thinnest proxy there is, to measure upstream HTTP clients and nothing else.

A raw ASGI app under uvicorn (uvloop, httptools): it reads the body, POSTs it to one upstream URL with the
chosen client over a pooled keep-alive connection, and answers with the upstream's bytes. No routing, no
metering, no validation: whatever it costs above the upstream direct is the server and the client.

    python -m bench.thin_proxy --client aiohttp --port 9200 --upstream http://127.0.0.1:9101/v1/chat/completions
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Post = Callable[[bytes], Awaitable[bytes]]
CLIENTS = ("aiohttp", "httpx", "httpx2", "httpx-aiohttp")
_HEADERS = {"content-type": "application/json"}


async def open_client(name: str, url: str, connections: int) -> Post:
    """A ``post(body) -> bytes`` over client ``name``, pooled for ``connections`` concurrent requests."""
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

        async def post_aiohttp(body: bytes) -> bytes:
            async with session.post(url, data=body, headers=_HEADERS) as resp:
                return await resp.read()

        return post_aiohttp
    limits: Any
    if name == "httpx-aiohttp":
        import httpx

        httpx_aiohttp: Any = importlib.import_module("httpx_aiohttp")  # the bench extra; may be absent
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        client = httpx_aiohttp.HttpxAiohttpClient(limits=limits)
    else:
        module: Any = importlib.import_module(name)  # httpx or httpx2: the same API
        limits = module.Limits(max_connections=connections, max_keepalive_connections=connections)
        client = module.AsyncClient(limits=limits)

    async def post_httpx(body: bytes) -> bytes:
        resp = await client.post(url, content=body, headers=_HEADERS)
        content: bytes = resp.content
        return content

    return post_httpx


def app_for(client: str, url: str, connections: int) -> Callable[..., Awaitable[None]]:
    post: Post | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal post
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                post = await open_client(client, url, connections)
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/health/ready":
            answer = b"ok"
        else:
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            assert post is not None
            answer = await post(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the URL every request is POSTed to")
    parser.add_argument("--connections", type=int, default=512)
    args = parser.parse_args()
    uvicorn.run(
        app_for(args.client, args.upstream, args.connections),
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
