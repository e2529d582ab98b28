"""Filters, delays and bucketed (longer than a day) windows at their edges, in both stores.

docs/windows.md: a filtered window holds only the events that pass its filter
(a transaction that fails it is not in its own window); a delayed window of
t holds (t - delay - d, t - delay]; a window reaching back more than a day
keeps the hours before t's in buckets and misses less than one hour at each
rounded edge (never an event outside the window).
"""

from __future__ import annotations

import random

import pytest

from engine.enrich import FIELDS
from engine.rules.expr import compile_condition
from engine.rules.loader import load_ruleset
from engine.windows.memory import MemoryStore
from engine.windows.spec import BUCKET_MS, Aggregate, WindowPlan, WindowSpec
from engine.windows.store import WindowStore

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on an hour boundary


def put(store: WindowStore, p: WindowPlan, txid: str, t: int, amount: int = 100, card: str = "c1") -> dict[str, float]:
    fields = {"card_id": card, "amount_base_minor": amount}
    outcome = store.apply(p, p.bind(txid, t, fields), f"fp-{txid}")
    return p.finish(outcome.raw)


BIG = "amount_base_minor >= 1000"


def test_a_filter_without_its_compiled_function_is_refused() -> None:
    with pytest.raises(ValueError, match="'big_count_1h' has a filter but no compiled filter_fn"):
        WindowPlan([WindowSpec("big_count_1h", ("card_id",), Aggregate.COUNT, HOUR, None, BIG)], MIN, 0.01)


def test_filter_keeps_out_failing_events_and_the_current_one(store: WindowStore) -> None:
    big = compile_condition(BIG, {name: kind for name, (kind, _) in FIELDS.items()}, "window filter").fn
    p = WindowPlan(
        [WindowSpec("big_count_1h", ("card_id",), Aggregate.COUNT, HOUR, None, BIG, filter_fn=big)],
        allowed_lateness_ms=5 * MIN,
        amount_scale=0.01,
    )
    assert put(store, p, "a", T0, 5000)["big_count_1h"] == 1
    assert put(store, p, "b", T0 + 1, 10)["big_count_1h"] == 1  # b fails: not in its own window
    assert put(store, p, "c", T0 + 2, 2000)["big_count_1h"] == 2  # a and c, not b


def test_delay_edges(store: WindowStore) -> None:
    p = WindowPlan(
        [WindowSpec("count_10m_after_5m", ("card_id",), Aggregate.COUNT, 10 * MIN, None, None, 5 * MIN)],
        allowed_lateness_ms=5 * MIN,
        amount_scale=0.01,
    )
    assert put(store, p, "a", T0)["count_10m_after_5m"] == 0  # the current event is never in a delayed window
    assert put(store, p, "b", T0 + 5 * MIN - 1)["count_10m_after_5m"] == 0  # a is after t - delay
    assert put(store, p, "c", T0 + 5 * MIN)["count_10m_after_5m"] == 1  # a at t - delay: in (closed edge)
    assert put(store, p, "d", T0 + 15 * MIN - 1)["count_10m_after_5m"] == 3  # a, b, c in (T0 - 1ms, T0 + 10m - 1]
    assert put(store, p, "e", T0 + 15 * MIN)["count_10m_after_5m"] == 2  # a at t - delay - d: out (open edge)


def test_bucketed_window_rounds_its_old_edge_up_to_the_hour(store: WindowStore) -> None:
    p = WindowPlan(
        [
            WindowSpec("count_2d", ("card_id",), Aggregate.COUNT, 2 * DAY),
            WindowSpec("sum_2d", ("card_id",), Aggregate.SUM, 2 * DAY, "amount"),
            WindowSpec("min_2d", ("card_id",), Aggregate.MIN, 2 * DAY, "amount"),
        ],
        allowed_lateness_ms=10 * MIN,
        amount_scale=1.0,
    )
    put(store, p, "a", T0 + 10 * MIN, 1)  # in hour k(T0): lost once t - d passes T0
    put(store, p, "b", T0 + HOUR, 2)  # the next hour's first millisecond
    # t - d = T0 + 30m: a is inside (t - d, t] but in the edge hour, so left out.
    w = put(store, p, "c", T0 + 2 * DAY + 30 * MIN, 5)
    assert (w["count_2d"], w["sum_2d"], w["min_2d"]) == (2, 7, 2)
    # d is late (within the lateness): whole hours after a's up to the hour before d's (b),
    # then d's own hour exactly (d itself; c is later than d).
    w = put(store, p, "d", T0 + 2 * DAY + 5 * MIN, 7)
    assert (w["count_2d"], w["sum_2d"]) == (2, 9)


def test_bucketed_error_is_less_than_one_hour_at_the_old_edge() -> None:
    """Random streams: the bucketed count lies between the exact counts over (t - d + 1h, t] and (t - d, t]."""
    rng = random.Random(7)
    d = 2 * DAY
    p = WindowPlan([WindowSpec("count_2d", ("card_id",), Aggregate.COUNT, d)], 30 * MIN, 1.0)
    store = MemoryStore()
    times: list[int] = []
    t = T0
    for i in range(2_000):
        t += rng.randrange(0, 20 * MIN)
        late = rng.random() < 0.2
        at = t - rng.randrange(0, 30 * MIN) if late else t
        times.append(at)
        got = put(store, p, f"x{i}", at)["count_2d"]
        exact = sum(1 for x in times if at - d < x <= at)
        floor = sum(1 for x in times if at - d + BUCKET_MS <= x <= at)
        assert floor <= got <= exact


def test_shipped_rules_load_and_windows_over_a_day_are_bucketed() -> None:
    from tests.support import RULES

    plan = load_ruleset(RULES).windows
    long = {s.name for s in plan.specs if s.bucketed}
    assert "card_count_30d" in long and "card_count_1d" not in long
