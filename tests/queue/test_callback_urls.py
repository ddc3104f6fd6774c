"""``X-Tokenyard-Callback`` is checked up front: a URL that could not be called is a 400 naming the header,
never a 500 and never a job that fails only when its answer is delivered."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.async_track import HELLO, MODEL, sqlite_proxy
from tests.support.config import CLIENT_KEY

ALLOWED = {"allow_hosts": ["127.0.0.1", "hooks.example.com", "::1"]}

MALFORMED = [
    "http://[::1",  # an IPv6 literal never closed
    "http://[::1]]/x",
    "http://[127.0.0.1]/",  # an IPv4 address in brackets
    "http://[fe80::1%25eth0]/",  # a zone id
    "http://[not-an-address]/",
    "http://127.0.0.1:99999/",  # port out of range
    "http://127.0.0.1:65536/",
    "http://127.0.0.1:0/",
    "http://127.0.0.1:-1/",
    "http://127.0.0.1:+80/",
    "http://127.0.0.1:8o/",
    "http://127.0.0.1:80:80/",
    "127.0.0.1/hook",  # no scheme
    "//127.0.0.1/hook",
    "ftp://127.0.0.1/hook",  # a scheme that is not http(s)
    "file:///etc/passwd",
    "http:///hook",  # no host
    "http://:80/hook",
    "http:127.0.0.1/hook",
    "http://user:secret@127.0.0.1/hook",  # credentials in the URL
    "http://127.0.0.1@hooks.example.com/hook",
    "http://127.0.0.1\\@hooks.example.com/hook",
    "http://127.0.0.1/ho ok",  # whitespace
    "http://127.0.0.1/ho\tok",
    "http://hooks.éxample.com/hook",  # not ASCII
    "http://127.0.0.1/hoök",
    "http://hooks..example.com/hook",  # an empty label
    "http://-hooks.example.com/hook",
    "http://127.0.0.1/" + "a" * 3000,  # longer than any callback needs
]


async def test_malformed_callback_urls_are_400s_naming_the_header(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path, callbacks=ALLOWED) as proxy, httpx.AsyncClient(timeout=30) as http:
        answers = {}
        for url in MALFORMED:
            got = await http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": MODEL, "messages": HELLO},
                headers=[
                    (b"Authorization", f"Bearer {CLIENT_KEY}".encode()),
                    (b"Prefer", b"respond-async"),
                    (b"X-Tokenyard-Callback", url.encode()),  # UTF-8 on the wire, as a client would
                ],
            )
            is_json = got.headers.get("content-type") == "application/json"
            answers[url] = (
                got.status_code,
                got.json().get("error", {}).get("param") if is_json else got.text,
            )
        wrong = {url: answer for url, answer in answers.items() if answer != (400, "x-tokenyard-callback")}
        assert not wrong
        assert "Traceback" not in proxy.log()


async def test_well_formed_allow_listed_callback_urls_are_accepted(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path, callbacks=ALLOWED) as proxy, httpx.AsyncClient(timeout=30) as http:
        for url in (
            "http://127.0.0.1:8080/hook?job=1#frag",
            "https://HOOKS.example.com/hook",
            "http://[::1]:65535/hook",
            "http://127.0.0.1:1/hook",
            "http://127.0.0.1/%7Ehook",
        ):
            got = await http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": MODEL, "messages": HELLO},
                headers={
                    "Authorization": f"Bearer {CLIENT_KEY}",
                    "Prefer": "respond-async",
                    "X-Tokenyard-Callback": url,
                },
            )
            assert got.status_code == 202, (url, got.text)
        # A well-formed URL on a host not allow-listed is refused as before.
        refused = await http.post(
            f"{proxy.base_url}/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            headers={
                "Authorization": f"Bearer {CLIENT_KEY}",
                "Prefer": "respond-async",
                "X-Tokenyard-Callback": "http://169.254.169.254/latest/meta-data",
            },
        )
        assert refused.status_code == 400
        assert "not in async_track.callbacks.allow_hosts" in refused.json()["error"]["message"]
