"""The thinnest proxy there is: the floor a proxy's own work is measured from.

A raw ASGI app under uvicorn (uvloop, httptools). It reads the body, POSTs it over a pooled keep-alive
connection to the upstream's base URL plus the request's own path, and relays the answer: in one piece when
the upstream gives its length, otherwise chunk by chunk as the chunks arrive (streams). No auth, routing,
validation or metering: whatever it costs above the upstream direct is the server and the client.
``bench.clients`` runs it over each client; ``bench.speed`` runs it over aiohttp as the "bare" target.

    python -m bench.thin_proxy --client aiohttp --port 9200 --upstream http://127.0.0.1:9101
    # POST http://127.0.0.1:9200/slow20/v1/chat/completions goes to http://127.0.0.1:9101/slow20/v1/...
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Send = Callable[[dict[str, Any]], Awaitable[None]]
Relay = Callable[[str, bytes, Send], Awaitable[None]]  # (path, body, the ASGI send): the answer relayed
CLIENTS = ("aiohttp", "httpx", "httpx2", "httpx-aiohttp")
_HEADERS = {"content-type": "application/json"}
_END = {"type": "http.response.body", "body": b""}


def _start(status: int, content_type: str, length: int | None) -> dict[str, Any]:
    """The response head: the upstream's status and content type, and its length when it gave one (else
    uvicorn frames the body in chunks, as the upstream did)."""
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return {"type": "http.response.start", "status": status, "headers": headers}


async def open_client(name: str, base_url: str, connections: int) -> Relay:
    """A relay over client ``name``, pooled for ``connections`` concurrent requests."""
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections), auto_decompress=False
        )

        async def relay_aiohttp(path: str, body: bytes, send: Send) -> None:
            async with session.post(base_url + path, data=body, headers=_HEADERS) as resp:
                content_type = resp.headers.get("Content-Type", "application/json")
                if resp.content_length is not None:
                    answer = await resp.read()
                    await send(_start(resp.status, content_type, len(answer)))
                    await send({"type": "http.response.body", "body": answer})
                    return
                await send(_start(resp.status, content_type, None))
                while chunk := await resp.content.readany():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send(_END)

        return relay_aiohttp
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

    async def relay_httpx(path: str, body: bytes, send: Send) -> None:
        async with client.stream("POST", base_url + path, content=body, headers=_HEADERS) as resp:
            content_type = resp.headers.get("content-type", "application/json")
            if "content-length" in resp.headers:
                answer = await resp.aread()
                await send(_start(resp.status_code, content_type, len(answer)))
                await send({"type": "http.response.body", "body": answer})
                return
            await send(_start(resp.status_code, content_type, None))
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send(_END)

    return relay_httpx


def app_for(client: str, base_url: str, connections: int) -> Callable[..., Awaitable[None]]:
    relay: Relay | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
        nonlocal relay
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                relay = await open_client(client, base_url, connections)
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/health/ready":
            await send(_start(200, "text/plain", 2))
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert relay is not None
        await relay(scope["path"], body, send)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", required=True, help="the upstream's base URL; each request's path is appended"
    )
    parser.add_argument("--connections", type=int, default=512)
    args = parser.parse_args()
    uvicorn.run(
        app_for(args.client, args.upstream.rstrip("/"), args.connections),
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
