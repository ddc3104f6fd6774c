"""The thinnest proxy there is: the floor a proxy's own work is measured from.

A raw app under one HTTP server: uvicorn (uvloop, httptools; the default), hypercorn (uvloop), or granian
(uvloop, one worker, one runtime thread) over its ASGI or its native RSGI interface. It reads the body,
POSTs it over a pooled keep-alive connection to the upstream's base URL plus the request's own path, and
relays the answer: in one piece when the upstream gives its length, otherwise chunk by chunk as the chunks
arrive (streams). No auth, routing, validation or metering: whatever it costs above the upstream direct
is the server and the client. ``bench.clients`` runs it over each client; ``bench.speed`` runs it over
aiohttp under uvicorn as the "bare" target (and over ``http1``, tokenyard's own client, as "bare-h1" with
``--bare-http1``); ``bench.ceiling`` runs other servers and clients beside that.

    python -m bench.thin_proxy --client aiohttp --port 9200 --upstream http://127.0.0.1:9101
    python -m bench.thin_proxy --server granian-rsgi --client pyreqwest --port 9200 --upstream ...
    # POST http://127.0.0.1:9200/slow20/v1/chat/completions goes to http://127.0.0.1:9101/slow20/v1/...

granian serves from a worker process of its own (its supervisor is the process started); the others serve
from the process started.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

CLIENTS = ("aiohttp", "httpx", "httpx2", "httpx-aiohttp", "pyreqwest", "httpr", "http1")
SERVERS = ("uvicorn", "hypercorn", "granian-asgi", "granian-rsgi")
_HEADERS = {"content-type": "application/json"}
_END = {"type": "http.response.body", "body": b""}
_ENV = "THIN_PROXY"  # granian's worker reads the client, upstream and pool size from here: "client|url|n"

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Sink(Protocol):
    """Where a relay writes the answer: in one piece (``whole``), or a head then chunks then ``end``."""

    async def whole(self, status: int, content_type: str, body: bytes) -> None: ...
    async def start(self, status: int, content_type: str) -> None: ...
    async def chunk(self, data: bytes) -> None: ...
    async def end(self) -> None: ...


Relay = Callable[[str, bytes, Sink], Awaitable[None]]  # (path, body, sink): the answer relayed


def _start(status: int, content_type: str, length: int | None) -> dict[str, Any]:
    """The ASGI response head: the upstream's status and content type, and its length when it gave one
    (else the server frames the body in chunks, as the upstream did)."""
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return {"type": "http.response.start", "status": status, "headers": headers}


class AsgiSink:
    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send = send

    async def whole(self, status: int, content_type: str, body: bytes) -> None:
        await self.send(_start(status, content_type, len(body)))
        await self.send({"type": "http.response.body", "body": body})

    async def start(self, status: int, content_type: str) -> None:
        await self.send(_start(status, content_type, None))

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self.send(_END)


class RsgiSink:
    """granian's RSGI protocol: ``response_bytes`` for a whole answer, ``response_stream`` for chunks."""

    __slots__ = ("protocol", "transport")

    def __init__(self, protocol: Any) -> None:
        self.protocol, self.transport = protocol, None

    async def whole(self, status: int, content_type: str, body: bytes) -> None:
        self.protocol.response_bytes(status, [("content-type", content_type)], body)

    async def start(self, status: int, content_type: str) -> None:
        self.transport = self.protocol.response_stream(status, [("content-type", content_type)])

    async def chunk(self, data: bytes) -> None:
        await self.transport.send_bytes(data)

    async def end(self) -> None:
        pass


def _aiohttp(base_url: str, connections: int) -> Relay:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), auto_decompress=False)

    async def relay(path: str, body: bytes, sink: Sink) -> None:
        async with session.post(base_url + path, data=body, headers=_HEADERS) as resp:
            content_type = resp.headers.get("Content-Type", "application/json")
            if resp.content_length is not None:
                await sink.whole(resp.status, content_type, await resp.read())
                return
            await sink.start(resp.status, content_type)
            while chunk := await resp.content.readany():
                await sink.chunk(chunk)
        await sink.end()

    return relay


