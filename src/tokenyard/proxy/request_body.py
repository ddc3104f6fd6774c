"""The client's JSON body as bytes: refuse what upstreams would read differently, and change a few top-level
fields by splicing the client's bytes instead of re-serialising the whole body.

Everything here runs on bodies ``orjson`` has already accepted (valid UTF-8 JSON, at most 1,024 levels), so
backslashes occur only inside strings and every bracket outside a string is structural. Hot path: ordinary
bodies pass every check through C-level ``bytes.count``/``find``/``replace``/``translate`` calls; the few
Python-level steps only run where such a pre-check cannot rule a problem out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from tokenyard.errors import InvalidRequest

_ORJSON_MAX_DEPTH = 1024  # orjson reads at most this many levels (a test holds it to that)
MAX_DEPTH = 128
"""How deeply objects and arrays may nest in a request body (the top-level object is level 1).

Why 128: real requests nest far less (an image part of a chat message is 6 levels deep, a tool whose JSON
Schema nests ten objects about 25; OpenAI's structured outputs allow 10 levels of schema nesting). orjson
writes at most 254 levels (it reads 1,024) and a request is sometimes wrapped a level or two deeper (a
provider batch line puts it under ``"body"``): 128 is half that, so a body within it can always be written
again. And it is serde_json's default limit ("nesting of JSON maps and arrays more than 128 layers deep"),
which Rust upstreams parse with: a body tokenyard accepts is not one they refuse for its depth.
"""


# Fields tokenyard reads to authorise, route, classify or meter a request. A duplicate of one of them would
# let tokenyard act on one value (orjson keeps the last) and an upstream on another (many keep the first).
READ_FIELDS = (
    "model",
    "stream",
    "stream_options",
    "service_tier",
    "max_tokens",
    "max_completion_tokens",
    "user",
    "metadata",
    "messages",
    "prompt",
    "input",
)
# Per field read: its name quoted, then quoted and followed by what only follows a value.
_QUOTED = {
    name: (quoted, quoted + b",", quoted + b"}", quoted + b"]")
    for name, quoted in ((name, f'"{name}"'.encode()) for name in READ_FIELDS)
}

_STRUCTURE = b'"[]{}'
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(_STRUCTURE)))
_NOT_SKELETON = bytes(sorted(set(range(256)) - set(_STRUCTURE + b":")))
_ESCAPED_NAME_CHAR = re.compile(rb"\\u00[5-7][0-9a-fA-F]")
_INNERMOST = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")  # a container with none inside it
_WS = re.compile(rb"[ \t\n\r]*")
_WS_COLON = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(rb"-?[0-9][0-9.eE+-]*|true|false|null")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_LONG_NUMBER = re.compile(rb"\d{19,}")  # may exceed 64 bits


def loads(body: bytes) -> Any:
    """The parsed body; ``InvalidRequest`` when it is not JSON or nests more than ``MAX_DEPTH`` levels.

    Only a body with more brackets than that can nest too deep: it is parsed by ``_loads_within``, one
    C-level parse that refuses it exactly then (no second pass over the bytes)."""
    count = body.count
    wrapped = count(b"{") + count(b"[") > MAX_DEPTH
    try:
        return _loads_within(body, MAX_DEPTH) if wrapped else orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # strict: invalid UTF-8 and lone surrogates are refused too
        if wrapped and _parses(body):
            raise InvalidRequest(
                f"The request body nests objects and arrays more than {MAX_DEPTH} levels deep."
            ) from exc
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            "(HINT: check for trailing commas and quotes)."
        ) from exc


def _loads_within(body: bytes, limit: int) -> Any:
    """``body`` parsed; ``orjson.JSONDecodeError`` if it is not JSON or nests more than ``limit`` levels.

    orjson refuses to read past ``_ORJSON_MAX_DEPTH`` levels: wrapped in that many arrays less ``limit``, the
    body parses exactly when it nests ``limit`` levels or fewer. Every Python-level scan that knows where
    strings are costs several times a parse on an agent's body full of escaped code (46 kB: ~50 µs against
    ~190 µs, measured).
    """
    wrap = _ORJSON_MAX_DEPTH - limit
    value = orjson.loads(b"[" * wrap + body + b"]" * wrap)
    for _ in range(wrap):
        value = value[0]
    return value


def _parses(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def refuse_ambiguous(body: bytes, obj: dict[str, Any]) -> None:
    """Raise ``InvalidRequest`` for a body (parsed: ``obj``, by ``loads``) with a field tokenyard reads
    written more than once at its top level.

    Hot path, kept to a few C-level counts for ordinary bodies (inlined: a call costs as much as a count)."""
    count = body.count
    as_key: dict[str, int] = {}  # the read fields that may be a key more than once, and how often at most
    for key in obj:  # a key written twice is a key of ``obj``
        quoted = _QUOTED.get(key)
        if quoted is not None and (seen := count(quoted[0])) > 1:
            times = seen - count(quoted[1]) - count(quoted[2]) - count(quoted[3])
            if times > 1:
                as_key[key] = times
    maybe_twice = bool(as_key) and not _nested_keys_explain(obj, as_key)
    # A key spelled with escapes (``"mod\u0065l"``) is found by no count: names are [a-z_], 0x5f-0x7a.
    if not maybe_twice and (b"\\u00" not in body or _ESCAPED_NAME_CHAR.search(body) is None):
        return
    if top_level_keys(body) != len(obj):  # exact, and only now: some key may be there twice
        field = duplicated_field(body)
        if field is not None:
            # Refused, not resolved: an upstream may read the first value where tokenyard read the last.
            raise InvalidRequest(
                f"The request body has the key '{field}' more than once; send each field once.", param=field
            )


def too_deep(body: bytes, limit: int) -> bool:
    """Whether objects and arrays in ``body`` (a JSON value) nest more than ``limit`` levels."""
    try:
        _loads_within(body, limit)
    except orjson.JSONDecodeError:
        return True
    return False


def top_level_keys(body: bytes) -> int:
    """How many keys the top-level object of ``body`` is written with (a key written twice counts twice).

    One C-level ``translate`` reduces the body to quotes, brackets and colons, strings are cut out of that,
    and each pass of one regex removes the innermost containers until only the top level's colons are left:
    Python-level work is a pass a level, not a byte."""
    skeleton = _outside_strings(_unescaped(body).translate(None, _NOT_SKELETON))
    while skeleton.count(b"{") + skeleton.count(b"[") > 1:
        skeleton = _INNERMOST.sub(b"", skeleton)
    return skeleton.count(b":")


def duplicated_field(body: bytes) -> str | None:
    """The first of ``READ_FIELDS`` that is more than once among the top-level keys of ``body``, if any."""
    pairs: list[tuple[str, Any]] = json.loads(body, object_pairs_hook=list)
    counts = Counter(key for key, _ in pairs if key in _QUOTED)
    return next((key for key, n in counts.items() if n > 1), None)


def _nested_keys_explain(obj: dict[str, Any], as_key: dict[str, int]) -> bool:
    """Whether objects nested in ``obj`` hold each field of ``as_key`` often enough that it cannot be a
    top-level key twice (``as_key``: how often it may be a key at all; never a false True).

    Agents' bodies name ``model`` or ``input`` as properties of their tools' schemas: the parsed objects say
    where those keys are at a cost per container (an agent's 46 kB body: ~65 µs), where finding strings in
    the bytes costs per escape in them (~270 µs). ``type(...) is``: orjson makes plain dicts and lists, and
    the test is cheaper than ``isinstance``."""
    nested = dict.fromkeys(as_key, 0)
    stack: list[Any] = list(obj.values())
    pop, push = stack.pop, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            for field in as_key:
                if field in value:
                    nested[field] += 1
            push(value.values())
        elif kind is list:
            push(value)
    return all(times - nested[field] <= 1 for field, times in as_key.items())


def with_member(body: bytes, obj: dict[str, Any], key: str, value: Any) -> bytes:
    """``body`` (whose parse is ``obj``) with its top-level ``key`` set to ``value``: the client's bytes
    with only that member spliced in or replaced, so numbers, spacing and everything else stay exact."""
    encoded = orjson.dumps(value)
    if key not in obj:
        opening = body.index(b"{") + 1  # a JSON object's first byte that is not whitespace
        member = orjson.dumps(key) + b":" + encoded + (b"," if obj else b"")
        return body[:opening] + member + body[opening:]
    span = member_span(body, key)
    if span is None:
        return _reencoded(body, lambda parsed: parsed.__setitem__(key, value))
    _, value_start, value_end = span
    return body[:value_start] + encoded + body[value_end:]


def without_member(body: bytes, obj: dict[str, Any], key: str) -> bytes:
    """``body`` (whose parse is ``obj``) without its top-level ``key``: only that member cut out."""
    if key not in obj:
        return body
    span = member_span(body, key)
    if span is None:
        return _reencoded(body, lambda parsed: parsed.pop(key))
    start, _, end = span
    after = _WS.match(body, end).end()  # type: ignore[union-attr]  # [ \t\n\r]* always matches
    if body[after : after + 1] == b",":
        return body[:start] + body[after + 1 :]
    before = body[:start].rstrip(b" \t\n\r")
    if before.endswith(b","):  # it was the last member: take the comma before it
        return before[:-1] + body[end:]
    return body[:start] + body[end:]


def member_span(body: bytes, key: str) -> tuple[int, int, int] | None:
    """Where the top-level member ``key`` is in ``body``: (its key's first byte, its value's first byte, the
    byte after its value); None when no key is spelled literally so (an escaped spelling, or absent)."""
    quoted = orjson.dumps(key)
    at = body.find(quoted)
    while at != -1:
        colon = _WS_COLON.match(body, at + len(quoted))
        if colon is not None and _depth_at(body, at) == 1:
            value_start = colon.end()
            return at, value_start, _value_end(body, value_start)
        at = body.find(quoted, at + 1)
    return None


def _reencoded(body: bytes, edit: Callable[[dict[str, Any]], object]) -> bytes:
    """``body`` parsed, edited and serialised again (for a key spelled with escapes: no splice finds it)."""
    if not _LONG_NUMBER.search(body):
        obj = orjson.loads(body)
        edit(obj)
        return orjson.dumps(obj)
    # orjson reads integers past 64 bits as floats; only the json module reads and writes them exactly.
    exact = json.loads(body)
    edit(exact)
    return json.dumps(exact, ensure_ascii=False, separators=(",", ":")).encode()


def _unescaped(text: bytes) -> bytes:
    """``text`` without its escaped quotes and backslashes (and so without any quote inside a string)."""
    if b"\\" not in text:
        return text
    # Escapes pair from the left: drop escaped backslashes first, then what is left of ``\"``.
    return text.replace(b"\\\\", b"").replace(b'\\"', b"")


def _outside_strings(skeleton: bytes) -> bytes:
    """What of ``skeleton`` (text reduced to its unescaped quotes and a few other characters) is outside
    strings."""
    kept = skeleton.replace(b'""', b"")  # most strings hold none of those characters
    return b"".join(kept.split(b'"')[::2]) if b'"' in kept else kept


def _depth_at(body: bytes, at: int) -> int:
    """How many objects and arrays are open at ``body[at]`` (a quote); -1 when that quote is in a string."""
    prefix = body[:at]
    if b"\\" in prefix:
        prefix = prefix.replace(b"\\\\", b"")
        if prefix.endswith(b"\\"):
            return -1  # the quote at ``at`` is escaped
        prefix = prefix.replace(b'\\"', b"")
    kept = prefix.translate(None, _NOT_STRUCTURE)
    if kept.count(b'"') % 2:
        return -1  # an odd number of quotes before it: it closes a string
    brackets = _outside_strings(kept)
    return brackets.count(b"{") + brackets.count(b"[") - brackets.count(b"}") - brackets.count(b"]")


def _value_end(body: bytes, start: int) -> int:
    """The byte after the JSON value that starts at ``body[start]``."""
    first = body[start : start + 1]
    if first == b'"':
        return _STRING.match(body, start).end()  # type: ignore[union-attr]  # a valid string
    if first not in (b"{", b"["):
        return _SCALAR.match(body, start).end()  # type: ignore[union-attr]  # a valid scalar
    depth = 0
    for token in _TOKEN.finditer(body, start):
        opener = token[0][:1]
        if opener in (b"{", b"["):
            depth += 1
        elif opener in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return token.end()
    raise ValueError("unbalanced JSON value")  # unreachable for a body orjson accepted
