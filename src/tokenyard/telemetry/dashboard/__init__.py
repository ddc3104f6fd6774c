"""The live cost dashboard: one page and its assets, all served by tokenyard (it works offline).

``GET /dashboard`` shows a sign-in form until the browser holds the session cookie that
``POST /dashboard/login`` sets for the admin key (HttpOnly, SameSite=Strict, Secure over TLS; it expires
after ``server.dashboard_session_ttl_s`` and with the admin key: see ``telemetry.sessions``); then the page,
which polls the admin JSON APIs every two seconds, and manages the virtual keys of ``/admin/keys``
(``keys.js``: a new secret is shown once and kept nowhere but in the page), and shows every budget's
spend against its limit (``budgets.js``, from ``/admin/budgets``). The page's assets and data need
the session too: nothing on it is reachable without the admin key. uPlot (MIT, ``uplot.LICENSE``) draws the
charts.
"""

from __future__ import annotations

from importlib import resources
from typing import Final
from urllib.parse import parse_qs

from tokenyard.errors import AuthenticationFailed, ObjectNotFound
from tokenyard.telemetry.admin import SESSION_COOKIE, AdminApi
from tokenyard.wire import asgi as wire

ASSETS: Final = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "keys.js": b"text/javascript; charset=utf-8",
    "budgets.js": b"text/javascript; charset=utf-8",
    "uplot.iife.min.js": b"text/javascript; charset=utf-8",
    "uplot.min.css": b"text/css; charset=utf-8",
}
STATIC: Final = "/dashboard/static/"
_HTML: Final = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]


def _read(name: str) -> bytes:
    return resources.files("tokenyard.telemetry.dashboard").joinpath(name).read_bytes()


class Dashboard:
    """``/dashboard``, ``/dashboard/login`` and ``/dashboard/static/*``."""

    def __init__(self, admin: AdminApi) -> None:
        self.admin = admin  # it holds the admin key, which a config reload may change

    async def page(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """The dashboard, or the sign-in form when the browser has no session."""
        if self.admin.signed_in(scope):
            await wire.send_bytes(send, 200, _read("dashboard.html"), _HTML)
        else:
            await wire.send_bytes(send, 200, _login(""), _HTML)

    async def login(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """Check the admin key from the form; set the session cookie and go to the dashboard."""
        body = await wire.read_body(scope, receive, 4096)
        key = parse_qs(body.decode("latin-1")).get("key", [""])[-1].encode("latin-1")
        if not self.admin.admin_key_set:
            await wire.send_bytes(
                send, 403, _login("The admin API is disabled: set server.admin_key."), _HTML
            )
            return
        if not self.admin.is_admin_key(key):
            await wire.send_bytes(send, 401, _login("That is not the admin key."), _HTML)
            return
        token = await self.admin.new_session()
        if token is None:  # the key was removed by a reload while this request waited
            await wire.send_bytes(
                send, 403, _login("The admin API is disabled: set server.admin_key."), _HTML
            )
            return
        # The browser forgets it when the server would refuse it; over TLS it is never sent in clear.
        # uvicorn sets the scheme from X-Forwarded-Proto only for proxies it trusts (forwarded_allow_ips).
        secure = b"; Secure" if scope.get("scheme") == "https" else b""
        cookie = b"%s=%s; Max-Age=%d; HttpOnly; SameSite=Strict; Path=/%s" % (
            SESSION_COOKIE,
            token,
            self.admin.session_ttl_s,
            secure,
        )
        await wire.send_bytes(send, 303, b"", [(b"location", b"/dashboard"), (b"set-cookie", cookie)])

    async def asset(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """One of the page's own scripts or styles (never anything else)."""
        if not self.admin.signed_in(scope):
            raise AuthenticationFailed("Sign in to the dashboard first.")
        name = scope["path_params"]["name"]
        content_type = ASSETS.get(name)
        if content_type is None:
            raise ObjectNotFound(f"No dashboard asset {name!r}.")
        await wire.send_bytes(send, 200, _read(name), [(b"content-type", content_type)])


def _login(message: str) -> bytes:
    """The sign-in form, with ``message`` (a fixed text of ours) above it."""
    note = f'<p class="error" role="alert">{message}</p>'.encode() if message else b""
    return _read("login.html").replace(b"<!--note-->", note)
