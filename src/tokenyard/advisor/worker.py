"""The advisor's worker process: one evaluation of the meter store, started by the proxy (``live.py``).

Reads ``{"config", "now", "replica", "keep_state"}`` as JSON on stdin, evaluates the store's window,
stores the advice document (and, with ``keep_state``, the stability state), and writes the document as
JSON to stdout. Exits 1 with the reason on stderr if the store fails.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.evaluation import evaluate_store
from tokenyard.advisor.live import ADVICE_DOC
from tokenyard.config import TokenyardConfig
from tokenyard.errors import StoreError
from tokenyard.meter.open_store import open_configured_store


async def _evaluate(request: dict[str, Any]) -> bytes:
    config = TokenyardConfig.model_validate(request["config"])
    store = open_configured_store(config.meter)
    try:
        result = await evaluate_store(
            store,
            config,
            load_catalog(config.advisor.catalog),
            now=request["now"],
            keep_state=request["keep_state"],
        )
        document = orjson.dumps(result.document(request["replica"]))
        await store.put_document(ADVICE_DOC, document)
        return document
    finally:
        await store.aclose()


def main() -> int:
    """Entry point of ``python -m tokenyard.advisor.worker``."""
    try:
        document = asyncio.run(_evaluate(orjson.loads(sys.stdin.buffer.read())))
    except StoreError as exc:
        print(f"the meter store failed: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
