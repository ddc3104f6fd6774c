"""aiohttp's errors in words, for the adapters still over aiohttp (provider Batch APIs, webhooks, engine
metrics: off the inference path, where ``http1.py`` serves). aiohttp's class names mean nothing to a client.
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError, ContentLengthError, TransferEncodingError

from tokenyard.adapters.http1 import strerror


def describe(exc: aiohttp.ClientError | OSError) -> str:
    """What went wrong with the upstream, in words: aiohttp's class names mean nothing to a client (the one
    map of aiohttp's errors, for every adapter over it).

    Most specific first; an aiohttp error a case below does not know keeps aiohttp's own sentence.
    """
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _describe_body(exc.__cause__)
    if isinstance(exc, aiohttp.ClientResponseError):  # the response could not be parsed
        detail = exc.message.splitlines()[0].rstrip(": ") if exc.message else ""
        what = "chunked encoding" if "chunk" in detail.lower() else "HTTP response"
        return f"the upstream's {what} was malformed" + (f" ({detail})" if detail else "")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection unexpectedly"
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return "the upstream reset the connection"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "the upstream's TLS certificate was rejected"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        return "the TLS handshake with the upstream failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return "the upstream's host name does not resolve"
        return f"cannot connect to the upstream ({strerror(exc)})"
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return f"network error with the upstream ({strerror(exc)})"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the upstream URL is invalid"
    return str(exc) or "the upstream request failed"


def _describe_body(cause: BaseException | None) -> str:
    if isinstance(cause, ContentLengthError):
        return "the upstream closed the connection mid-body (before its Content-Length was reached)"
    if isinstance(cause, TransferEncodingError):
        if "not enough data" in str(cause).lower():
            return "the upstream closed the connection mid-body (before the last chunk)"
        return "the upstream's chunked encoding was malformed"
    if isinstance(cause, ContentEncodingError):
        return "the upstream's compressed body could not be decoded"
    return "the upstream's body was incomplete or malformed"
