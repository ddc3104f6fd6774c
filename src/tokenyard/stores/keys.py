"""Every Redis key tokenyard writes, built (and parsed back) in this one place from a configurable prefix.

``{p}`` below is the prefix in braces: a Redis Cluster hash tag, so every key of a deployment (the meter's
and the queue's) hashes to one slot and a Lua script may touch any of them in one call.

The meter's keys (``MeterKeys``) percent-encode each dimension (``quote(safe="")``), so ':' never appears
inside one and names with ':', '%', spaces or any Unicode round-trip exactly. Minutes are unix seconds at the
start of the minute. TTLs: hashes retention + 60 s, watermarks max_gap_ms + a day, batch markers a day::

    {p}:usage:<minute>:<tenant>:<model>:<backend>:<kind>:<mode>:<key>:<team>
                                                               hash    AGG_FIELDS -> int
    {p}:usage:idx                                              zset    aggregate hash key -> its minute
    {p}:agg:<minute>:<tenant>:<model>:<backend>:<kind>:<mode>  hash    (before key and team: read, pruned,
    {p}:agg:idx                                                zset     never written; see below)
    {p}:gpu:<minute>:<backend>                                 hash    GPU_FIELDS -> int
    {p}:gpu:idx                                                zset    GPU hash key -> its minute
    {p}:gpu:wm:<backend>                                       string  GPU watermark, unix ms
    {p}:eng:<minute>:<backend>                                 hash    ENGINE_FIELDS -> int (an engine's
                                                                       own figures, merged per field)
    {p}:eng:idx                                                zset    engine hash key -> its minute
    {p}:records                                                zset    <seq, 16 digits><record JSON> -> ts,
                                                                       capped at records_max
    {p}:records:seq                                            string  the counter behind <seq>
    {p}:batch:<id>                                             string  "this batch was applied"
    {p}:lock:<name>                                            string  the holder of a lock (PX expiry)
    {p}:doc:<name>                                             string  a small document (latest advice)
    {p}:members                                                zset    live replicas -> until when (unix s)
    {p}:keys                                                   hash    virtual key id -> its record (JSON)
    {p}:keys:version                                           string  moves on with every key write
    {p}:budget:<id>                                            hash    bucket (unix s) -> nano-USD spent
    {p}:budget:<id>:held                                       zset    reservation -> until (unix s)
    {p}:budget:<id>:amounts                                    hash    reservation -> nano-USD held

Aggregates gained the key and team dimensions under a new name (``usage``) rather than by lengthening
``agg`` keys, so that replicas of both versions share one Redis during a rolling upgrade: an older replica
still writes and reads ``agg`` (missing the newer replicas' usage until it is upgraded, never failing on
keys it cannot parse); a newer one writes ``usage``, reads both (``agg`` buckets with no key or team) and
prunes both indexes. The ``agg`` buckets are gone once the retention has passed.

The record log is a sorted set scored by the record's own ``ts`` (not a stream): records arrive out of order
(replicas flush independently; a meter holds batches while the store is down), and a score gives exact
``since <= ts < until`` range reads, oldest first, and a cap that keeps the newest by ``ts``. The fixed-width
sequence number in front of the JSON makes every member unique and orders equal timestamps by arrival.

The job queue's keys (``QueueKeys``) live under ``{p}:q``. Their ids are tokenyard's own (job ids, provider
batch refs, object ids) and are written as they are, *not* encoded: that is how stored jobs were always
keyed, and encoding them now would orphan them. Kept ``retention_s`` unless said::

    {p}:q:job:<id>              string  the job (JSON)
    {p}:q:result:<id>           string  its result (JSON), written once (SET NX)
    {p}:q:stream                stream  one entry per claimable job: waiting, or claimed and not yet answered
    {p}:q:entry                 hash    job id -> its current stream entry id
    {p}:q:batch:<ref>           set     the jobs inside provider batch <ref>
    {p}:q:batches               set     the provider batches not released yet
    {p}:q:obj:<kind>:<id>       hash    a stored object: tenant, created_at, body
    {p}:q:objs:<kind>:<tenant>  zset    a tenant's objects of a kind: id -> created_at
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, unquote

# Width of the zero-padded sequence number that prefixes each record-log member (the write script formats
# it with the same width: "%016d").
RECORD_SEQ_DIGITS: Final = 16

_AGG_DIMS: Final = 7  # tenant, model, backend, kind, mode, key, team: an AggKey's fields but the minute
_LEGACY_AGG_DIMS: Final = 5  # an ``agg`` bucket's: no key, no team
_GLOB_SPECIAL: Final = "\\*?[]"

# What the builders take and the parsers return: the meter's AggKey and GpuKey are these tuples (named).
# minute, tenant, model, backend, kind, mode, key, team
AggParts = tuple[int, str, str, str, str, str, str, str]
GpuParts = tuple[int, str]  # minute, backend
EngineParts = tuple[int, str]  # minute, backend


def hash_tag(prefix: str) -> str:
    """``{prefix}``: the hash tag every key of a deployment starts with (``ValueError`` for a bad prefix)."""
    if not prefix or "{" in prefix or "}" in prefix:
        # A brace would end (or nest) the hash tag and scatter the keys over slots.
        raise ValueError(f"the Redis key prefix must be non-empty and without braces, not {prefix!r}")
    return "{" + prefix + "}"


def match_all(prefix: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of this prefix, the meter's and the queue's (tests,
    maintenance)."""
    escaped = "".join("\\" + char if char in _GLOB_SPECIAL else char for char in hash_tag(prefix))
    return escaped + "*"


def _dim(value: str) -> str:
    return quote(value, safe="")