def _pyreqwest(base_url: str, connections: int) -> Relay:
    from pyreqwest.client import ClientBuilder

    builder = ClientBuilder().max_connections(connections).follow_redirects(False)
    client = builder.gzip(False).brotli(False).zstd(False).deflate(False).build()

    async def relay(path: str, body: bytes, sink: Sink) -> None:
        # With its default read-ahead (64 KiB) it returns the head only once that much or the whole body
        # has come: a stream would reach the client at its end. 0 hands on each chunk as it comes.
        builder = client.post(base_url + path).headers(_HEADERS).body_bytes(body)
        request = builder.streamed_read_buffer_limit(0).build_streamed()
        async with request as resp:
            content_type = resp.get_header("content-type") or "application/json"
            # Its bodies are pyreqwest's own Bytes (a buffer): granian takes only bytes.
            if resp.get_header("content-length") is not None:
                await sink.whole(resp.status, content_type, (await resp.bytes()).to_bytes())
                return
            await sink.start(resp.status, content_type)
            reader = resp.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                await sink.chunk(chunk.to_bytes())
        await sink.end()

    return relay


def _httpr(base_url: str, connections: int) -> Relay:
    import httpr

    # Its async client runs the blocking Rust client on a thread pool: one thread per request in flight.
    client = httpr.AsyncClient(
        max_concurrency=connections, cookie_store=False, referer=False, follow_redirects=False, timeout=None
    )

    return _stream_relay(client, base_url, raw=False)


