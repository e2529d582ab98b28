"""The compiled per-series loop (engine/windows/_series.c) answers exactly as the Python one.

`MemoryStore(native=True)` and `MemoryStore(native=False)` are fed the same
hostile streams (late events, events too late to count, the same id again with
other content, events on window and bucket edges, filtered-out events, many
events past the cap, labels) in every store mode a server or a replay uses,
and must give the same raw values at every step. The Redis parity tests
(test_store_parity.py) run both loops against Redis too. Then what C adds of
its own: sums beyond 64 bits, values that do not fit, references released.
"""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.windows.memory import MemoryStore, native_series
from engine.windows.spec import Aggregate, WindowSpec
from tests.support.windows import compiled_plan, event_fields

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_767_225_600_000
BIG = "amount_base_minor >= 5000"

PLAN = compiled_plan(
    [
        WindowSpec("card_count_10m", ("card_id",), Aggregate.COUNT, 10 * MIN),
        WindowSpec("card_count_2d", ("card_id",), Aggregate.COUNT, 2 * DAY),
        WindowSpec("card_sum_1h", ("card_id",), Aggregate.SUM, HOUR, "amount"),
        WindowSpec("card_sum_3d", ("card_id",), Aggregate.SUM, 3 * DAY, "amount"),
        WindowSpec("card_min_2d", ("card_id",), Aggregate.MIN, 2 * DAY, "amount"),
        WindowSpec("card_max_1h", ("card_id",), Aggregate.MAX, HOUR, "amount"),
        WindowSpec("card_max_2d", ("card_id",), Aggregate.MAX, 2 * DAY, "amount"),
        WindowSpec("card_avg_1d_after_1d", ("card_id",), Aggregate.AVG, DAY, "amount", None, DAY),
        WindowSpec("card_min_1d_after_1d", ("card_id",), Aggregate.MIN, DAY, "amount", None, DAY),
        WindowSpec("card_count_30m_after_20m", ("card_id",), Aggregate.COUNT, 30 * MIN, None, None, 20 * MIN),
        WindowSpec("card_sum_1h_after_10m", ("card_id",), Aggregate.SUM, HOUR, "amount", None, 10 * MIN),
        WindowSpec("card_count_1h_big", ("card_id",), Aggregate.COUNT, HOUR, None, BIG),
        WindowSpec("card_sum_2d_big", ("card_id",), Aggregate.SUM, 2 * DAY, "amount", BIG),
        WindowSpec("device_cards_1h", ("device_id",), Aggregate.DISTINCT, HOUR, "card_id"),
        WindowSpec("device_cards_1d_after_1h", ("device_id",), Aggregate.DISTINCT, DAY, "card_id", None, HOUR),
        WindowSpec("device_count_2d_after_12h", ("device_id",), Aggregate.COUNT, 2 * DAY, None, None, 12 * HOUR),
        WindowSpec("pair_count_5m", ("device_id", "card_id"), Aggregate.COUNT, 5 * MIN),
        WindowSpec("card_frauds_2d", ("card_id",), Aggregate.COUNT, 2 * DAY, label="fraud"),
        # Time windows: exact over their whole duration, capped; a filtered one, a label one.
        WindowSpec("card_first_seen_1h", ("card_id",), Aggregate.FIRST_SEEN, HOUR),
        WindowSpec("card_first_seen_3d", ("card_id",), Aggregate.FIRST_SEEN, 3 * DAY),
        WindowSpec("card_since_previous_2d", ("card_id",), Aggregate.SINCE_PREVIOUS, 2 * DAY),
        WindowSpec("card_since_previous_10m", ("card_id",), Aggregate.SINCE_PREVIOUS, 10 * MIN),
        WindowSpec("pair_is_new_2d", ("device_id", "card_id"), Aggregate.IS_NEW, 2 * DAY),
        WindowSpec("device_is_new_1h_big", ("device_id",), Aggregate.IS_NEW, HOUR, None, BIG),
        WindowSpec("card_first_fraud_2d", ("card_id",), Aggregate.FIRST_SEEN, 2 * DAY, label="fraud"),
        # Distinct counts of other fields: an enriched one and an attribute.
        WindowSpec("card_countries_1h", ("card_id",), Aggregate.DISTINCT, HOUR, "ip_country"),
        WindowSpec("device_shops_1d", ("device_id",), Aggregate.DISTINCT, DAY, "attributes.shop"),
    ],
    allowed_lateness_ms=2 * HOUR,
    amount_scale=0.01,
    max_events_per_series=6,  # small: the cap drops events often
)

