"""``tokenyard keys``: make, list, change, rotate and revoke virtual keys through a running proxy's admin API.

The commands are a thin client of ``/admin/keys`` (``keys_api.py``): they work against any replica, local or
not, and every rule (which models exist, what an update may change) stays the API's. They speak HTTP with
the standard library, since only adapters carry an HTTP client library and a command makes a few calls.

Where the proxy is and the admin key come from the options, then the environment, then the config file's
``server`` section. Only that section is read, so the shell running a command needs none of the upstream
secrets the rest of the file names.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import yaml
from pydantic import ValidationError

from tokenyard.config import ServerConfig, interpolate_env
from tokenyard.errors import ConfigError, TokenyardError
from tokenyard.terminal import format_table

DEFAULT_URL: Final = "http://127.0.0.1:8080"
TIMEOUT_S: Final = 30.0
_DURATION: Final = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ID_HELP: Final = "the key's id (key_..., as list shows it)"
_SET: Final = ("name", "tenant", "team", "models", "mode", "deadline_s")
# --clear-* flag → the field it clears and the value that clears it. A key's metadata is a mapping, never
# null: empty is none.
_CLEAR: Final[dict[str, tuple[str, Any]]] = {
    "clear_tenant": ("tenant", None),
    "clear_team": ("team", None),
    "clear_models": ("models", None),
    "clear_mode": ("mode", None),
    "clear_deadline": ("deadline_s", None),
    "clear_metadata": ("metadata", {}),
    "clear_expiry": ("expires_at", None),
}
_SHOWN: Final = (  # the fields of a key, in the order `get` shows them
    *("id", "name", "status", "source", "tenant", "team", "models", "mode", "deadline_s", "metadata"),
    *("prefix", "expires_at", "created_at", "updated_at", "rotated_at", "previous_expires_at", "revoked_at"),
)

Command = Callable[["AdminClient", argparse.Namespace], int]


class AdminCallFailed(TokenyardError):
    """A call to the admin API did not succeed; ``message`` says why, for the person at the terminal."""


@dataclass(frozen=True, slots=True)
class Target:
    """Which proxy to call, and with which admin key (kept out of ``repr``: it is never printed)."""

    url: str
    admin_key: str | None = field(default=None, repr=False)


def resolve_target(args: argparse.Namespace) -> Target:
    """``--url``/``--admin-key``, else ``$TOKENYARD_ADMIN_KEY``, else the config file's ``server`` section
    (``--config``, else ``$TOKENYARD_CONFIG``), else the default listener and no key."""
    url: str | None = args.url
    admin_key: str | None = args.admin_key or os.environ.get("TOKENYARD_ADMIN_KEY") or None
    path = args.config or os.environ.get("TOKENYARD_CONFIG") or None
    if path is not None and (url is None or admin_key is None):
        server = read_server_section(path)
        url = url or server_url(server.host, server.port)
        if admin_key is None and server.admin_key is not None:
            admin_key = server.admin_key.get_secret_value()
    return Target((url or DEFAULT_URL).rstrip("/"), admin_key)


def read_server_section(path: str) -> ServerConfig:
    """A config file's ``server`` section, validated, ``${VARS}`` filled in; ``ConfigError`` if it is not
    usable."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror}")], source=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not valid YAML: {exc}")], source=path) from exc
    section = (tree.get("server") or {}) if isinstance(tree, dict) else None
    if not isinstance(section, dict):
        raise ConfigError([("server", "must be a mapping")], source=path)
    section, problems = interpolate_env(section, os.environ, "server")
    if problems:
        raise ConfigError(problems, source=path)
    try:
        return ServerConfig.model_validate(section)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise ConfigError(
            [(".".join(["server", *map(str, error["loc"])]), error["msg"]) for error in errors], source=path
        ) from exc