def _http1(base_url: str, connections: int) -> Relay:
    """tokenyard's own upstream client without tokenyard (``tokenyard.adapters.http1``: a pool of
    keep-alive connections, one write a request, httptools reading the answer), with none of the adapter
    above it (deadlines, resends, error words): what the client alone costs a pass-through."""
    from tokenyard.adapters.http1 import Http1Pool

    parsed = urlsplit(base_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    prefix = parsed.path.rstrip("/")
    head = b"Host: %s:%d\r\nContent-Type: application/json\r\nContent-Length: " % (host.encode(), port)
    pool = Http1Pool(host, port, None, connect_s=30, max_connections=connections)

    async def relay(path: str, body: bytes, sink: Sink) -> None:
        conn = await pool.acquire()
        conn.send(b"POST %s HTTP/1.1\r\n%s%d\r\n\r\n%s" % ((prefix + path).encode(), head, len(body), body))
        try:
            while not conn.head_done:
                if conn.closed:
                    raise ConnectionError("the upstream closed the connection")
                await conn.wait()
            content_type = conn.headers.get(b"content-type", b"application/json").decode("latin-1")
            if b"content-length" in conn.headers:
                await sink.whole(conn.status, content_type, await conn.rest())
                return
            await sink.start(conn.status, content_type)
            while True:
                if conn.parts:
                    await sink.chunk(conn.take())
                elif conn.done:
                    break
                elif conn.closed:
                    raise ConnectionError("the upstream closed the stream")
                else:
                    await conn.wait()
        finally:
            conn.finish()
        await sink.end()

    return relay


def _httpx(name: str, connections: int) -> Any:
    if name == "httpx-aiohttp":
        import httpx

        httpx_aiohttp: Any = importlib.import_module("httpx_aiohttp")  # the bench extra; may be absent
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx_aiohttp.HttpxAiohttpClient(limits=limits)
    module: Any = importlib.import_module(name)  # httpx or httpx2: the same API
    return module.AsyncClient(
        limits=module.Limits(max_connections=connections, max_keepalive_connections=connections)
    )


async def open_client(name: str, base_url: str, connections: int) -> Relay:
    """A relay over client ``name``, pooled for ``connections`` concurrent requests."""
    if name == "aiohttp":
        return _aiohttp(base_url, connections)
    if name == "pyreqwest":
        return _pyreqwest(base_url, connections)
    if name == "httpr":
        return _httpr(base_url, connections)
    if name == "http1":
        return _http1(base_url, connections)
    client = _httpx(name, connections)

    return _stream_relay(client, base_url, raw=True)


def _stream_relay(client: Any, base_url: str, *, raw: bool) -> Relay:
    """A relay over a client with httpx's streaming API (httpx, httpx2, httpx-aiohttp, httpr): chunks from
    ``aiter_raw`` if ``raw``, else from ``aiter_bytes`` (how httpr was measured)."""

    async def relay(path: str, body: bytes, sink: Sink) -> None:
        async with client.stream("POST", base_url + path, content=body, headers=_HEADERS) as resp:
            content_type = resp.headers.get("content-type", "application/json")
            if "content-length" in resp.headers:
                await sink.whole(resp.status_code, content_type, await resp.aread())
                return
            await sink.start(resp.status_code, content_type)
            async for chunk in resp.aiter_raw() if raw else resp.aiter_bytes():
                await sink.chunk(chunk)
        await sink.end()

    return relay


def app_for(client: str, base_url: str, connections: int) -> Callable[..., Awaitable[None]]:
    """The ASGI app: opens the client at lifespan start-up."""
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
        await relay(scope["path"], body, AsgiSink(send))

    return app


def rsgi_app_for(client: str, base_url: str, connections: int) -> Callable[..., Awaitable[None]]:
    """The RSGI app (granian's native interface): opens the client on the first request."""
    relay: Relay | None = None

    async def app(scope: Any, protocol: Any) -> None:
        nonlocal relay
        if scope.path == "/health/ready":
            protocol.response_bytes(200, [("content-type", "text/plain")], b"ok")
            return
        body = await protocol()
        if relay is None:
            relay = await open_client(client, base_url, connections)
        await relay(scope.path, body, RsgiSink(protocol))

    return app


def _from_env() -> tuple[str, str, int]:
    client, base_url, connections = os.environ[_ENV].split("|")
    return client, base_url, int(connections)


def granian_asgi() -> Callable[..., Awaitable[None]]:
    """granian's factory for the ASGI app (run in its worker process)."""
    return app_for(*_from_env())


def granian_rsgi() -> Callable[..., Awaitable[None]]:
    """granian's factory for the RSGI app (run in its worker process)."""
    return rsgi_app_for(*_from_env())


def serve(server: str, client: str, base_url: str, connections: int, port: int) -> None:
    """Serve the thin proxy on ``port`` with ``server``; quiet, no access log."""
    if server == "uvicorn":
        import uvicorn

        app = app_for(client, base_url, connections)
        uvicorn.run(app, port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False)
    elif server == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.backlog = 2048  # uvicorn's default; hypercorn's is 100
        config.keep_alive_max_requests = 2**31  # hypercorn closes a connection after 1,000 by default
        config.accesslog, config.loglevel = None, "WARNING"
        uvloop.run(hypercorn_serve(app_for(client, base_url, connections), config, mode="asgi"))
    else:
        os.environ[_ENV] = f"{client}|{base_url}|{connections}"
        interface = server.split("-")[1]
        serve_granian(f"bench.thin_proxy:granian_{interface}", interface, port, backlog=2048)


def serve_granian(
    factory: str, interface: str, port: int, *, backlog: int, log_level: str = "warning"
) -> None:
    """granian as every bench runs it: the app from ``factory`` (``module:function``) on loopback, one worker
    process, one runtime thread, uvloop, HTTP/1.1, no access log."""
    from granian import Granian

    Granian(
        factory,
        factory=True,
        address="127.0.0.1",
        port=port,
        interface=interface,
        workers=1,
        runtime_threads=1,
        blocking_threads=1,
        loop="uvloop",
        http="1",
        websockets=False,
        backlog=backlog,
        log_level=log_level,
        log_access=False,
    ).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=SERVERS, default="uvicorn")
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", required=True, help="the upstream's base URL; each request's path is appended"
    )
    parser.add_argument("--connections", type=int, default=512)
    args = parser.parse_args()
    serve(args.server, args.client, args.upstream.rstrip("/"), args.connections, args.port)


if __name__ == "__main__":
    main()
