"""Which upstream failures send a request again: only a connection closed under it before any answer.

The decision is pure, so it is checked on the exceptions as aiohttp raises them. A dead pooled connection
shows up three ways, depending on when the upstream's close reaches the proxy: the answer never comes
(``ServerDisconnectedError``), the write finds the transport closing (``ClientConnectionResetError``), or
aiohttp wraps that write failure as ``ClientOSError("Can not write request body …")`` with no errno of its
own and the reset as its cause (seen in the real-upstream tier under load: a 502 before this).
"""

from __future__ import annotations

import errno

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from tokenyard.adapters.openai_http import closed_before_answer


def write_failed(cause: OSError) -> aiohttp.ClientOSError:
    """What aiohttp raises when the request body cannot be written (client_reqrep: cause kept)."""
    exc = aiohttp.ClientOSError(cause.errno, "Can not write request body for http://upstream/v1/x")
    exc.__cause__ = cause
    return exc


KEY = ConnectionKey("upstream", 80, False, True, None, None, None)

RESENT = [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
    write_failed(aiohttp.ClientConnectionResetError("Cannot write to closing transport")),
    write_failed(BrokenPipeError(errno.EPIPE, "Broken pipe")),
    aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
]
NOT_RESENT = [
    aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
    write_failed(OSError(errno.ENOSPC, "No space left on device")),
    aiohttp.ClientOSError(errno.EHOSTUNREACH, "No route to host"),
    aiohttp.ClientPayloadError("Response payload is not completed"),
]


@pytest.mark.parametrize("exc", RESENT, ids=lambda e: f"{type(e).__name__}:{e}")
def test_a_connection_closed_before_any_answer_is_resent(exc: aiohttp.ClientError) -> None:
    assert closed_before_answer(exc)


@pytest.mark.parametrize("exc", NOT_RESENT, ids=lambda e: f"{type(e).__name__}:{e}")
def test_other_failures_are_not_resent(exc: aiohttp.ClientError) -> None:
    assert not closed_before_answer(exc)