def server_url(host: str, port: int) -> str:
    """The URL of a proxy listening on ``host``:``port``; one on every address is reached on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AdminClient:
    """Calls one proxy's admin API; a failure of any kind comes out as ``AdminCallFailed``."""

    __slots__ = ("target", "timeout_s")

    def __init__(self, target: Target, *, timeout_s: float = TIMEOUT_S) -> None:
        self.target = target
        self.timeout_s = timeout_s

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer to ``method path`` (``query`` in the URL, ``body`` as JSON)."""
        url = self.target.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "tokenyard-keys"}
        if self.target.admin_key:
            headers["Authorization"] = f"Bearer {self.target.admin_key}"
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        # Most specific first: an HTTPError is a URLError is an OSError.
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise AdminCallFailed(self._refusal(exc.code, exc.read())) from exc
        except urllib.error.URLError as exc:
            raise AdminCallFailed(self._unreachable(exc.reason)) from exc
        except (OSError, http.client.HTTPException) as exc:  # reset, timed out reading, not HTTP at all
            raise AdminCallFailed(self._unreachable(exc)) from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise AdminCallFailed(
                f"the server at {self.target.url} did not answer JSON: is it tokenyard?"
            ) from exc

    def _refusal(self, status: int, body: bytes) -> str:
        """What to say about an error answer: the API's own message when it sent an OpenAI-shaped one."""
        try:
            error = orjson.loads(body)["error"]
            message, param = str(error["message"]), error.get("param")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return f"the server at {self.target.url} answered HTTP {status}: is it tokenyard?"
        said = f"{message} (HTTP {status}" + (f", {param})" if param else ")")
        if status == 401 and not self.target.admin_key:
            said += (
                "\nGive the admin key: --admin-key, $TOKENYARD_ADMIN_KEY, or --config with server.admin_key."
            )
        return said

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused. Is `tokenyard serve` running there? (--url or --config say where)"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout_s:g} s"
        else:
            why = str(reason)
        return f"cannot reach the proxy at {self.target.url}: {why}"


# -- the commands ---------------------------------------------------------------------------------------


def _create(client: AdminClient, args: argparse.Namespace) -> int:
    key = client.call("POST", "/admin/keys", body=_key_fields(args))
    if args.json:
        return _print_json(key)
    print(f"Made key {key['id']} (name {key['name']}, tenant {key['tenant']}).")
    _print_secret(key["value"], key["prefix"])
    return 0


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    query = {"limit": str(args.page_size)}
    query.update({name: getattr(args, name) for name in ("tenant", "team") if getattr(args, name)})
    if args.all:
        query["include_revoked"] = "true"
    keys: list[dict[str, Any]] = []
    while True:
        page = client.call("GET", "/admin/keys", query=query)
        keys += page["data"]
        if not page["has_more"] or page["last_id"] is None:
            break
        query["after"] = page["last_id"]
    if args.json:  # every page's keys, in the API's list shape
        first_id, last_id = (keys[0]["id"], keys[-1]["id"]) if keys else (None, None)
        listed = {"object": "list", "data": keys, "first_id": first_id, "last_id": last_id, "has_more": False}
        return _print_json(listed)
    headers = ["id", "name", "tenant", "team", "status", "models", "mode", "prefix", "expires", "source"]
    columns = ("id", "name", "tenant", "team", "status", "models", "mode", "prefix", "expires_at", "source")
    rows = [[_shown(name, key.get(name), brief=True) for name in columns] for key in keys]
    print(format_table(headers, rows) if rows else "  (no keys)")
    hidden = "" if args.all else " (revoked ones not shown: --all)"
    print(f"\n{len(keys)} key{'' if len(keys) == 1 else 's'}{hidden}")
    return 0


def _get(client: AdminClient, args: argparse.Namespace) -> int:
    key = client.call("GET", _key_path(args.id))
    return _print_json(key) if args.json else _print_details(key)


def _update(client: AdminClient, args: argparse.Namespace) -> int:
    fields = _key_fields(args)
    if not fields:
        print("tokenyard: nothing to change (see tokenyard keys update --help)", file=sys.stderr)
        return 2
    key = client.call("PATCH", _key_path(args.id), body=fields)
    if args.json:
        return _print_json(key)
    print(f"Updated key {key['id']}.")
    return _print_details(key)


def _rotate(client: AdminClient, args: argparse.Namespace) -> int:
    body = {} if args.grace is None else {"grace_s": args.grace}
    key = client.call("POST", _key_path(args.id) + "/rotate", body=body)
    if args.json:
        return _print_json(key)
    print(f"Rotated key {key['id']}.")
    _print_secret(key["value"], key["prefix"])
    until = key.get("previous_expires_at")
    if until is None:
        print("The previous secret no longer works.")
    else:
        print(f"The previous secret works until {_when(until)}.")
    return 0


