"""A closed-loop HTTP load generator: C connections each sending requests back to back for D seconds.

Prints one JSON line: requests/s, p50/p99 latency (ms), non-2xx and failed counts.

    python -m bench.load --url http://127.0.0.1:8080/v1/chat/completions --concurrency 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import orjson

from bench.services import BENCH_KEY

BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})


async def run(url: str, concurrency: int, seconds: float, warmup_s: float) -> dict[str, float]:
    """Drive the load; measure only after the warm-up."""
    latencies: list[float] = []
    non_2xx = failed = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal non_2xx, failed
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=BODY) as resp:
                        await resp.read()
                        ok = 200 <= resp.status < 300
                except aiohttp.ClientError:
                    failed += 1
                    continue
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    if not ok:
                        non_2xx += 1

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.concurrency, args.seconds, args.warmup_s))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