offsets = st.one_of(
    st.integers(0, 4 * 24).map(lambda h: h * HOUR),  # on bucket edges
    st.integers(0, 4 * 24).map(lambda h: h * HOUR - 1),
    st.integers(0, 4 * 24 * 12).map(lambda m: m * 5 * MIN),
    st.integers(0, 4 * DAY),
)
event = st.tuples(
    st.just("new"),
    offsets,
    st.sampled_from(["c1", "c2", "c3"]),
    st.sampled_from(["d1", "d2", ""]),
    st.integers(0, 10_000),
)
# Relative to the previous event: mostly forward, often late by minutes to hours (other hours' buckets).
near = st.tuples(
    st.just("near"),
    st.one_of(st.integers(-4 * HOUR, 3 * HOUR), st.integers(-70, 70).map(lambda m: m * MIN)),
    st.sampled_from(["c1", "c1", "c2"]),
    st.sampled_from(["d1", "d2", ""]),
    st.integers(0, 10_000),
)
again = st.tuples(st.just("again"), st.integers(0, 10**6), offsets, st.integers(0, 10_000))  # same id, other content
label = st.tuples(st.just("label"), st.integers(0, 10**6), offsets)
streams = st.lists(st.one_of(event, near, near, near, near, again, label), min_size=1, max_size=80)


def _answers(store: MemoryStore, stream: list[tuple], first_only: bool) -> list[tuple[int, ...]]:
    """Raw values of every step; `first_only` skips re-sent ids (a store told ids are new)."""
    out: list[tuple[int, ...]] = []
    sent: list[tuple[str, dict[str, object]]] = []
    labelled: set[str] = set()
    last = 0
    for step in stream:
        if step[0] in ("new", "near"):
            _, offset, card, device, amount = step
            offset = last = offset if step[0] == "new" else max(0, last + offset)
            txid = f"t{len(sent)}"
            fields: dict[str, object] = event_fields(card, device, amount)
            sent.append((txid, fields))
            bound = PLAN.bind(txid, T0 + offset, fields)
        elif step[0] == "again" and sent and not first_only:
            txid, fields = sent[step[1] % len(sent)]
            bound = PLAN.bind(txid, T0 + step[2], {**fields, **event_fields(str(fields["card_id"]), "d1", step[3])})
        elif step[0] == "label" and sent:
            txid, fields = sent[step[1] % len(sent)]
            if first_only and txid in labelled:
                continue
            labelled.add(txid)
            bound = PLAN.bind_feedback(f"label {txid}", T0 + step[2], fields, "fraud")
        else:
            continue
        out.append(store.apply(PLAN, bound, "").raw)
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},  # a server's store: idempotency records, idle expiry
        {"remember_responses": False},
        {"remember_responses": False, "expire_idle": False},
        {"remember_responses": False, "expire_idle": False, "new_ids": True},  # a replay's store
    ],
    ids=["server", "no-records", "replay-indexed", "replay-new-ids"],
)
@settings(max_examples=400, deadline=None)
@given(stream=streams)
def test_the_compiled_loop_answers_as_the_python_one(options: dict[str, bool], stream: list[tuple]) -> None:
    first_only = bool(options.get("new_ids"))
    python = _answers(MemoryStore(native=False, **options), stream, first_only)
    compiled = _answers(MemoryStore(native=True, **options), stream, first_only)
    for step, (want, got) in enumerate(zip(python, compiled, strict=True)):
        assert got == want, f"step {step}: compiled {got} != python {want}"


