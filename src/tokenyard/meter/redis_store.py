"""The meter store over Redis: one atomic Lua script per flush batch, sorted-set indexes for range reads.

Any number of proxy replicas share one Redis (or one Redis Cluster slot: every key shares a hash tag, see
``keys.py``). A batch is applied by a single script, so it lands entirely or not at all as far as readers
and other replicas can tell, and its marker makes a retried batch a no-op. The client never retries on
its own: a failure surfaces at once as ``StoreUnavailable`` and the meter holds the batch and retries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, TypeVar, cast

import orjson

from tokenyard.errors import StoreError
from tokenyard.meter.model import (
    AGG_FIELDS,
    ENGINE_FIELDS,
    GPU_FIELDS,
    AggKey,
    EngineKey,
    FlushBatch,
    GpuAccrual,
    GpuKey,
    UsageRecord,
    engine_row,
)
from tokenyard.stores.keys import MeterKeys, record_json
from tokenyard.stores.protocols import BudgetHold, Reservation, Reserved, Settlement
from tokenyard.stores.redis_client import RedisBacked, mapped_errors

T = TypeVar("T")

_STORE: Final = "meter store"  # how errors name it
MINUTE_MS: Final = 60_000
MS_PER_HOUR: Final = 3_600_000
BATCH_MARKER_TTL_S: Final = 86_400
WATERMARK_SLACK_MS: Final = 86_400_000  # a watermark outlives max_gap_ms by this (clock skew between hosts)
PAGE: Final = 1000  # entries per round trip on reads
EXACT_LIMIT: Final = 2**53  # Lua numbers are doubles: integers are exact below this

_LOCK_SCRIPT: Final = """
-- Take or renew a lock. Returns 1 if ARGV[1] holds it now, 0 if someone else does.
-- KEYS[1] - the lock; ARGV[1] - owner; ARGV[2] - time to live, ms
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_UNLOCK_SCRIPT: Final = """
-- Release a lock only if its holder asks. KEYS[1] - the lock; ARGV[1] - owner
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_HEARTBEAT_SCRIPT: Final = """
-- Refresh a member of the live set and count the live. (A script, not MULTI: redis-py's Cluster client
-- runs a MULTI on a thread's event loop of its own.)
-- KEYS[1] - the live set, zset: member -> expiry; ARGV[1] - member; ARGV[2] - its expiry; ARGV[3] - now
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""

_PUT_KEY_SCRIPT: Final = """
-- Keep a virtual key's record if the stored one is still what the writer read, and move the version on.
-- KEYS[1] - the keys hash, id -> record; KEYS[2] - the version
-- ARGV[1] - id; ARGV[2] - the new record; ARGV[3] - '1' if a record is expected, '0' if none is;
-- ARGV[4] - the record expected. Returns 1 if written, 0 if another write came first.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  if current ~= ARGV[4] then return 0 end
elseif current ~= false then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""

_ALL_KEYS_SCRIPT: Final = """
-- The version and every virtual key's record, read together. KEYS[1] - the keys hash; KEYS[2] - the version
return {redis.call('GET', KEYS[2]) or '0', redis.call('HVALS', KEYS[1])}
"""

# Shared by the budget scripts: a budget's count. Buckets older than the window are dropped on the way.
_BUDGET_COUNT: Final = """
-- spend: hash bucket -> nano-USD; held: zset reservation -> until; amounts: hash reservation -> nano-USD
local function counted(spend, held, amounts, oldest, now)
  local sum = 0
  local buckets = redis.call('HGETALL', spend)
  for j = 1, #buckets, 2 do
    if tonumber(buckets[j]) < oldest then
      redis.call('HDEL', spend, buckets[j])
    else
      sum = sum + tonumber(buckets[j + 1])
    end
  end
  local lapsed = redis.call('ZRANGEBYSCORE', held, '-inf', '(' .. now)
  if #lapsed > 0 then
    redis.call('ZREM', held, unpack(lapsed))
    redis.call('HDEL', amounts, unpack(lapsed))
  end
  for _, amount in ipairs(redis.call('HVALS', amounts)) do sum = sum + tonumber(amount) end
  return sum
end
"""

_RESERVE_SCRIPT: Final = (
    _BUDGET_COUNT
    + """
-- Reservations, one after another: each on every budget it names, or on none if a hard one would pass
-- its limit. KEYS, per reservation and per budget of it: the budget's spend, reservations (until) and
-- their amounts.
-- ARGV[1] - now; then per reservation: the number of budgets n, the reservation, its amount, until; then
-- per budget: limit, the oldest bucket counted, hard (1/0).
-- Returns per reservation: taken (1/0), the refusing budget's index (1-based, 0: none), n counts.
local now = tonumber(ARGV[1])
local a, k, reply = 2, 1, {}
while a <= #ARGV do
  local n, id, amount, untl = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  a = a + 4
  local counts, refused = {}, 0
  for i = 1, n do
    local at = k + 3 * (i - 1)
    counts[i] = counted(KEYS[at], KEYS[at + 1], KEYS[at + 2], tonumber(ARGV[a + 3 * (i - 1) + 1]), now)
    if refused == 0 and ARGV[a + 3 * (i - 1) + 2] == '1'
        and counts[i] + amount > tonumber(ARGV[a + 3 * (i - 1)]) then
      refused = i
    end
  end
  if refused == 0 then
    local expiry = math.ceil(tonumber(untl)) + 60
    for i = 1, n do
      local at = k + 3 * (i - 1)
      redis.call('ZADD', KEYS[at + 1], untl, id)
      redis.call('HSET', KEYS[at + 2], id, amount)
      local ttl = redis.call('TTL', KEYS[at + 1])  -- (EXPIRETIME is Redis 7's: TTL works on 6 too)
      if ttl < 0 or now + ttl < expiry then
        redis.call('EXPIREAT', KEYS[at + 1], expiry)
        redis.call('EXPIREAT', KEYS[at + 2], expiry)
      end
      counts[i] = counts[i] + amount
    end
  end
  reply[#reply + 1] = refused == 0 and 1 or 0
  reply[#reply + 1] = refused
  for i = 1, n do reply[#reply + 1] = counts[i] end
  a, k = a + 3 * n, k + 3 * n
end
return reply
"""
)

_SETTLE_SCRIPT: Final = (
    _BUDGET_COUNT
    + """
-- Settlements, one after another: release the reservation (if still held), or draw it down (take what was
-- spent off its amount, never below 0; it stays held until its time), and add what the request spent.
-- KEYS as for reserving. ARGV[1] - now; then per settlement: the number of budgets n, the reservation,
-- nano-USD spent, draw down (1/0); then per budget: the oldest bucket counted, the bucket to add to, its
-- time to live (s).
-- Returns per settlement each budget's count after.
local now = tonumber(ARGV[1])
local a, k, reply = 2, 1, {}
while a <= #ARGV do
  local n, id, spent, draw = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  a = a + 4
  for i = 1, n do
    local at, arg = k + 3 * (i - 1), a + 3 * (i - 1)
    if not draw then
      redis.call('ZREM', KEYS[at + 1], id)
      redis.call('HDEL', KEYS[at + 2], id)
    else
      local held = redis.call('HGET', KEYS[at + 2], id)  -- none: released, or lapsed; nothing to draw
      if held then  -- '%d': a plain number would go as '%.14g', inexact past 14 digits
        redis.call('HSET', KEYS[at + 2], id, string.format('%d', math.max(0, tonumber(held) - spent)))
      end
    end
    if spent > 0 then
      redis.call('HINCRBY', KEYS[at], ARGV[arg + 1], spent)
      redis.call('EXPIRE', KEYS[at], ARGV[arg + 2])
    end
    reply[#reply + 1] = counted(KEYS[at], KEYS[at + 1], KEYS[at + 2], tonumber(ARGV[arg]), now)
  end
  a, k = a + 3 * n, k + 3 * n
end
return reply
"""
)

_COUNTED_SCRIPT: Final = (
    _BUDGET_COUNT
    + """
-- Each budget's count. KEYS as for reserving; ARGV[1] - now, ARGV[1+i] - budget i's oldest bucket counted.
local reply = {}
for i = 1, #KEYS / 3 do
  reply[i] = counted(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], tonumber(ARGV[1 + i]), tonumber(ARGV[1]))
end
return reply
"""
)

_WRITE_SCRIPT: Final = """
-- Apply one flush batch atomically and exactly once. Returns 1 if applied, 0 if it had been already.
-- One script (not several) because the batch marker, the watermarks and the sums must move together.
--
-- KEYS[1] - the batch marker, string (present: the batch was applied, do nothing)
-- KEYS[2] - the aggregate index, zset: hash key -> minute
-- KEYS[3] - the GPU index, zset: hash key -> minute
-- KEYS[4] - the record log, zset: <seq><json> -> ts
-- KEYS[5] - the record sequence counter, string
-- KEYS[6] - the engine index, zset: hash key -> minute
-- KEYS[7] - the aggregate index of the layout before key and team, zset (pruned only: see keys.py)
-- KEYS[8 .. 7+A] - the hash of each of the A aggregate buckets, in the order of their ARGV below
-- KEYS[8+A .. 7+A+E] - the hash of each of the E engine buckets, likewise
-- KEYS[8+A+E ..] - per GPU accrual, in the order of their ARGV: its watermark (string), then the hash of
--   every minute the accrual can reach, oldest first (n_keys of them; keys left untouched are harmless)
--
-- ARGV[1] - now, unix s; buckets with minute < now - retention are dropped and pruned from the indexes
-- ARGV[2] - retention, s
-- ARGV[3] - records_max, the record log's cap
-- ARGV[4] - batch marker TTL, s
-- ARGV[5] - how long a watermark outlives its max_gap_ms, ms (slack for clock skew between hosts)
-- ARGV[6] - the type each of KEYS must have if it exists, one letter per key: s(tring), h(ash), z(set)
-- ARGV[7] - A, how many aggregate buckets follow
-- ARGV[8] - E, how many engine buckets follow
-- ARGV[9] - G, how many GPU accruals follow
-- ARGV[10] - R, how many records follow
-- ARGV[11 ..] - per aggregate bucket, 2 + 2n arguments: minute, n, then n pairs (field, increment)
-- then per engine bucket, 2 + 3n arguments: minute, n, then n triples (field, rule, value); rule s adds
--   the value, x keeps the larger, n the smaller (model.ENGINE_FIELDS)
-- then per GPU accrual, 7 arguments: until_ms, max_gap_ms, gpus, price_q, price_r (the price per GPU-hour
--   in pico-USD is price_q * 3600000 + price_r), m0 - the minute index (ms // 60000) of its first hash
--   key, n_keys - how many hash keys follow its watermark
-- then, if R > 0, one argument: every record as orjson wrote the list, [{"ts":...,...},{"ts":...,...}]
--   (one orjson call for the whole list is the cheapest serialisation for the proxy). "ts" is each
--   record's first field, and a quote inside a string value is escaped, so the raw text },{"ts":
--   occurs exactly between two records.

-- Lua numbers are doubles and redis.call formats them with too few digits: pass integers as strings.
local function int(n) return string.format('%d', n) end
-- Floor division that stays exact while a and b * (a / b) are below 2^53.
local function floordiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- Redis does not roll back a script that fails halfway, so refuse foreign data before writing anything.
local types = {s = 'string', h = 'hash', z = 'zset'}
for i = 2, #KEYS do
  local found, wanted = redis.call('TYPE', KEYS[i]).ok, types[string.sub(ARGV[6], i, i)]
  if found ~= 'none' and found ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. found .. ', not a ' .. wanted)
  end
end
local now, retention, records_max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cutoff = now - retention
local ttl = int(retention + 60)
local wm_slack = tonumber(ARGV[5])
local n_agg, n_eng = tonumber(ARGV[7]), tonumber(ARGV[8])
local n_gpu, n_rec = tonumber(ARGV[9]), tonumber(ARGV[10])
local a, k = 11, 8  -- cursors into ARGV and KEYS

for _ = 1, n_agg do
  local n = tonumber(ARGV[a + 1])
  if tonumber(ARGV[a]) >= cutoff then  -- an older bucket would only be pruned again
    for f = a + 2, a + 2 * n, 2 do redis.call('HINCRBY', KEYS[k], ARGV[f], ARGV[f + 1]) end
    redis.call('EXPIRE', KEYS[k], ttl)
    redis.call('ZADD', KEYS[2], ARGV[a], KEYS[k])
  end
  a, k = a + 2 + 2 * n, k + 1
end

for _ = 1, n_eng do
  local n = tonumber(ARGV[a + 1])
  if tonumber(ARGV[a]) >= cutoff then
    for f = a + 2, a - 1 + 3 * n, 3 do
      local field, rule, value = ARGV[f], ARGV[f + 1], ARGV[f + 2]
      if rule == 's' then
        redis.call('HINCRBY', KEYS[k], field, value)
      else
        local held = tonumber(redis.call('HGET', KEYS[k], field))
        local v = tonumber(value)
        if held == nil or (rule == 'x' and v > held) or (rule == 'n' and v < held) then
          redis.call('HSET', KEYS[k], field, value)
        end
      end
    end
    redis.call('EXPIRE', KEYS[k], ttl)
    redis.call('ZADD', KEYS[6], ARGV[a], KEYS[k])
  end
  a, k = a + 2 + 3 * n, k + 1
end

for _ = 1, n_gpu do
  local until_ms, max_gap, gpus = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local price_q, price_r, m0 = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local n_keys = tonumber(ARGV[a + 6])
  local wm = tonumber(redis.call('GET', KEYS[k]))
  -- Accrue (wm, until_ms] unless another replica got there first or nobody metered for too long.
  if wm ~= nil and until_ms > wm and until_ms - wm <= max_gap then
    local from = wm
    while from < until_ms do
      local m = math.floor(from / 60000)
      local to = math.min(until_ms, (m + 1) * 60000)
      if m * 60 >= cutoff then
        local key = KEYS[k + 1 + m - m0]
        local gpu_ms = (to - from) * gpus
        redis.call('HINCRBY', key, 'wall_ms', int(to - from))
        redis.call('HINCRBY', key, 'gpu_ms', int(gpu_ms))
        -- floor(gpu_ms * price / 3600000), split so that no intermediate value reaches 2^53
        redis.call('HINCRBY', key, 'cost_pusd', int(gpu_ms * price_q + floordiv(gpu_ms * price_r, 3600000)))
        redis.call('EXPIRE', key, ttl)
        redis.call('ZADD', KEYS[3], int(m * 60), key)
      end
      from = to
    end
  end
  if wm == nil or until_ms > wm then
    redis.call('SET', KEYS[k], int(until_ms), 'PX', int(max_gap + wm_slack))
  end
  a, k = a + 7, k + 1 + n_keys
end

if n_rec > 0 then
  local seq = redis.call('INCRBY', KEYS[5], n_rec) - n_rec
  local blob, at = ARGV[a], 2  -- past the '['
  for _ = 1, n_rec do
    local stop = string.find(blob, '},{"ts":', at, true)
    local record = string.sub(blob, at, stop or (#blob - 1))  -- the last one ends before the ']'
    local ts = string.sub(record, 7, string.find(record, ',', 7, true) - 1)  -- after '{"ts":'
    seq = seq + 1
    -- keys.RECORD_SEQ_DIGITS wide, so members sort by arrival among equal timestamps
    redis.call('ZADD', KEYS[4], ts, string.format('%016d', seq) .. record)
    if stop then at = stop + 2 end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, int(-records_max - 1))  -- keep the newest records_max
end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. int(cutoff))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. int(cutoff))
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. int(cutoff))
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. int(cutoff))
redis.call('SET', KEYS[1], '1', 'EX', ARGV[4])
return 1
"""


def _increments(fields: dict[str, int]) -> list[tuple[str, int]]:
    """The non-zero increments of known aggregate fields."""
    return [(name, value) for name, value in fields.items() if value and name in AGG_FIELDS]


_RULE_LETTER: Final = {"sum": "s", "max": "x", "min": "n"}


def _engine_args(fields: dict[str, int]) -> list[str | int]:
    """An engine bucket's (field, rule, value) triples, known fields only, sums only when non-zero."""
    args: list[str | int] = []
    for name, value in fields.items():
        rule = ENGINE_FIELDS.get(name)
        if rule is not None and (value or rule != "sum"):
            args += [name, _RULE_LETTER[rule], value]
    return args


def _as_bytes(value: str | bytes) -> bytes:
    """A value as read (the client decodes replies to str) back to the bytes that were written."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _check_exact(accrual: GpuAccrual) -> None:
    """Refuse accruals whose cost arithmetic would not stay exact in the script's doubles."""
    biggest_segment_gpu_ms = MINUTE_MS * accrual.gpus
    if (
        accrual.gpus < 0
        or accrual.pusd_per_gpu_hour < 0
        or biggest_segment_gpu_ms * MS_PER_HOUR >= EXACT_LIMIT
        or biggest_segment_gpu_ms * accrual.pusd_per_gpu_hour // MS_PER_HOUR >= EXACT_LIMIT
    ):
        raise ValueError(f"GPU accrual out of range for exact arithmetic: {accrual}")


class RedisMeterStore(RedisBacked):
    """``MeterStore`` over ``redis.asyncio`` (usage, coordination, documents), shared by every proxy replica
    pointed at the same Redis."""

    what = _STORE

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tokenyard",
        retention_s: int,
        records_max: int,
        socket_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = MeterKeys(prefix)
        self._retention_s = retention_s
        self._records_max = records_max
        self._clock = clock  # unix seconds; decides what is older than the retention
        # Fails fast, never resends on its own: the meter holds the batch and retries it later.
        super().__init__(url, socket_timeout_s=socket_timeout_s)
        self._write_script = self._redis.register_script(_WRITE_SCRIPT)
        self._heartbeat_script = self._redis.register_script(_HEARTBEAT_SCRIPT)
        self._put_key_script = self._redis.register_script(_PUT_KEY_SCRIPT)
        self._all_keys_script = self._redis.register_script(_ALL_KEYS_SCRIPT)
        self._reserve_script = self._redis.register_script(_RESERVE_SCRIPT)
        self._settle_script = self._redis.register_script(_SETTLE_SCRIPT)
        self._counted_script = self._redis.register_script(_COUNTED_SCRIPT)

    async def write(self, batch: FlushBatch) -> None:
        """Apply a batch atomically and exactly once (see ``UsageStore.write``)."""
        if batch.is_empty():
            return
        keys, args = self._script_call(batch)
        with mapped_errors(_STORE):
            await self._write_script(keys=keys, args=args)

    async def aggregates(self, start_minute: int, end_minute: int) -> list[tuple[AggKey, dict[str, int]]]:
        """Every aggregate bucket with ``start_minute <= minute < end_minute``, those written before the key
        and team dimensions included (with neither)."""

        def parse(name: str, fields: dict[str, str]) -> tuple[AggKey, dict[str, int]]:
            return AggKey(*self.keys.parse_agg(name)), {f: int(fields.get(f, 0)) for f in AGG_FIELDS}

        found = await self._buckets(self.keys.agg_index, start_minute, end_minute, parse)
        legacy = await self._buckets(self.keys.legacy_agg_index, start_minute, end_minute, parse)
        if not legacy:
            return found
        merged = dict(found)  # one bucket per key, as readers expect: a minute in both layouts adds up
        for key, fields in legacy:
            held = merged.setdefault(key, dict.fromkeys(AGG_FIELDS, 0))
            for name, value in fields.items():
                held[name] += value
        return list(merged.items())

    async def gpu(self, start_minute: int, end_minute: int) -> list[tuple[GpuKey, dict[str, int]]]:
        """Every GPU accrual bucket with ``start_minute <= minute < end_minute``."""

        def parse(name: str, fields: dict[str, str]) -> tuple[GpuKey, dict[str, int]]:
            return GpuKey(*self.keys.parse_gpu(name)), {f: int(fields.get(f, 0)) for f in GPU_FIELDS}

        return await self._buckets(self.keys.gpu_index, start_minute, end_minute, parse)

    async def engine(self, start_minute: int, end_minute: int) -> list[tuple[EngineKey, dict[str, int]]]:
        """Every engine bucket with ``start_minute <= minute < end_minute`` (see ``UsageStore.engine``)."""

        def parse(name: str, fields: dict[str, str]) -> tuple[EngineKey, dict[str, int]]:
            return EngineKey(*self.keys.parse_engine(name)), engine_row(
                {f: int(v) for f, v in fields.items()}
            )

        return await self._buckets(self.keys.engine_index, start_minute, end_minute, parse)

    async def records(self, since: float, until: float, limit: int | None = None) -> Sequence[UsageRecord]:
        """Request records with ``since <= ts < until``, oldest first, at most ``limit``."""
        out: list[UsageRecord] = []
        # Page by score rather than by a growing offset (which Redis walks on every call): resume at the
        # last score seen, skipping the members with that score already read.
        low, skip = float(since), 0
        while limit is None or len(out) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(out))
            page = await self._record_page(low, float(until), skip, want)
            out.extend(UsageRecord.from_json(orjson.loads(record_json(member))) for member, _ in page)
            if len(page) < want:
                break
            last = page[-1][1]
            if last == low:
                skip += len(page)
            else:
                low, skip = last, sum(1 for _, score in page if score == last)
        return out

    async def _record_page(self, low: float, until: float, skip: int, count: int) -> list[tuple[str, float]]:
        """Up to ``count`` (member, ts) of the record log with ``low <= ts < until``, after ``skip``."""
        with mapped_errors(_STORE):
            page = await self._redis.zrangebyscore(
                self.keys.records, repr(low), f"({until!r}", start=skip, num=count, withscores=True
            )
        # repr() of a float is exact and so is Redis's reply, so scores compare exactly with ts.
        return cast("list[tuple[str, float]]", page)  # decode_responses=True, withscores=True

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lock ``name`` for ``owner`` (see ``Coordination.try_lock``)."""
        with mapped_errors(_STORE):
            taken = await self._redis.eval(
                _LOCK_SCRIPT, 1, self.keys.lock(name), owner, max(1, int(ttl_s * 1000))
            )
        return bool(taken)

    async def release_lock(self, name: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it."""
        with mapped_errors(_STORE):
            await self._redis.eval(_UNLOCK_SCRIPT, 1, self.keys.lock(name), owner)

    async def heartbeat(self, member: str, ttl_s: float) -> int:
        """Refresh ``member`` in the live set (scored by expiry, on this replica's clock); count the live."""
        now = self._clock()
        with mapped_errors(_STORE):
            count = await self._heartbeat_script(
                keys=[self.keys.members], args=[member, repr(now + ttl_s), repr(now)]
            )
        return int(count)

    async def put_document(self, name: str, body: bytes) -> None:
        """Keep a small named document (no expiry: the latest advice outlives restarts)."""
        with mapped_errors(_STORE):
            await self._redis.set(self.keys.document(name), body)

    async def get_document(self, name: str) -> bytes | None:
        """A document kept by ``put_document``, or None."""
        with mapped_errors(_STORE):
            value = await self._redis.get(self.keys.document(name))
        return None if value is None else _as_bytes(value)

    async def put_key(self, key_id: str, body: bytes, *, expected: bytes | None) -> bool:
        """Keep a key's record if the stored one is ``expected`` (see ``KeyStore.put_key``)."""
        args: list[str | bytes] = [key_id, body, "0" if expected is None else "1", expected or b""]
        with mapped_errors(_STORE):
            written = await self._put_key_script(keys=[self.keys.keys, self.keys.key_version], args=args)
        return bool(written)

    async def get_key(self, key_id: str) -> bytes | None:
        """The record of ``key_id``, or None."""
        with mapped_errors(_STORE):
            value = await self._redis.hget(self.keys.keys, key_id)
        return None if value is None else _as_bytes(value)

    async def all_keys(self) -> tuple[int, list[bytes]]:
        """The version and every record, read together."""
        with mapped_errors(_STORE):
            version, records = await self._all_keys_script(keys=[self.keys.keys, self.keys.key_version])
        return int(version), [_as_bytes(record) for record in records]

    async def keys_version(self) -> int:
        """The version of the keys: one more with every write."""
        with mapped_errors(_STORE):
            version = await self._redis.get(self.keys.key_version)
        return int(version or 0)

    async def reserve_many(self, asks: Sequence[Reservation], now: float) -> list[Reserved]:
        """Several reservations in one round trip, each all or none (see ``BudgetStore.reserve_many``)."""
        keys: list[str] = []
        args: list[str | int] = [repr(now)]
        for holds, reservation, amount_nusd, until in asks:
            keys += self._budget_keys(holds)
            args += [len(holds), reservation, amount_nusd, repr(until)]
            for hold in holds:
                args += [hold.limit_nusd, hold.oldest, 1 if hold.hard else 0]
        with mapped_errors(_STORE):
            reply = [int(value) for value in await self._reserve_script(keys=keys, args=args)]
        answers, at = [], 0
        for holds, *_ in asks:
            taken, refused, counts = reply[at], reply[at + 1], reply[at + 2 : at + 2 + len(holds)]
            answers.append(Reserved(bool(taken), refused - 1 if refused else None, counts))
            at += 2 + len(holds)
        return answers

    async def settle_many(self, settlements: Sequence[Settlement], now: float) -> list[int]:
        """Several settlements in one round trip (see ``BudgetStore.settle_many``)."""
        keys: list[str] = []
        args: list[str | int] = [repr(now)]
        for holds, reservation, spent_nusd, draw_down in settlements:
            keys += self._budget_keys(holds)
            args += [len(holds), reservation, spent_nusd, 1 if draw_down else 0]
            for hold in holds:
                args += [hold.oldest, hold.bucket, hold.ttl_s]
        with mapped_errors(_STORE):
            reply = await self._settle_script(keys=keys, args=args)
        return [int(value) for value in reply]

    async def counted(self, holds: Sequence[BudgetHold], now: float) -> list[int]:
        """Each budget's count now."""
        args: list[str | int] = [repr(now), *(hold.oldest for hold in holds)]
        with mapped_errors(_STORE):
            reply = await self._counted_script(keys=self._budget_keys(holds), args=args)
        return [int(value) for value in reply]

    def _budget_keys(self, holds: Sequence[BudgetHold]) -> list[str]:
        keys = self.keys
        return [
            name
            for hold in holds
            for name in (
                keys.budget(hold.budget_id),
                keys.budget_held(hold.budget_id),
                keys.budget_amounts(hold.budget_id),
            )
        ]

    def _script_call(self, batch: FlushBatch) -> tuple[list[str], list[str | int | bytes]]:
        """The write script's KEYS and ARGV for a batch (layout documented in the script)."""
        keys = [self.keys.batch(batch.id), self.keys.agg_index, self.keys.gpu_index, self.keys.records]
        keys += [self.keys.record_seq, self.keys.engine_index, self.keys.legacy_agg_index]
        types = "szzzszz"  # each key's Redis type, so the script can refuse foreign data up front
        # Only known, non-zero fields travel (reads fill in the zeros), and only buckets that have some.
        buckets = [(agg_key, _increments(fields)) for agg_key, fields in batch.aggregates.items()]
        buckets = [(agg_key, present) for agg_key, present in buckets if present]
        body: list[str | int | bytes] = []
        for agg_key, present in buckets:
            keys.append(self.keys.agg(agg_key))
            types += "h"
            body += [agg_key.minute, len(present)]
            for name, value in present:
                body += [name, value]
        engine = [(engine_key, _engine_args(fields)) for engine_key, fields in batch.engine.items()]
        engine = [(engine_key, args) for engine_key, args in engine if args]
        for engine_key, args in engine:
            keys.append(self.keys.engine(engine_key))
            types += "h"
            body += [engine_key.minute, len(args) // 3, *args]
        for accrual in batch.gpu:
            _check_exact(accrual)
            # The watermark is unknown until the script runs, so name every minute it may reach.
            first = (accrual.until_ms - accrual.max_gap_ms) // MINUTE_MS
            count = max(0, (accrual.until_ms - 1) // MINUTE_MS - first + 1)
            keys.append(self.keys.gpu_watermark(accrual.backend))
            keys += [self.keys.gpu(GpuKey(m * 60, accrual.backend)) for m in range(first, first + count)]
            types += "s" + "h" * count
            price_q, price_r = divmod(accrual.pusd_per_gpu_hour, MS_PER_HOUR)
            body += [accrual.until_ms, accrual.max_gap_ms, accrual.gpus, price_q, price_r, first, count]
        if batch.records:
            body.append(orjson.dumps(batch.records))
        head: list[str | int | bytes] = [
            int(self._clock()),
            self._retention_s,
            self._records_max,
            BATCH_MARKER_TTL_S,
        ]
        head += [WATERMARK_SLACK_MS, types, len(buckets), len(engine), len(batch.gpu), len(batch.records)]
        return keys, head + body

    async def _buckets(
        self, index: str, start_minute: int, end_minute: int, parse: Callable[[str, dict[str, str]], T]
    ) -> list[T]:
        """``parse(key, hash)`` of every live bucket in an index with ``start_minute <= minute < end_minute``.

        Each page is parsed as it arrives, between round trips: weeks of buckets parsed in one go would
        hold the event loop (and the proxy's requests) for a second.
        """
        out: list[T] = []
        with mapped_errors(_STORE), _parse_errors():
            found = await self._redis.zrangebyscore(index, start_minute, f"({end_minute}")
            names = cast("list[str]", found)  # decode_responses=True
            for offset in range(0, len(names), PAGE):
                chunk = names[offset : offset + PAGE]
                pipe = self._redis.pipeline(transaction=False)
                for name in chunk:
                    pipe.hgetall(name)
                hashes: list[dict[str, str]] = await pipe.execute()
                # An index member can outlive its hash by a moment (the hash's TTL ran out first).
                out += [parse(name, fields) for name, fields in zip(chunk, hashes, strict=True) if fields]
        return out


@contextmanager
def _parse_errors() -> Iterator[None]:
    """A key or field that does not parse means something else wrote under our prefix."""
    try:
        yield
    except ValueError as exc:
        raise StoreError(f"unexpected data under the meter's Redis prefix: {exc}") from exc
