"""The order a request's deployments are tried in under a GPU plan (``routing: plan``): the planned GPU
type first, the other dedicated deployments next, and the per-token ones exactly where the config put
them (spillover unchanged)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenyard.capacity.gpu_plan import ModelPlan
from tokenyard.meter.shapes import SHAPE_COUNT, shape_index
from tokenyard.proxy.plan_order import UNCAPPED_COMPLETION_TOKENS, plan_order, request_shape, shape_orders

GPU = st.sampled_from(["A10G", "L4", "H100"])
DEPLOYMENTS = st.lists(st.one_of(st.none(), GPU), max_size=8)  # None: billed per token


def test_the_planned_type_goes_first_and_per_token_deployments_stay_put() -> None:
    #            0       1      2     3       4
    configured = ["H100", "A10G", None, "A10G", None]
    assert plan_order(configured, "A10G") == (1, 3, 2, 0, 4)
    assert plan_order(configured, "H100") == (0, 1, 2, 3, 4)


def test_no_plan_or_an_undeployed_type_keeps_the_configured_order() -> None:
    configured = ["H100", None, "A10G"]
    assert plan_order(configured, None) == (0, 1, 2)
    assert plan_order(configured, "B200") == (0, 1, 2)
    assert plan_order([], "A10G") == ()


@settings(max_examples=200, deadline=None)
@given(DEPLOYMENTS, st.one_of(st.none(), GPU))
def test_the_order_is_a_permutation_that_keeps_each_position_s_kind(
    configured: list[str | None], planned: str | None
) -> None:
    order = plan_order(configured, planned)
    assert sorted(order) == list(range(len(configured)))
    # Every position holds a deployment of the kind it held: a dedicated deployment is before a per-token
    # one whenever it was, and the per-token ones are where they were.
    for position, index in enumerate(order):
        assert (configured[index] is None) == (configured[position] is None)
        if configured[position] is None:
            assert index == position
    dedicated = [configured[i] for i in order if configured[i] is not None]
    of_planned = sum(gpu == planned for gpu in dedicated)
    assert dedicated[:of_planned] == [planned] * of_planned  # the planned type first
    # Within each group, the configured order.
    firsts = [i for i in order if configured[i] == planned]
    rest = [i for i in order if configured[i] not in (planned, None)]
    assert firsts == sorted(firsts)
    assert rest == sorted(rest)


def test_each_shape_gets_its_type_s_order_and_shapes_of_one_type_share_it() -> None:
    short, long = shape_index(50, 100), shape_index(5000, 100)
    assigned = {short: "A10G", long: "H100"}
    plan = ModelPlan(tuple(assigned.get(k) for k in range(SHAPE_COUNT)), {"A10G": 1, "H100": 1}, 1.0)
    orders = shape_orders(["h100", "a10g", "api"], ["H100", "A10G", None], plan)
    assert len(orders) == SHAPE_COUNT
    assert orders[short] == ["a10g", "h100", "api"]
    assert orders[long] == ["h100", "a10g", "api"]
    unplanned = [orders[k] for k in range(SHAPE_COUNT) if k not in (short, long)]
    assert all(order is unplanned[0] for order in unplanned)  # built once: the configured order
    assert unplanned[0] == ["h100", "a10g", "api"]


def test_a_request_s_shape_is_its_bytes_over_four_and_its_output_cap() -> None:
    assert request_shape(400, {"max_tokens": 10}) == shape_index(100, 10)
    assert request_shape(40_000, {"max_completion_tokens": 2000, "max_tokens": 10}) == shape_index(
        10_000, 2000
    )
    # No cap (or one that is no count): a chat answer of typical length.
    assert request_shape(400, {}) == shape_index(100, UNCAPPED_COMPLETION_TOKENS)
    assert request_shape(400, {"max_tokens": "lots"}) == shape_index(100, UNCAPPED_COMPLETION_TOKENS)
