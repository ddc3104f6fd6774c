"""A closed-loop HTTP load generator: C connections each sending requests back to back for D seconds.

Prints one JSON line: requests/s, p50/p99 latency (ms), non-2xx, failed (connection errors, and streams
that ended without ``data: [DONE]``) and, for ``--hold``, how many streams were open at once.

    python -m bench.load --url http://127.0.0.1:8080/v1/chat/completions --concurrency 64 --seconds 5
    python -m bench.load --url ... --stream             # SSE with include_usage, read to [DONE]
    python -m bench.load --url ... --hold 1000 --model bench-drip
                                                         # 1,000 streams opened at once and held to the end
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp
import orjson

from bench.services import BENCH_KEY, WARMUP_S

HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}


def body(model: str, stream: bool) -> bytes:
    """A small chat request; streaming ones ask for the usage chunk."""
    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
    }
    if stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(request)


BODY = body("bench", stream=False)


async def run(
    url: str, concurrency: int, seconds: float, warmup_s: float, payload: bytes, stream: bool
) -> dict[str, float]:
    """Drive the load; measure only after the warm-up."""
    latencies: list[float] = []
    non_2xx = failed = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:

        async def worker() -> None:
            nonlocal non_2xx, failed
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=payload) as resp:
                        answer = await resp.read()
                        ok = 200 <= resp.status < 300
                except aiohttp.ClientError:
                    failed += 1
                    continue
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    if not ok:
                        non_2xx += 1
                    elif stream and not answer.endswith(b"data: [DONE]\n\n"):
                        failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    count = len(latencies)
    return {
        "rps": count / seconds,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(count * 0.99) - 1] * 1000 if count >= 100 else 0.0,
        "non_2xx": non_2xx,
        "failed": failed,
    }


async def hold(url: str, streams: int, payload: bytes) -> dict[str, float]:
    """Open ``streams`` streams at once and read each to its end; count how many were open together."""
    open_now = most_open = non_2xx = failed = 0
    durations: list[float] = []
    connector = aiohttp.TCPConnector(limit=streams)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS, timeout=timeout) as session:

        async def one() -> None:
            nonlocal open_now, most_open, non_2xx, failed
            started = time.perf_counter()
            try:
                async with session.post(url, data=payload) as resp:
                    if resp.status != 200:
                        non_2xx += 1
                        await resp.read()
                        return
                    first = await resp.content.readany()
                    open_now += 1
                    most_open = max(most_open, open_now)
                    try:
                        rest = await resp.read()
                    finally:
                        open_now -= 1
                    if not (first + rest).endswith(b"data: [DONE]\n\n"):
                        failed += 1
            except aiohttp.ClientError:
                failed += 1
                return
            durations.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(streams)))
    durations.sort()
    return {
        "streams": streams,
        "most_open": most_open,
        "p50_ms": statistics.median(durations) * 1000 if durations else 0.0,
        "p99_ms": durations[max(0, int(len(durations) * 0.99) - 1)] * 1000 if durations else 0.0,
        "non_2xx": non_2xx,
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=WARMUP_S)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--stream", action="store_true", help="stream with include_usage; read to [DONE]")
    parser.add_argument(
        "--hold", type=int, default=0, metavar="N", help="open N streams at once, hold to the end"
    )
    args = parser.parse_args()
    if args.hold:
        result = asyncio.run(hold(args.url, args.hold, body(args.model, stream=True)))
    else:
        payload = body(args.model, args.stream)
        result = asyncio.run(
            run(args.url, args.concurrency, args.seconds, args.warmup_s, payload, args.stream)
        )
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