class MeterKeys:
    """The meter's Redis key names for one prefix; parses index members back into bucket keys."""

    __slots__ = (
        "agg_index",
        "base",
        "engine_index",
        "gpu_index",
        "key_version",
        "keys",
        "legacy_agg_index",
        "members",
        "prefix",
        "record_seq",
        "records",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base = hash_tag(prefix)
        self.agg_index = f"{self.base}:usage:idx"
        self.legacy_agg_index = f"{self.base}:agg:idx"
        self.gpu_index = f"{self.base}:gpu:idx"
        self.engine_index = f"{self.base}:eng:idx"
        self.records = f"{self.base}:records"
        self.record_seq = f"{self.base}:records:seq"
        self.members = f"{self.base}:members"
        self.keys = f"{self.base}:keys"
        self.key_version = f"{self.base}:keys:version"

    def agg(self, key: AggParts) -> str:
        """The hash of one aggregate bucket."""
        dims = ":".join(_dim(dim) for dim in key[1:])
        return f"{self.base}:usage:{key[0]}:{dims}"

    def parse_agg(self, name: str) -> AggParts:
        """The bucket an aggregate hash key belongs to, a ``usage`` key or an older ``agg`` one (no key, no
        team); ``ValueError`` if it is neither."""
        legacy = name.startswith(f"{self.base}:agg:")
        parts = self._strip(name, "agg" if legacy else "usage").split(":")
        if len(parts) != 1 + (_LEGACY_AGG_DIMS if legacy else _AGG_DIMS):
            raise ValueError(f"{name!r} is not an aggregate key")
        dims = [unquote(part) for part in parts[1:]]
        if legacy:
            dims += ["", ""]
        tenant, model, backend, kind, mode, key_id, team = dims
        return int(parts[0]), tenant, model, backend, kind, mode, key_id, team

    def gpu(self, key: GpuParts) -> str:
        """The hash of one GPU accrual bucket."""
        return f"{self.base}:gpu:{key[0]}:{_dim(key[1])}"

    def parse_gpu(self, name: str) -> GpuParts:
        """The bucket a GPU hash key belongs to (``ValueError`` if it is not one)."""
        minute, sep, backend = self._strip(name, "gpu").partition(":")
        if not sep or ":" in backend:
            raise ValueError(f"{name!r} is not a 'gpu' key")
        return int(minute), unquote(backend)

    def engine(self, key: EngineParts) -> str:
        """The hash of one engine bucket (a minute and a backend, like a GPU bucket)."""
        return f"{self.base}:eng:{key[0]}:{_dim(key[1])}"

    def parse_engine(self, name: str) -> EngineParts:
        """The bucket an engine hash key belongs to (``ValueError`` if it is not one)."""
        minute, sep, backend = self._strip(name, "eng").partition(":")
        if not sep or ":" in backend:
            raise ValueError(f"{name!r} is not an 'eng' key")
        return int(minute), unquote(backend)

    def gpu_watermark(self, backend: str) -> str:
        """Up to when (unix ms) a backend's provisioned time has been accrued."""
        return f"{self.base}:gpu:wm:{_dim(backend)}"

    def batch(self, batch_id: str) -> str:
        """The marker that a flush batch was applied."""
        return f"{self.base}:batch:{_dim(batch_id)}"

    def lock(self, name: str) -> str:
        """A named lock for singleton work (value: its holder)."""
        return f"{self.base}:lock:{_dim(name)}"

    def document(self, name: str) -> str:
        """A small named document."""
        return f"{self.base}:doc:{_dim(name)}"

    def budget(self, budget_id: str) -> str:
        """A budget's spend per bucket."""
        return f"{self.base}:budget:{_dim(budget_id)}"

    def budget_held(self, budget_id: str) -> str:
        """A budget's reservations held by requests in flight."""
        return f"{self.base}:budget:{_dim(budget_id)}:held"

    def budget_amounts(self, budget_id: str) -> str:
        """What each of a budget's reservations holds."""
        return f"{self.base}:budget:{_dim(budget_id)}:amounts"

    def match_all(self) -> str:
        """A ``SCAN MATCH`` pattern for every key of this prefix (tests, maintenance)."""
        return match_all(self.prefix)

    def _strip(self, name: str, kind: str) -> str:
        """What follows ``{p}:<kind>:`` in ``name``."""
        head = f"{self.base}:{kind}:"
        if not name.startswith(head):
            raise ValueError(f"{name!r} is not a {kind!r} key of {self.base}")
        return name[len(head) :]


def record_json(member: str) -> str:
    """The record JSON inside a record-log member (see the module docstring)."""
    return member[RECORD_SEQ_DIGITS:]


class QueueKeys:
    """The job queue's Redis key names for one prefix (the meter's: jobs live in the meter's store)."""

    __slots__ = ("base", "batches", "entries", "stream")

    def __init__(self, prefix: str) -> None:
        self.base = hash_tag(prefix) + ":q"
        self.stream = f"{self.base}:stream"
        self.entries = f"{self.base}:entry"
        self.batches = f"{self.base}:batches"

    def job(self, job_id: str) -> str:
        """A job's JSON."""
        return f"{self.base}:job:{job_id}"

    def result(self, job_id: str) -> str:
        """A job's result JSON."""
        return f"{self.base}:result:{job_id}"

    def batch(self, ref: str) -> str:
        """The set of jobs inside one provider batch."""
        return f"{self.base}:batch:{ref}"

    def object(self, kind: str, obj_id: str) -> str:
        """One stored object's hash."""
        return f"{self.base}:obj:{kind}:{obj_id}"

    def objects_of(self, kind: str, tenant: str) -> str:
        """A tenant's objects of one kind, by creation time."""
        return f"{self.base}:objs:{kind}:{tenant}"