def _revoke(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.call("DELETE", _key_path(args.id))
    if args.json:
        return _print_json(answer)
    print(f"Revoked key {answer['id']}: its secret is refused from now on (its record and usage stay).")
    return 0


def _key_path(key_id: str) -> str:
    return "/admin/keys/" + urllib.parse.quote(key_id, safe="")


def _key_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON fields the options give: those set, and those cleared."""
    fields = {name: getattr(args, name) for name in _SET if getattr(args, name) is not None}
    if args.metadata is not None:
        fields["metadata"] = dict(args.metadata)
    if args.expires_at is not None:
        fields["expires_at"] = args.expires_at
    elif args.expires_in is not None:
        fields["expires_at"] = int(time.time()) + args.expires_in
    for flag, (name, value) in _CLEAR.items():
        if getattr(args, flag, False):  # create has no --clear-* options
            fields[name] = value
    return fields


# -- output ---------------------------------------------------------------------------------------------


def _print_json(answer: Any) -> int:
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def _print_secret(secret: str, prefix: str) -> None:
    print("Its secret is shown this once and will not be shown again; store it now:\n")
    print(f"    {secret}\n")
    print(f"Lists show it by its prefix, {prefix}.")


def _print_details(key: dict[str, Any]) -> int:
    # Fields a newer proxy added come after the known ones, so nothing it says is left out.
    names = [*_SHOWN, *(name for name in key if name not in _SHOWN and name not in ("object", "value"))]
    width = max(map(len, names))
    for name in names:
        print(f"  {name.ljust(width)}  {_shown(name, key.get(name))}")
    return 0


def _shown(name: str, value: Any, *, brief: bool = False) -> str:
    """A key's field as a person reads it."""
    if value is None:
        return {"models": "all", "expires_at": "never"}.get(name, "-")
    if name.endswith("_at"):
        return _when(value, brief=brief)
    if isinstance(value, list):
        shown = (item if isinstance(item, str) else orjson.dumps(item).decode() for item in value)
        return ",".join(shown) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _when(ts: int, *, brief: bool = False) -> str:
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    return shown if brief else f"{shown} ({ts})"


# -- the options ----------------------------------------------------------------------------------------


def add_keys_commands(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``tokenyard keys`` (alone, it prints its help), each with the options that say
    where the proxy is."""
    parser.set_defaults(run=lambda _args: _usage(parser))
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("the proxy")
    where.add_argument(
        "--url",
        type=_base_url,
        help=f"its address (default: the config's server.host/port, else {DEFAULT_URL})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        help="a config to read server.host/port/admin_key from (default: $TOKENYARD_CONFIG)",
    )
    where.add_argument(
        "--admin-key",
        metavar="KEY",
        help="its server.admin_key (default: $TOKENYARD_ADMIN_KEY, else the config's; prefer those, since "
        "a command line is visible to other users)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, run: Command, summary: str, description: str, *examples: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=_runner(run))
        return sub

    create = command(
        "create",
        _create,
        "make a key and print its secret, once",
        "Make a key. Its secret is printed this once: the proxy keeps only its hash.",
        "tokenyard keys create --name ci-bot --tenant acme --model llama --expires-in 30d",
        "tokenyard keys create --name batch-jobs --team search --mode async --deadline-s 3600 "
        "--metadata owner=ana",
        "tokenyard keys create --name ci-bot --json | jq -r .value",
    )
    _add_field_options(create, update=False)
    listed = command(
        "list",
        _list,
        "list the keys (the config file's too)",
        "List the keys: the config file's (source config), then those made through the admin API,\n"
        "oldest first.",
        "tokenyard keys list",
        "tokenyard keys list --tenant acme --all",
        "tokenyard keys list --json | jq -r '.data[].id'",
    )
    listed.add_argument("--tenant", help="only this tenant's keys")
    listed.add_argument("--team", help="only this team's keys")
    listed.add_argument("--all", action="store_true", help="revoked keys too")
    listed.add_argument(
        "--page-size", type=int, default=100, metavar="N", help="keys asked per call (1-1000)"
    )
    get = command("get", _get, "show one key", "Show one key.", "tokenyard keys get key_0123abcd")
    get.add_argument("id", metavar="ID", help=_ID_HELP)
    update = command(
        "update",
        _update,
        "change what a key says",
        "Change what a key says: the options given change, the rest stays.\n"
        "--metadata replaces the key's metadata as a whole. A key from the config file is changed there.",
        "tokenyard keys update key_0123abcd --team search --model llama --model mistral",
        "tokenyard keys update key_0123abcd --clear-models --clear-expiry",
        "tokenyard keys update key_0123abcd --expires-at 2027-01-01",
    )
    update.add_argument("id", metavar="ID", help=_ID_HELP)
    _add_field_options(update, update=True)
    rotate = command(
        "rotate",
        _rotate,
        "give a key a new secret, printed once",
        "Give a key a new secret, printed this once. The previous one keeps working for the grace\n"
        "period (default 1h), so running clients have time to pick up the new one.",
        "tokenyard keys rotate key_0123abcd",
        "tokenyard keys rotate key_0123abcd --grace 0    # the old secret stops at once",
    )
    rotate.add_argument("id", metavar="ID", help=_ID_HELP)
    rotate.add_argument(
        "--grace",
        type=_duration,
        metavar="DURATION",
        help="how long the old secret works: 1h, 30m, 0 (max 30d)",
    )
    revoke = command(
        "revoke",
        _revoke,
        "stop a key for good",
        "Revoke a key: its secret is refused from now on, on every replica. The record stays, and so\n"
        "does the usage attributed to it (list --all shows it).",
        "tokenyard keys revoke key_0123abcd",
    )
    revoke.add_argument("id", metavar="ID", help=_ID_HELP)


def _add_field_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """What a key says, to set (create, update) or clear (update's ``--clear-*``, each against its setter)."""
    fields = parser.add_argument_group("what the key says")

    def settable(flag: str, clear: str | None, clear_help: str, **options: Any) -> None:
        group = fields.add_mutually_exclusive_group() if update and clear else fields
        group.add_argument(flag, **options)
        if update and clear is not None:
            group.add_argument(clear, action="store_true", help=clear_help)

    settable("--name", None, "", required=not update, help="what the key is called")
    settable(
        "--tenant",
        "--clear-tenant",
        "clear it: the tenant is the key's name",
        help="who its spend is for (default: name)",
    )
    settable("--team", "--clear-team", "clear it: no team", help="a team, to group spend by")
    settable(
        "--model",
        "--clear-models",
        "clear it: every model",
        dest="models",
        action="append",
        metavar="MODEL",
        help="a model it may use (repeat for more; default: every model)",
    )
    settable(
        "--mode",
        "--clear-mode",
        "clear it: each request says",
        choices=["realtime", "async"],
        help="its requests' mode unless a request says otherwise",
    )
    settable(
        "--deadline-s",
        "--clear-deadline",
        "clear it: no deadline",
        type=float,
        metavar="S",
        help="its async jobs' deadline",
    )
    settable(
        "--metadata",
        "--clear-metadata",
        "clear it: no metadata",
        action="append",
        type=_pair,
        metavar="KEY=VALUE",
        help="a label (repeat for more)",
    )
    expiry = fields.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-at",
        type=_unix_time,
        metavar="WHEN",
        help="when it stops working: unix seconds or ISO 8601 (UTC without a zone)",
    )
    expiry.add_argument(
        "--expires-in",
        type=_duration,
        metavar="DURATION",
        help="when it stops working, from now: 30d, 12h, 90m",
    )
    if update:
        expiry.add_argument("--clear-expiry", action="store_true", help="clear it: it never expires")


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    """``command`` with its client made, and its failures printed on stderr (exit code 1)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(AdminClient(resolve_target(args)), args)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
        except AdminCallFailed as exc:
            print(f"tokenyard: {exc.message}", file=sys.stderr)
        return 1

    return run


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _base_url(text: str) -> str:
    if urllib.parse.urlsplit(text).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    # The admin API sits beside /v1, never under it: the OpenAI base URL a client is given works too.
    return text.rstrip("/").removesuffix("/v1")


def _duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (90s, 30m, 1h, 30d, or seconds)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _unix_time(text: str) -> int:
    if text.strip().isdecimal():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (unix seconds or ISO 8601)") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _pair(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return name, value
