"""The job store over Redis Streams: a consumer group hands jobs out, pending entries that idle are reclaimed.

Every key shares the meter's hash tag (its layout is in ``stores/keys.py``), so the small Lua scripts below
may touch them together on one server or one Cluster slot. An answered job (or one sent into a provider
batch) is acknowledged and deleted from the stream, so the stream's length is the number of jobs a
dispatcher may still need to run, and ``XPENDING`` those claimed. Reads that concern many jobs or objects
take one round trip for all of them (a pipeline or MGET), never one each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from redis import exceptions as rex

from tokenyard.queue.model import Job, JobResult, QueueStats, StoredObject
from tokenyard.stores.keys import QueueKeys
from tokenyard.stores.redis_client import RedisBacked, mapped_errors

_STORE: Final = "job queue"
GROUP: Final = "dispatchers"

_ENQUEUE: Final = """
-- Keep a job once per id and put it in the stream. Returns 1 if it was new.
-- KEYS[1] - the job; KEYS[2] - the stream; KEYS[3] - the entry hash (job id -> stream entry)
-- ARGV[1] - the job JSON; ARGV[2] - TTL, s; ARGV[3] - the job id
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[3], ARGV[3], redis.call('XADD', KEYS[2], '*', 'job', ARGV[3]))
return 1
"""

_DONE_WITH_ENTRY: Final = """
-- Acknowledge and delete a job's stream entry, if it has one.
local function done_with_entry(stream, entries, group, job_id)
  local entry = redis.call('HGET', entries, job_id)
  if entry then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', entries, job_id)
  end
end
"""

_COMPLETE: Final = (
    _DONE_WITH_ENTRY
    + """
-- Store a job's first result and take the job out of the stream. Returns 1 if this was its first result.
-- KEYS[1] - the result; KEYS[2] - the stream; KEYS[3] - the entry hash
-- ARGV[1] - the result JSON; ARGV[2] - TTL, s; ARGV[3] - the consumer group; ARGV[4] - the job id
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
done_with_entry(KEYS[2], KEYS[3], ARGV[3], ARGV[4])
return 1
"""
)

_HOLD: Final = (
    _DONE_WITH_ENTRY
    + """
-- Take jobs out of the stream into a provider batch.
-- KEYS[1] - the stream; KEYS[2] - the entry hash; KEYS[3] - the batch's job set; KEYS[4] - open batches
-- ARGV[1] - the consumer group; ARGV[2] - the batch ref; ARGV[3...] - the job ids
for i = 3, #ARGV do
  done_with_entry(KEYS[1], KEYS[2], ARGV[1], ARGV[i])
  redis.call('SADD', KEYS[3], ARGV[i])
