"""Send exactly N requests at concurrency C and exit (for instruction counting, not timing)."""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from bench.load import body
from bench.services import BENCH_KEY


async def run(url: str, total: int, concurrency: int, stream: bool) -> None:
    left = total
    payload = body("bench", stream=stream)
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with s.post(url, data=payload) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed requests that ask for the usage")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.requests, args.concurrency, args.stream))


if __name__ == "__main__":
    main()
