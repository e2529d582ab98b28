"""The in-process store and Redis give identical answers on the same stream.

Hypothesis draws streams with out-of-order events, retries (before and after
the response was recorded), ids reused with other content, shared and
missing entities, and events on exact window edges.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from engine.windows.spec import Aggregate, WindowPlan, WindowSpec
from engine.windows.store import IdempotencyConflict

MIN = 60_000
T0 = 1_767_225_600_000

PLAN = WindowPlan(
    [
        WindowSpec("card_count_5m", ("card_id",), Aggregate.COUNT, 5 * MIN),
        WindowSpec("card_count_1h", ("card_id",), Aggregate.COUNT, 60 * MIN),
        WindowSpec("card_sum_1h", ("card_id",), Aggregate.SUM, 60 * MIN, "amount"),
        WindowSpec("card_avg_5m", ("card_id",), Aggregate.AVG, 5 * MIN, "amount"),
        WindowSpec("card_min_1h", ("card_id",), Aggregate.MIN, 60 * MIN, "amount"),
        WindowSpec("card_max_5m", ("card_id",), Aggregate.MAX, 5 * MIN, "amount"),
        WindowSpec("device_cards_1h", ("device_id",), Aggregate.DISTINCT, 60 * MIN, "card_id"),
        WindowSpec("pair_count_5m", ("device_id", "card_id"), Aggregate.COUNT, 5 * MIN),
    ],
    allowed_lateness_ms=2 * MIN,
    amount_scale=0.01,
    max_events_per_series=7,  # small, so the cap on value series is exercised too
)

# Offsets on a 1-minute grid plus edge offsets, so events often sit exactly on t - d.
offsets = st.one_of(
    st.integers(0, 24).map(lambda m: m * 5 * MIN),
    st.integers(0, 180).map(lambda m: m * MIN),
    st.integers(0, 3 * 3_600_000),
)
new_event = st.tuples(
    st.just("new"),
    offsets,
    st.sampled_from(["c1", "c2", "c3"]),
    st.sampled_from(["d1", "d2", ""]),
    st.integers(0, 10**9),
)
retry = st.tuples(
    st.just("retry"), st.integers(0, 10**6), st.booleans()
)  # which earlier event; reuse with other content?
remember = st.tuples(st.just("remember"), st.integers(0, 10**6))
streams = st.lists(st.one_of(new_event, new_event, new_event, retry, remember), min_size=1, max_size=40)

_runs = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams)
def test_memory_and_redis_agree(redis_url: tuple[str, str], stream: list[tuple]) -> None:
    url, prefix = redis_url
    redis_store = RedisStore(url, prefix=f"{prefix}-{next(_runs)}", budget_s=2.0)
    memory = MemoryStore()
    sent: list[tuple[str, int, dict[str, object], str]] = []
    try:
        for step in stream:
            if step[0] == "new":
                _, offset, card, device, amount = step
                txid = f"t{len(sent)}"
                fields = {"card_id": card, "device_id": device, "amount_base_minor": amount}
                item = (txid, T0 + offset, fields, f"fp-{txid}")
            elif step[0] == "retry" and sent:
                txid, t, fields, fp = sent[step[1] % len(sent)]
                item = (txid, t, fields, fp + "-changed" if step[2] else fp)
            elif step[0] == "remember" and sent:
                txid, _, _, fp = sent[step[1] % len(sent)]
                memory.remember(txid, fp, f"response-{txid}")
                redis_store.remember(txid, fp, f"response-{txid}")
                continue
            else:
                continue
            txid, t, fields, fp = item
            answers = []
            for store in (memory, redis_store):
                try:
                    outcome = store.apply(PLAN, PLAN.bind(txid, t, fields), fp)
                    answers.append(
                        ("replay", outcome.replay) if outcome.replay else ("values", PLAN.finish(outcome.raw))
                    )
                except IdempotencyConflict:
                    answers.append(("conflict", None))
            assert answers[0] == answers[1], f"step {step}: memory {answers[0]} != redis {answers[1]}"
            if step[0] == "new":
                sent.append(item)
    finally:
        redis_store.close()
