"""The GPU plan document (``advisor:plan``): what the advisor writes is what every proxy replica reads, and
a document from another version, or an entry that makes no sense, is skipped rather than trusted."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenyard.capacity.gpu_plan import FORMAT, ModelPlan, generated_at, plan_document, read_plans
from tokenyard.meter.shapes import SHAPE_COUNT, SHAPES, shape_index, shape_label

SHORT = shape_index(50, 100)  # in0-127/out64-255
LONG = shape_index(5000, 100)  # in2048-8191/out64-255


def plan(assigned: dict[int, str], replicas: dict[str, int], usd_per_h: float = 6.7) -> ModelPlan:
    return ModelPlan(tuple(assigned.get(k) for k in range(SHAPE_COUNT)), replicas, usd_per_h)


def stored(document: dict[str, Any]) -> dict[str, Any]:
    """The document as a store hands it back: JSON bytes, parsed."""
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(document))
    return parsed


def test_a_plan_reads_back_as_it_was_written() -> None:
    plans = {
        "llama": plan({SHORT: "A10G", LONG: "A100-80GB"}, {"A10G": 3, "A100-80GB": 1}),
        "qwen": plan({k: "H100" for k in range(SHAPE_COUNT)}, {"H100": 2}, 5.0),
    }
    document = stored(plan_document(plans, now_wall=1_800_000_000.5))
    assert document["format"] == FORMAT
    assert document["models"]["llama"]["shapes"] == {
        shape_label(SHAPES[SHORT]): "A10G",
        shape_label(SHAPES[LONG]): "A100-80GB",
    }
    assert read_plans(document) == plans
    assert generated_at(document) == 1_800_000_000.5


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.tuples(
            st.dictionaries(
                st.integers(0, SHAPE_COUNT - 1), st.sampled_from(["A10G", "L4", "H100"]), min_size=1
            ),
            st.dictionaries(st.sampled_from(["A10G", "L4", "H100"]), st.integers(0, 50)),
            st.floats(0, 1000, allow_nan=False),
        ),
    )
)
def test_any_plan_round_trips(entries: dict[str, tuple[dict[int, str], dict[str, int], float]]) -> None:
    plans = {model: plan(*entry) for model, entry in entries.items()}
    assert read_plans(stored(plan_document(plans, now_wall=0.0))) == plans


def test_no_document_or_another_format_is_no_plan() -> None:
    good = plan_document({"llama": plan({SHORT: "A10G"}, {"A10G": 1})}, now_wall=1.0)
    assert read_plans(None) == {}
    assert read_plans({}) == {}
    assert read_plans({**good, "format": FORMAT + 1}) == {}
    assert generated_at({**good, "format": FORMAT + 1}) is None
    assert read_plans({**good, "models": ["llama"]}) == {}


def test_a_bad_entry_is_skipped_and_the_good_ones_kept() -> None:
    good = plan({SHORT: "A10G"}, {"A10G": 1}).to_json()
    document = {
        "format": FORMAT,
        "generated_at": "yesterday",
        "models": {
            "llama": good,
            "not-a-mapping": [1, 2],
            "no-shapes": {"replicas": {"A10G": 1}, "usd_per_h": 1.0},
            "unknown-shapes": {"shapes": {"in0-99/out0-9": "A10G", "nonsense": "L4"}, "replicas": {}},
            "odd-parts": {
                "shapes": {shape_label(SHAPES[SHORT]): "L4", shape_label(SHAPES[LONG]): 7},
                "replicas": {"L4": 2, "A10G": -1, "H100": True, "T4": 1.5},
                "usd_per_h": "free",
            },
        },
    }
    plans = read_plans(document)
    assert set(plans) == {"llama", "odd-parts"}
    assert plans["llama"] == plan({SHORT: "A10G"}, {"A10G": 1})
    # The usable parts of an entry stay: one shape, one replica count; a cost that is no number is 0.
    assert plans["odd-parts"] == plan({SHORT: "L4"}, {"L4": 2}, 0.0)
    assert generated_at(document) is None