end
redis.call('SADD', KEYS[4], ARGV[2])
return 1
"""
)

# Objects are written and forgotten by scripts, not MULTI: atomic on one server and on a Cluster slot alike
# (redis-py's Cluster client runs a MULTI on a thread's event loop of its own).
_PUT_OBJECT: Final = """
-- Keep an object and index it.
-- KEYS[1] - the object's hash; KEYS[2] - its kind's index for the tenant
-- ARGV[1] - tenant; ARGV[2] - created_at; ARGV[3] - body; ARGV[4] - retention, s; ARGV[5] - id
redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'created_at', ARGV[2], 'body', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[4])
"""

_DELETE_OBJECT: Final = """
-- Forget an object. KEYS[1] - the object's hash; KEYS[2] - its index; ARGV[1] - id
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
"""

_RELEASE: Final = """
-- Close a provider batch: its jobs without a result go back into the stream. Returns the jobs put back.
-- KEYS[1] - the stream; KEYS[2] - the entry hash; KEYS[3] - the batch's job set; KEYS[4] - open batches;
-- KEYS[5...] - each job's result key
-- ARGV[1] - the batch ref; ARGV[2...] - the job ids (in the order of their result keys)
local back = {}
for i = 2, #ARGV do
  if redis.call('EXISTS', KEYS[3 + i]) == 0 and redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], redis.call('XADD', KEYS[1], '*', 'job', ARGV[i]))
    back[#back + 1] = ARGV[i]
  end
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return back
"""


class RedisJobStore(RedisBacked):
    """``JobStore`` (the job queue and stored objects) on Redis Streams, shared by every proxy replica on the
    same Redis."""

    what = _STORE

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tokenyard",
        retention_s: int = 7 * 86400,
        socket_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = QueueKeys(prefix)
        self._retention_s = retention_s
        self._clock = clock
        super().__init__(url, socket_timeout_s=socket_timeout_s)
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._complete = self._redis.register_script(_COMPLETE)
        self._hold = self._redis.register_script(_HOLD)
        self._release = self._redis.register_script(_RELEASE)
        self._put_object = self._redis.register_script(_PUT_OBJECT)
        self._delete_object = self._redis.register_script(_DELETE_OBJECT)
        self._group_ready = False

    async def _ensure_group(self) -> None:
        """The consumer group (and its stream) exist; created once, by whoever comes first."""
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def enqueue(self, job: Job) -> bool:
        """Keep a job and make it claimable, once per id."""
        with mapped_errors(_STORE):
            await self._ensure_group()
            added = await self._enqueue(
                keys=[self.keys.job(job.id), self.keys.stream, self.keys.entries],
                args=[job.dumps(), self._retention_s, job.id],
            )
        return bool(added)

    async def claim(self, consumer: str, count: int, *, stale_after_s: float) -> list[Job]:
        """New jobs, and jobs whose claim went stale, for ``consumer``."""
        with mapped_errors(_STORE):
            await self._ensure_group()
            _, stale, _ = await self._redis.xautoclaim(
                self.keys.stream, GROUP, consumer, min_idle_time=int(stale_after_s * 1000), count=count
            )
            entries: list[tuple[str, dict[str, str]]] = list(stale)
            if len(entries) < count:
                fresh = cast(
                    "list[tuple[str, list[tuple[str, dict[str, str]]]]]",
                    await self._redis.xreadgroup(
                        GROUP, consumer, {self.keys.stream: ">"}, count=count - len(entries)
                    ),
                )
                for _, found in fresh or []:
                    entries += found
            return await self._jobs_of(entries)

    async def _jobs_of(self, entries: list[tuple[str, dict[str, str]]]) -> list[Job]:
        """The jobs behind claimed stream entries; entries of answered or expired jobs are cleaned up."""
        if not entries:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _, fields in entries:
            pipe.get(self.keys.job(fields["job"]))
            pipe.exists(self.keys.result(fields["job"]))
        found = await pipe.execute()
        jobs: list[Job] = []
        gone: list[str] = []
        for i, (entry, _) in enumerate(entries):
            body, answered = found[2 * i], found[2 * i + 1]
            if body is None or answered:  # a second delivery of an answered job, or one past retention
                gone.append(entry)
            else:
                jobs.append(Job.loads(body))
        if gone:  # one round trip for all of them
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(self.keys.stream, GROUP, *gone)
            pipe.xdel(self.keys.stream, *gone)
            await pipe.execute()
        return sorted(jobs, key=lambda j: j.created_at)

    async def hold_in_batch(self, batch_ref: str, job_ids: Sequence[str]) -> None:
        """The jobs are inside a provider batch: out of the stream, recorded under the batch."""
        if not job_ids:
            return
        with mapped_errors(_STORE):
            await self._ensure_group()
            await self._hold(
                keys=[self.keys.stream, self.keys.entries, self.keys.batch(batch_ref), self.keys.batches],
                args=[GROUP, batch_ref, *job_ids],
            )

    async def open_batches(self) -> dict[str, list[str]]:
        """Every provider batch not released yet, with its jobs."""
        with mapped_errors(_STORE):
            refs = sorted(cast("set[str]", await self._redis.smembers(self.keys.batches)))
            pipe = self._redis.pipeline(transaction=False)
            for ref in refs:
                pipe.smembers(self.keys.batch(ref))
            members: list[set[str]] = await pipe.execute()
        return {ref: sorted(ids) for ref, ids in zip(refs, members, strict=True)}

    async def release_batch(self, batch_ref: str) -> list[str]:
        """Close a provider batch; its unanswered jobs go back into the stream."""
        with mapped_errors(_STORE):
            ids = sorted(cast("set[str]", await self._redis.smembers(self.keys.batch(batch_ref))))
            back = await self._release(
                keys=[self.keys.stream, self.keys.entries, self.keys.batch(batch_ref), self.keys.batches]
                + [self.keys.result(i) for i in ids],
                args=[batch_ref, *ids],
            )
        return list(back)

    async def complete(self, result: JobResult) -> bool:
        """Store the first result of a job; later ones change nothing."""
        with mapped_errors(_STORE):
            await self._ensure_group()
            first = await self._complete(
                keys=[self.keys.result(result.job_id), self.keys.stream, self.keys.entries],
                args=[result.dumps(), self._retention_s, GROUP, result.job_id],
            )
        return bool(first)

    async def result(self, job_id: str) -> JobResult | None:
        """A job's result, or None."""
        with mapped_errors(_STORE):
            body = await self._redis.get(self.keys.result(job_id))
        return None if body is None else JobResult.loads(body)

    async def results_of(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        """The results of those jobs that have one (MGET in pages)."""
        out: dict[str, JobResult] = {}
        with mapped_errors(_STORE):
            for start in range(0, len(job_ids), 1000):
                chunk = list(job_ids[start : start + 1000])
                for job_id, body in zip(
                    chunk, await self._redis.mget([self.keys.result(i) for i in chunk]), strict=True
                ):
                    if body is not None:
                        out[job_id] = JobResult.loads(body)
        return out

    async def get(self, job_id: str) -> Job | None:
        """A job by id, or None."""
        with mapped_errors(_STORE):
            body = await self._redis.get(self.keys.job(job_id))
        return None if body is None else Job.loads(body)

    async def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The known jobs among ``job_ids``: one pipeline of GETs (a Cluster pipeline refuses MGET)."""
        if not job_ids:
            return {}
        with mapped_errors(_STORE):
            pipe = self._redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.get(self.keys.job(job_id))
            bodies: list[str | None] = await pipe.execute()
        return {i: Job.loads(body) for i, body in zip(job_ids, bodies, strict=True) if body is not None}

    async def put_object(self, obj: StoredObject) -> None:
        """Keep an object (a hash), indexed per kind and tenant by creation time; kept retention_s."""
        key, index = self.keys.object(obj.kind, obj.id), self.keys.objects_of(obj.kind, obj.tenant)
        with mapped_errors(_STORE):
            await self._put_object(
                keys=[key, index],
                args=[obj.tenant, repr(obj.created_at), obj.body, self._retention_s, obj.id],
            )

    async def get_object(self, kind: str, obj_id: str) -> StoredObject | None:
        """An object by kind and id, or None."""
        with mapped_errors(_STORE):
            fields = cast("dict[str, str]", await self._redis.hgetall(self.keys.object(kind, obj_id)))
        return _object(kind, obj_id, fields) if fields else None

    async def list_objects(
        self, kind: str, tenant: str, *, after: str | None = None, limit: int = 20
    ) -> list[StoredObject]:
        """A tenant's objects of a kind, newest first (ties: by id, descending), after the cursor object."""
        index = self.keys.objects_of(kind, tenant)
        with mapped_errors(_STORE):
            start = 0
            if after is not None:
                rank = await self._redis.zrevrank(index, after)
                if rank is None:
                    return []
                start = cast("int", rank) + 1
            ids = cast("list[str]", await self._redis.zrevrange(index, start, start + limit - 1))
            if not ids:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for obj_id in ids:
                pipe.hgetall(self.keys.object(kind, obj_id))
            found: list[dict[str, str]] = await pipe.execute()
        # An index member can outlive its object by a moment (the hash's TTL ran out first).
        return [_object(kind, obj_id, fields) for obj_id, fields in zip(ids, found, strict=True) if fields]

    async def delete_object(self, kind: str, obj_id: str) -> bool:
        """Forget an object; False if there was none."""
        obj = await self.get_object(kind, obj_id)
        if obj is None:
            return False
        with mapped_errors(_STORE):
            await self._delete_object(
                keys=[self.keys.object(kind, obj_id), self.keys.objects_of(kind, obj.tenant)], args=[obj_id]
            )
        return True

    async def stats(self) -> QueueStats:
        """Waiting, claimed and batched jobs, and the oldest one still in the stream (two round trips)."""
        with mapped_errors(_STORE):
            await self._ensure_group()
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(self.keys.stream)
            pipe.xpending(self.keys.stream, GROUP)
            pipe.xrange(self.keys.stream, count=1)
            pipe.smembers(self.keys.batches)
            length, pending, first, refs = await pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            for ref in refs:
                pipe.scard(self.keys.batch(ref))
            if first:
                pipe.get(self.keys.job(first[0][1]["job"]))
            found = await pipe.execute() if refs or first else []
        sizes, body = (found[:-1], found[-1]) if first else (found, None)
        claimed = int(cast("dict[str, Any]", pending)["pending"])
        oldest = Job.loads(body).created_at if body else None
        return QueueStats(int(length) - claimed, claimed, sum(sizes), oldest)


def _object(kind: str, obj_id: str, fields: dict[str, str]) -> StoredObject:
    """A stored object from its hash."""
    return StoredObject(kind, obj_id, fields["tenant"], float(fields["created_at"]), fields["body"].encode())
