"""Routes as data: a table of ``Route(path, methods, handler)`` and a pure ``match`` over it.

Matching decides, handling does the I/O (Starlette's cut). ``Router.match(method, path)`` returns a
``Match`` (the handler and the path's parameters) or a ``Miss`` (the 404 or 405 to answer, with the methods
the path allows); it reads nothing but its arguments and the table.

    router = Router([Route("/v1/models/{model:path}", ("GET",), retrieve)])
    router.match("GET", "/v1/models/gpt-4o")  # Match(retrieve, {"model": "gpt-4o"})

A path is literal text with ``{name}`` parameters (one segment, not empty) or ``{name:path}`` ones (the rest
of the path, slashes and all, possibly empty). Literal paths — the inference endpoints, the hot path — are
one dict lookup and their ``Match`` is built once, here, not per request. A literal path wins over a
pattern that would also match it.

A ``Group`` says how a part of the URL space refuses what no route of it takes: the message and error type
of its 404 and 405, and a check that must pass first (the Batch API authenticates before it says anything
about a path).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from tokenyard.errors import MethodNotAllowed, RouteNotFound, TokenyardError
from tokenyard.wire import asgi as wire

Handler = Callable[[wire.Scope, wire.Receive, wire.Send], Awaitable[None]]
Check = Callable[[wire.Scope], None]

_PARAM: Final = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?}")
_NO_PARAMS: Final[Mapping[str, str]] = {}


def _not_found(method: str, path: str) -> TokenyardError:
    return RouteNotFound(f"Unknown request URL: {method} {path}.")


def _not_allowed(method: str, path: str, allowed: tuple[str, ...]) -> TokenyardError:
    return MethodNotAllowed(f"{method} is not allowed on {path}; use {' or '.join(allowed)}.")


@dataclass(frozen=True, slots=True)
class Group:
    """How the paths under ``prefixes`` are refused when no route takes them."""

    prefixes: tuple[str, ...]  # a path belongs to the first group with a prefix it starts with
    not_found: Callable[[str, str], TokenyardError] = _not_found  # (method, path)
    not_allowed: Callable[[str, str, tuple[str, ...]], TokenyardError] = _not_allowed  # (…, allowed)
    check_first: Check | None = None  # runs before the refusal is answered (and may raise instead)
    trailing_slash: bool = False  # a path no route takes is tried again without its trailing slashes


API: Final = Group(prefixes=("",))  # everything no other group claims


@dataclass(frozen=True, slots=True)
class Route:
    """A path (with ``{name}`` / ``{name:path}`` parameters), the methods it takes and its handler."""

    path: str
    methods: tuple[str, ...]
    handler: Handler

    @property
    def is_literal(self) -> bool:
        """Whether the path has no parameters (matched by one dict lookup)."""
        return _PARAM.search(self.path) is None


@dataclass(frozen=True, slots=True)
class Match:
    """The route that takes the request: its handler and the path's parameters."""

    handler: Handler
    params: Mapping[str, str] = field(default_factory=lambda: _NO_PARAMS)


@dataclass(frozen=True, slots=True)
class Miss:
    """No route takes the request: answer ``error`` (after ``check_first``, if the group has one).

    ``allowed`` is empty for a 404, and the methods the path takes for a 405."""

    error: TokenyardError
    allowed: tuple[str, ...]
    check_first: Check | None = None


def _compile(path: str) -> re.Pattern[str]:
    pattern, end = "", 0
    for param in _PARAM.finditer(path):
        pattern += re.escape(path[end : param.start()])
        pattern += f"(?P<{param[1]}>.*)" if param[2] else f"(?P<{param[1]}>[^/]+)"
        end = param.end()
    return re.compile(pattern + re.escape(path[end:]))


class Router:
    """The route table, and the one decision made on it per request."""

    __slots__ = ("_groups", "_literal", "_patterns", "routes")

    def __init__(self, routes: Iterable[Route], groups: Iterable[Group] = ()) -> None:
        self.routes = tuple(routes)
        # Groups in the order given, API last: the first whose prefix a path starts with refuses it.
        self._groups = (*(g for g in groups if g is not API), API)
        self._literal: dict[str, dict[str, Match]] = {}
        self._patterns: list[tuple[re.Pattern[str], Route]] = []
        for route in self.routes:
            if route.is_literal:
                by_method = self._literal.setdefault(route.path, {})
                for method in route.methods:
                    if method in by_method:
                        raise ValueError(f"two routes for {method} {route.path}")
                    by_method[method] = Match(route.handler)
            else:
                self._patterns.append((_compile(route.path), route))

    def handlers(self) -> dict[str, dict[str, Handler]]:
        """The literal paths' handlers by path and method: for a caller that looks them up before ``match``
        (two dict lookups, no ``Match`` to unpack: the request path's routes are all literal)."""
        return {
            path: {method: found.handler for method, found in by_method.items()}
            for path, by_method in self._literal.items()
        }

    def match(self, method: str, path: str) -> Match | Miss:
        """The route taking ``method`` on ``path``, or the 404/405 to answer."""
        found = self._match(method, path)
        if isinstance(found, Miss) and found.allowed == () and path.endswith("/") and path.strip("/"):
            group = self._group(path)
            if group.trailing_slash:
                again = self._match(method, path.rstrip("/"))
                if isinstance(again, Match) or again.allowed:
                    return again if isinstance(again, Match) else self._refuse(method, path, again.allowed)
        return found

    def _match(self, method: str, path: str) -> Match | Miss:
        by_method = self._literal.get(path)
        if by_method is not None:
            found = by_method.get(method)
            if found is not None:
                return found
            return self._refuse(method, path, tuple(by_method))
        allowed: list[str] = []
        for pattern, route in self._patterns:
            matched = pattern.fullmatch(path)
            if matched is None:
                continue
            if method in route.methods:
                return Match(route.handler, matched.groupdict())
            allowed.extend(m for m in route.methods if m not in allowed)
        return self._refuse(method, path, tuple(allowed))

    def _group(self, path: str) -> Group:
        return next(g for g in self._groups if path.startswith(g.prefixes))

    def _refuse(self, method: str, path: str, allowed: tuple[str, ...]) -> Miss:
        group = self._group(path)
        if allowed:
            return Miss(group.not_allowed(method, path, allowed), allowed, group.check_first)
        return Miss(group.not_found(method, path), (), group.check_first)
