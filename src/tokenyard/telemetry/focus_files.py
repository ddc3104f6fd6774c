"""FOCUS rows as files: CSV (the standard library) or Parquet (pyarrow, the optional ``parquet`` extra).

CSV spells every value as FOCUS asks: decimals in plain notation (``0.00000015``, never ``1.5E-7``), times as
``2026-01-01T10:00:00Z``, a null as an empty field (FOCUS allows no empty strings, so nothing else is one).
Parquet keeps the types: decimals as ``decimal128(38, 12)`` (exact to a pico-USD), times as UTC timestamps,
Tags as its JSON text; the schema's metadata names the FOCUS version.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Literal

from tokenyard.errors import OptionalDependencyMissing
from tokenyard.telemetry.focus import COLUMNS, FOCUS_VERSION, FocusRow, FocusValue

FileFormat = Literal["csv", "parquet"]
CONTENT_TYPES: dict[FileFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
_NO_PYARROW = "Parquet needs pyarrow: pip install 'tokenyard[parquet]' (or ask for CSV)."


def format_named(name: str) -> FileFormat:
    """A file format by its name, ``csv`` or ``parquet``; ValueError for any other."""
    if name == "csv":
        return "csv"
    if name == "parquet":
        return "parquet"
    raise ValueError(f"format must be csv or parquet, not {name!r}")


def format_of(path: str) -> FileFormat:
    """The file format a path's suffix names (``.csv`` or ``.parquet``); ValueError for any other."""
    suffix = PurePath(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"cannot tell the format of {path!r}: name it .csv or .parquet")


def encode(rows: Sequence[FocusRow], file_format: FileFormat) -> bytes:
    """The rows as a whole file of ``file_format``."""
    return to_csv(rows).encode() if file_format == "csv" else to_parquet(rows)


def to_csv(rows: Sequence[FocusRow]) -> str:
    """The rows as CSV text with a header line (RFC 4180 line ends)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(column.name for column in COLUMNS)
    for row in rows:
        writer.writerow(_text(row[column.name]) for column in COLUMNS)
    return out.getvalue()


def _text(value: FocusValue) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def to_parquet(rows: Sequence[FocusRow]) -> bytes:
    """The rows as a Parquet file; OptionalDependencyMissing without pyarrow."""
    try:
        import pyarrow as pa  # optional, and heavy: imported only when Parquet is asked for
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise OptionalDependencyMissing(_NO_PYARROW) from exc
    types: dict[str, Any] = {
        "string": pa.string(),
        "json": pa.string(),
        "decimal": pa.decimal128(38, 12),
        "datetime": pa.timestamp("s", tz="UTC"),
    }
    schema = pa.schema(
        [pa.field(column.name, types[column.type]) for column in COLUMNS],
        metadata={"focus_version": FOCUS_VERSION, "data_generator": "tokenyard"},
    )
    table = pa.Table.from_pylist(list(rows), schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()
