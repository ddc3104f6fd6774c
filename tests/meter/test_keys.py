"""Every Redis key, the meter's and the queue's: one hash slot per prefix, and names round-trip exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from tokenyard.meter.model import AggKey, EngineKey, GpuKey
from tokenyard.stores.keys import RECORD_SEQ_DIGITS, MeterKeys, QueueKeys, record_json

KEYS = MeterKeys("tokenyard")
_minutes = st.integers(0, 2**40).map(lambda s: s * 60)


@given(st.builds(AggKey, _minutes, *[st.text()] * 7))
def test_any_aggregate_key_round_trips(agg_key: AggKey) -> None:
    assert KEYS.parse_agg(KEYS.agg(agg_key)) == agg_key


def test_an_aggregate_key_from_before_key_and_team_reads_with_neither() -> None:
    assert KEYS.parse_agg("{tokenyard}:agg:60:t:m:b:k:async") == AggKey(
        60, "t", "m", "b", "k", "async", "", ""
    )
    with pytest.raises(ValueError, match="not an aggregate key"):  # an old name with the new dimensions
        KEYS.parse_agg("{tokenyard}:agg:60:t:m:b:k:async:key:team")


@given(st.builds(GpuKey, _minutes, st.text()))
def test_any_gpu_key_round_trips(gpu_key: GpuKey) -> None:
    assert KEYS.parse_gpu(KEYS.gpu(gpu_key)) == gpu_key


@given(st.builds(EngineKey, _minutes, st.text()))
def test_any_engine_key_round_trips(engine_key: EngineKey) -> None:
    assert KEYS.parse_engine(KEYS.engine(engine_key)) == engine_key


def test_names_that_look_like_separators_stay_inside_their_dimension() -> None:
    name = KEYS.agg(AggKey(60, "a:b", "%3A", "", "x y", "ü", "k:1", ""))
    assert name == "{tokenyard}:usage:60:a%3Ab:%253A::x%20y:%C3%BC:k%3A1:"


def test_every_key_of_a_prefix_hashes_to_one_cluster_slot() -> None:
    keys = MeterKeys("ty:prod")
    names = [
        keys.agg(AggKey(60, "t", "m", "b", "k", "realtime")),
        keys.agg_index,
        keys.legacy_agg_index,
        keys.gpu(GpuKey(60, "b")),
        keys.gpu_index,
        keys.gpu_watermark("b"),
        keys.engine(EngineKey(60, "b")),
        keys.engine_index,
        keys.records,
        keys.record_seq,
        keys.batch("some-batch"),
    ]
    assert all(name.startswith("{ty:prod}:") for name in names)
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "{tokenyard}"])
def test_a_prefix_that_cannot_be_a_hash_tag_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        MeterKeys(prefix)


def test_keys_of_another_kind_or_prefix_do_not_parse() -> None:
    gpu_key = KEYS.gpu(GpuKey(60, "b"))
    with pytest.raises(ValueError, match="is not a 'usage' key"):
        KEYS.parse_agg(gpu_key)
    with pytest.raises(ValueError, match=r"is not a 'gpu' key of \{other\}"):
        MeterKeys("other").parse_gpu(gpu_key)


def test_the_scan_pattern_matches_only_this_prefix_literally() -> None:
    assert MeterKeys("ty*[x]?").match_all() == "{ty\\*\\[x\\]\\?}*"


def test_a_record_member_is_a_fixed_width_sequence_then_the_json() -> None:
    assert record_json("7".zfill(RECORD_SEQ_DIGITS) + '{"ts": 1}') == '{"ts": 1}'


def test_the_queue_keys_share_the_meter_prefix_and_its_slot_and_keep_their_ids_as_they_are() -> None:
    meter, queue = MeterKeys("ty:prod"), QueueKeys("ty:prod")
    assert [queue.stream, queue.entries, queue.batches] == [
        "{ty:prod}:q:stream",
        "{ty:prod}:q:entry",
        "{ty:prod}:q:batches",
    ]
    # Ids are tokenyard's own and were never encoded: encoding them now would orphan stored jobs.
    assert queue.job("job_1") == "{ty:prod}:q:job:job_1"
    assert queue.result("job_1") == "{ty:prod}:q:result:job_1"
    assert queue.batch("ded/batch_1") == "{ty:prod}:q:batch:ded/batch_1"
    assert queue.object("file", "file-1") == "{ty:prod}:q:obj:file:file-1"
    assert queue.objects_of("file", "acme") == "{ty:prod}:q:objs:file:acme"
    names = [queue.stream, queue.job("x"), queue.objects_of("batch", "t"), meter.records, meter.lock("l")]
    assert len({key_slot(name.encode()) for name in names}) == 1


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "{tokenyard}"])
def test_the_queue_refuses_the_prefixes_the_meter_refuses(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        QueueKeys(prefix)
