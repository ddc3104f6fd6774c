"""Callbacks: where a finished job may be POSTed, how the POST is signed, and what it carries.

A callback URL is checked twice against ``async_track.callbacks.allow_hosts`` (no SSRF): when the job is
submitted (a URL that could not be called is a 400 naming the header) and again when it is called (the
list may have changed). The POST goes through an ``adapters.base.Webhook``; this module never touches the
network itself. It is signed as ``wire.signatures`` says, when a secret is set.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import orjson

from tokenyard.adapters.base import Webhook
from tokenyard.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from tokenyard.queue.model import Job, JobResult
from tokenyard.queue.settings import Callbacks
from tokenyard.wire.signatures import H_SIGNATURE, sign

log = logging.getLogger("tokenyard.dispatcher")  # the dispatcher's work, under its logger as before

H_CALLBACK: Final = b"x-tokenyard-callback"
CALLBACK_PARAM: Final = H_CALLBACK.decode()  # the ``param`` of errors about it: a header, not a body field
MAX_CALLBACK_CHARS: Final = 2048
# RFC 3986's characters (unreserved, reserved and '%'): no space, control, backslash or non-ASCII.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_AUTHORITY_END = re.compile(r"[/?#]")
# A host name (labels of letters, digits, '-' inside, '_' as some internal names have; one trailing dot)
# or an IPv4 address (a name by this pattern too).
_HOST_NAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                        r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")  # fmt: skip


def allowed_callback(url: str, allow_hosts: list[str]) -> str:
    """``url`` if it is an http(s) URL that can be called as it is, on an allow-listed host (no SSRF);
    ``InvalidRequest`` saying what is wrong otherwise."""
    host = _callback_host(url)
    if host not in {h.lower() for h in allow_hosts}:
        raise InvalidRequest(
            f"The callback host {host!r} is not in async_track.callbacks.allow_hosts.", param=CALLBACK_PARAM
        )
    return url


def _callback_host(url: str) -> str:
    """The host of a well-formed callback URL, lowercase (an IPv6 address without its brackets).

    Stricter than ``urlsplit`` (which raises on some malformed URLs and lets others through to fail at
    delivery): RFC 3986's characters only, an http(s) scheme, no user info, a valid host, a port in 1–65535.
    """

    def bad(why: str) -> InvalidRequest:
        shown = url if len(url) <= 100 else url[:100] + "…"
        return InvalidRequest(f"The callback URL {shown!r} {why}.", param=CALLBACK_PARAM)

    if len(url) > MAX_CALLBACK_CHARS:
        raise bad(f"is longer than {MAX_CALLBACK_CHARS} characters")
    if not _URL_CHARACTERS.fullmatch(url):
        raise bad("has a character a URL may not carry (whitespace, a control character, a backslash, or "
                  "one that is not ASCII: percent-encode it)")  # fmt: skip
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        raise bad("must start with http:// or https://")
    authority = _AUTHORITY_END.split(rest, maxsplit=1)[0]
    if "@" in authority:
        raise bad("must not carry a user name or password")
    host = _host_of(authority, bad)
    # What the URL library sees must be what was checked: no parser disagreement to slip a host through.
    try:
        agreed = urlsplit(url).hostname == host
    except ValueError:
        agreed = False
    if not agreed:
        raise bad("is ambiguous")
    return host


def _host_of(authority: str, bad: Callable[[str], InvalidRequest]) -> str:
    """The lowercase host of a URL's authority (``host[:port]`` or ``[v6][:port]``); its port checked."""
    if authority.startswith("["):
        end = authority.find("]")
        host, after = authority[1:end], authority[end + 1 :]
        if end < 0 or (after and not after.startswith(":")):
            raise bad("has a malformed IPv6 address (it goes in [ ], then an optional :port)")
        if "%" in host or not _is_ipv6(host):
            raise bad(f"has {host!r} in [ ], which is not an IPv6 address (without a zone)")
        port: str | None = after[1:] if after else None
    else:
        host, colon, port_text = authority.partition(":")
        port = port_text if colon else None
        if not _HOST_NAME.fullmatch(host):
            raise bad("has no valid host name or address")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise bad(f"has port {port!r}; a port is a number from 1 to 65535")
    return host.lower()


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def payload(job: Job, result: JobResult) -> bytes:
    """What a callback POSTs: the job's id and its answer (status, path, content type and body)."""
    return orjson.dumps(
        {"id": job.id, "object": "async.job.result", "status_code": result.status, "path": result.path,
         "content_type": result.content_type, "body": _callback_body(result)}
    )  # fmt: skip


def _callback_body(result: JobResult) -> object:
    """The answer's body in a callback: its JSON, or — when the upstream said something else (an HTML
    error page) — its text, as ``content_type`` says."""
    if not result.body:
        return None
    try:
        return orjson.loads(result.body)
    except orjson.JSONDecodeError:
        return result.body.decode("utf-8", "replace")


class CallbackSender:
    """Calls a finished job's callback: allow-listed again, signed, POSTed through a ``Webhook``.

    It never raises for the receiver's sake (a refused connection, a timeout, an error status are logged):
    the answer is stored and billed already, and a callback's failure must not undo that.
    """

    def __init__(
        self, webhook: Webhook, settings: Callable[[], Callbacks], *, wall: Callable[[], float]
    ) -> None:
        self.webhook = webhook
        self.settings = settings  # read at each call: a reload may change the list, the secret, the timeout
        self.wall = wall

    async def send(self, job: Job, result: JobResult) -> None:
        """POST the answer to ``job.callback`` (nothing when the job has none)."""
        if not job.callback:
            return
        settings = self.settings()
        try:
            url = allowed_callback(job.callback, settings.allow_hosts)  # the list may have changed
        except InvalidRequest as exc:
            log.warning("dispatcher: job %s: callback not called: %s", job.id, exc.message)
            return
        body = payload(job, result)
        headers = {"Content-Type": "application/json"}
        if settings.secret is not None:
            headers[H_SIGNATURE] = sign(settings.secret.get_secret_value(), body, int(self.wall()))
        try:
            status = await self.webhook.post(url, body, headers, settings.timeout_s)
        except UpstreamTimeout:
            log.warning("dispatcher: job %s: callback not answered within %g s", job.id, settings.timeout_s)
            return
        except UpstreamError as exc:
            log.warning("dispatcher: job %s: callback failed: %s", job.id, exc.message)
            return
        if status >= 300:
            log.warning("dispatcher: job %s: callback answered %d", job.id, status)
