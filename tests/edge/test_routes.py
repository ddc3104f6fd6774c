"""The route table as a specification: what matches, with which parameters, and the 404/405 verdicts.

Matching is a pure decision, so these tests call ``Router.match`` directly: no server, no I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokenyard.edge.routes import Group, Match, Miss, Route, Router
from tokenyard.errors import MethodNotAllowed, ObjectNotFound, RouteNotFound, TokenyardError
from tokenyard.wire import asgi as wire


async def chat(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in (never called: matching only decides)."""


async def models(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def model(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def replicas(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def files(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def upload(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def file(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def delete(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


async def content(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """A handler stand-in."""


def authenticate(scope: wire.Scope) -> None:
    """A check stand-in."""


def own_not_found(method: str, path: str) -> TokenyardError:
    return ObjectNotFound(f"Unknown request URL: {method} {path}.")


def own_not_allowed(method: str, path: str, allowed: tuple[str, ...]) -> TokenyardError:
    return MethodNotAllowed(f"{method} is not allowed on {path}.")


FILES = Group(("/v1/files",), own_not_found, own_not_allowed, check_first=authenticate, trailing_slash=True)
ROUTER = Router(
    [
        Route("/v1/chat/completions", ("POST",), chat),
        Route("/v1/models", ("GET",), models),
        Route("/v1/models/{model:path}", ("GET",), model),
        Route("/admin/backends/{name:path}/replicas", ("PUT",), replicas),
        Route("/v1/files", ("GET",), files),
        Route("/v1/files", ("POST",), upload),
        Route("/v1/files/{file_id}", ("GET",), file),
        Route("/v1/files/{file_id}", ("DELETE",), delete),
        Route("/v1/files/{file_id}/content", ("GET",), content),
    ],
    groups=[FILES],
)


def matched(method: str, path: str) -> Match:
    found = ROUTER.match(method, path)
    assert isinstance(found, Match), found
    return found


def missed(method: str, path: str) -> Miss:
    found = ROUTER.match(method, path)
    assert isinstance(found, Miss), found
    return found


def test_a_literal_path_matches_its_method_without_parameters() -> None:
    found = matched("POST", "/v1/chat/completions")
    assert found.handler is chat
    assert not found.params


def test_a_literal_match_is_built_once_not_per_request() -> None:
    assert matched("POST", "/v1/chat/completions") is matched("POST", "/v1/chat/completions")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/models/gpt-4o", "gpt-4o"),
        ("/v1/models/meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),  # names with slashes
        ("/v1/models/", ""),  # the handler says no such model, as before
    ],
)
def test_a_path_parameter_takes_the_rest_of_the_path(path: str, name: str) -> None:
    found = matched("GET", path)
    assert found.handler is model
    assert found.params == {"model": name}


def test_a_parameter_in_the_middle_of_a_path() -> None:
    found = matched("PUT", "/admin/backends/gpu-a/replicas")
    assert (found.handler, found.params) == (replicas, {"name": "gpu-a"})


def test_a_segment_parameter_takes_one_segment() -> None:
    assert matched("GET", "/v1/files/file-1").params == {"file_id": "file-1"}
    found = matched("GET", "/v1/files/file-1/content")
    assert (found.handler, found.params) == (content, {"file_id": "file-1"})
    assert missed("GET", "/v1/files/file-1/other").allowed == ()


def test_methods_of_one_path_go_to_their_own_handlers() -> None:
    assert matched("GET", "/v1/files").handler is files
    assert matched("POST", "/v1/files").handler is upload
    assert matched("DELETE", "/v1/files/f").handler is delete


def test_an_unknown_path_is_404_with_the_method_and_path() -> None:
    found = missed("POST", "/v1/nothing/here")
    assert isinstance(found.error, RouteNotFound)
    assert found.error.status_code == 404
    assert found.error.message == "Unknown request URL: POST /v1/nothing/here."
    assert found.allowed == ()
    assert found.check_first is None


def test_a_wrong_method_is_405_naming_the_methods_the_path_allows() -> None:
    found = missed("GET", "/v1/chat/completions")
    assert isinstance(found.error, MethodNotAllowed)
    assert found.error.status_code == 405
    assert found.error.message == "GET is not allowed on /v1/chat/completions; use POST."
    assert found.allowed == ("POST",)


def test_a_wrong_method_on_a_pattern_is_405_too() -> None:
    found = missed("DELETE", "/v1/models/gpt-4o")
    assert found.allowed == ("GET",)
    assert found.error.message == "DELETE is not allowed on /v1/models/gpt-4o; use GET."


def test_a_group_refuses_in_its_own_words_after_its_check() -> None:
    wrong = missed("PUT", "/v1/files")
    assert isinstance(wrong.error, MethodNotAllowed)
    assert wrong.error.message == "PUT is not allowed on /v1/files."
    assert set(wrong.allowed) == {"GET", "POST"}
    assert wrong.check_first is authenticate
    unknown = missed("GET", "/v1/filesystem")
    assert isinstance(unknown.error, ObjectNotFound)
    assert unknown.error.message == "Unknown request URL: GET /v1/filesystem."
    assert unknown.check_first is authenticate


@pytest.mark.parametrize(
    ("method", "path", "handler"),
    [("GET", "/v1/files/", files), ("POST", "/v1/files//", upload), ("GET", "/v1/files/f-1/", file)],
)
def test_a_group_may_take_a_path_with_a_trailing_slash_as_the_path_without(
    method: str, path: str, handler: object
) -> None:
    assert matched(method, path).handler is handler


def test_a_trailing_slash_keeps_the_path_as_sent_in_refusals_and_elsewhere_is_a_404() -> None:
    wrong = missed("PUT", "/v1/files/")
    assert wrong.error.message == "PUT is not allowed on /v1/files/."
    assert set(wrong.allowed) == {"GET", "POST"}
    assert (
        missed("GET", "/v1/files/f-1/other/").error.message
        == "Unknown request URL: GET /v1/files/f-1/other/."
    )
    assert missed("POST", "/v1/chat/completions/").allowed == ()  # the API's own paths take no slash


def test_the_literal_handlers_are_there_for_a_lookup_before_matching() -> None:
    handlers = ROUTER.handlers()
    assert handlers["/v1/chat/completions"] == {"POST": chat}
    assert handlers["/v1/files"] == {"GET": files, "POST": upload}
    assert "/v1/models/{model:path}" not in handlers


def test_two_routes_for_one_method_and_path_are_refused() -> None:
    with pytest.raises(ValueError, match="two routes for GET /v1/models"):
        Router([Route("/v1/models", ("GET",), models), Route("/v1/models", ("GET", "POST"), model)])


def test_matching_does_no_io() -> None:
    source = Path(__file__).parents[2] / "src" / "tokenyard" / "edge" / "routes.py"
    tree = ast.parse(source.read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    allowed = {
        "__future__",
        "re",
        "collections.abc",
        "dataclasses",
        "typing",
        "tokenyard.errors",
        "tokenyard.wire",
    }
    assert imported <= allowed