def test_the_compiled_loop_is_built_and_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make install` builds it; without it every in-process store silently runs the slower loop."""
    assert native_series is not None, "engine.windows._series is not built: reinstall with a C compiler"
    monkeypatch.delenv("RISK_NATIVE_WINDOWS", raising=False)
    assert MemoryStore()._native
    assert not MemoryStore(native=False)._native
    monkeypatch.setenv("RISK_NATIVE_WINDOWS", "0")  # the operator's switch back to the Python loop
    assert not MemoryStore()._native
    assert MemoryStore(native=True)._native


def test_sums_beyond_64_bits_are_exact() -> None:
    huge = 4 * 10**18  # fits in int64; three of them do not
    fields = event_fields("c", "d", huge)
    stores = [MemoryStore(native=True), MemoryStore(native=False)]
    for store in stores:
        for i in range(3):
            raw = store.apply(PLAN, PLAN.bind(f"t{i}", T0 + i * MIN, fields), "").raw
        assert PLAN.finish(raw)["card_sum_1h"] == pytest.approx(3 * huge * 0.01)
    last = [s.apply(PLAN, PLAN.bind("t9", T0 + 5 * MIN, fields), "").raw for s in stores]
    assert last[0] == last[1]
    assert 4 * huge in last[0]  # the exact integer, not wrapped around


def test_a_value_beyond_64_bits_is_refused_cleanly() -> None:
    """Validation bounds amounts far below this; the compiled loop raises, it does not wrap."""
    store = MemoryStore(native=True)
    fields = event_fields("c", "d", 2**63)
    with pytest.raises(OverflowError):
        store.apply(PLAN, PLAN.bind("t1", T0, fields), "")
    fine = {**fields, "amount_base_minor": 5}
    raw = store.apply(PLAN, PLAN.bind("t2", T0 + 1, fine), "").raw
    assert PLAN.finish(raw)["card_sum_1h"] == pytest.approx(0.05)


@pytest.mark.parametrize("new_ids", [False, True])
def test_dropped_events_release_their_ids(new_ids: bool) -> None:
    """Events dropped by retention or the cap release their id strings (no leak in C)."""
    store = MemoryStore(native=True, remember_responses=False, new_ids=new_ids)
    ids = [f"tx-{i:06d}-{'x' * 20}" for i in range(400)]
    baseline = sys.getrefcount(ids[0])
    for i, txid in enumerate(ids):
        fields = event_fields("c", f"d{i % 3}", i)
        store.apply(PLAN, PLAN.bind(txid, T0 + i * 3 * HOUR, fields), "")  # 3 h apart: hourly windows drop
    # (counted outside the asserts: pytest's rewritten asserts hold references of their own)
    oldest, newest = sys.getrefcount(ids[0]), sys.getrefcount(ids[-1])
    assert oldest == baseline  # dropped from every series long ago
    assert newest > baseline  # still held by the newest series
    del store, txid  # (the loop variable held the newest id too)
    newest = sys.getrefcount(ids[-1])
    assert newest == baseline


def test_a_series_reports_its_events() -> None:
    store = MemoryStore(native=True)
    for i in range(10):
        fields = event_fields("c", "d", i)
        store.apply(PLAN, PLAN.bind(f"t{i}", T0 + i * MIN, fields), "")
    series = store._series["card_id#amount_base_minor"]["c"]
    assert len(series) == 6  # the cap
    assert series.times() == [T0 + i * MIN for i in range(4, 10)]
    assert len(store._series["card_id"]["c"]) == 10  # counts are not capped
    assert store._series["card_id#@time"]["c"].times() == [T0 + i * MIN for i in range(4, 10)]  # time series are
    assert "device_id#@time" not in store._series  # time windows of a day or less read the count series
