"""Just enough ``multipart/form-data`` for file uploads: each field's name, filename and exact bytes.

Pure: a content type and a body in, fields out. Parts are delimited by ``CRLF--boundary`` (RFC 2046), so
file contents come back byte for byte, line endings and all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenyard.errors import InvalidRequest

# name=value or name="quoted \" value" parameters of a header, after its first ';'.
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass(frozen=True, slots=True)
class FormField:
    """One field of a form: a plain value (no filename) or an uploaded file."""

    name: str
    filename: str | None
    content: bytes


def header_params(value: str) -> dict[str, str]:
    """The ``;``-separated parameters of a header value, by lowercase name, unquoted."""
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    return params


def parse_form(content_type: str, body: bytes) -> dict[str, FormField]:
    """The fields of a ``multipart/form-data`` body by name (a repeated name: the last one counts)."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise InvalidRequest("The request must be sent as multipart/form-data.")
    boundary = header_params(content_type).get("boundary")
    if not boundary:
        raise InvalidRequest("The multipart/form-data content type has no boundary.")
    # Prefixing CRLF lets the first delimiter, which may open the body, split like the others.
    parts = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    fields: dict[str, FormField] = {}
    for part in parts[1:]:
        if part.startswith(b"--"):
            return fields  # the closing delimiter
        field = _parse_part(part)
        fields[field.name] = field
    raise InvalidRequest("The multipart/form-data body ends before its closing boundary.")


def _parse_part(part: bytes) -> FormField:
    _padding, _, rest = part.partition(b"\r\n")
    head, separator, content = rest.partition(b"\r\n\r\n")
    if not separator:
        raise InvalidRequest("A multipart/form-data part has no header block.")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            params = header_params(value.decode("utf-8", "replace"))
            if "name" in params:
                return FormField(params["name"], params.get("filename"), content)
    raise InvalidRequest("A multipart/form-data part has no Content-Disposition name.")
