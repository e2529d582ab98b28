"""The in-process store and Redis give identical answers on the same stream.

Hypothesis draws streams with out-of-order events, retries (before and after
the response was recorded), ids reused with other content, shared and
missing entities, events on exact window edges and Redis losing its distinct
indexes (they are rebuilt from the events); and, over several days,
filters, delays and bucketed (longer than a day) windows in the in-process
store, standalone Redis and a real local Redis Cluster, Redis losing the
running totals of its hourly buckets (rebuilt from the hours); and a dense
stream of 40 days, where long windows read those totals. Every plan has
time windows (first seen, since previous, is new; short and long, filtered,
past the cap) and distinct counts of an enriched field (`ip_country`) and
of an attribute (`attributes.shop`), with empty values.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.windows.memory import MemoryStore
from engine.windows.redis_cluster import RedisClusterStore
from engine.windows.redis_store import RedisStore
from engine.windows.spec import Aggregate, WindowPlan, WindowSpec
from engine.windows.store import IdempotencyConflict, WindowStore
from tests.support.cluster import LocalCluster
from tests.support.windows import DAY, HOUR, MIN, PLAN, T0, compiled_plan, event_fields, recorded_answer

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
# Redis loses its distinct indexes (as after an upgrade from a version without them):
# they are rebuilt from the events.
forget_index = st.tuples(st.just("forget_index"))
streams = st.lists(st.one_of(new_event, new_event, new_event, retry, remember, forget_index), min_size=1, max_size=40)

_runs = itertools.count()


def _run_stream(plan: WindowPlan, stores: list[WindowStore], stream: list[tuple]) -> None:
    """Apply the stream to every store; each step must give the same answer in all of them."""
    sent: list[tuple[str, int, dict[str, object], str]] = []
    for step in stream:
        if step[0] == "new":
            _, offset, card, device, amount = step
            txid = f"t{len(sent)}"
            fields = event_fields(card, device, amount)
            item = (txid, T0 + offset, fields, f"fp-{txid}")
        elif step[0] == "retry" and sent:
            txid, t, fields, fp = sent[step[1] % len(sent)]
            item = (txid, t, fields, fp + "-changed" if step[2] else fp)
        elif step[0] in ("forget_index", "forget_totals"):
            pattern = ":d:*" if step[0] == "forget_index" else ":r*"
            for store in stores:
                if isinstance(store, RedisStore):
                    client = store._client
                    for key in client.scan_iter(match=f"{{{store.prefix}:*}}{pattern}"):
                        client.delete(key)
            continue
        elif step[0] == "remember" and sent:
            txid, _, _, fp = sent[step[1] % len(sent)]
            for store in stores:
                store.remember(txid, fp, recorded_answer(txid))
            continue
        else:
            continue
        txid, t, fields, fp = item
        answers = []
        for store in stores:
            try:
                outcome = store.apply(plan, plan.bind(txid, t, fields), fp)
                if outcome.replay is not None:  # JSON from Redis, the answer itself from the in-process store
                    replayed = outcome.replay
                    answers.append(("replay", replayed if isinstance(replayed, str) else replayed.to_json()))
                else:
                    answers.append(("values", plan.finish(outcome.raw)))
            except IdempotencyConflict:
                answers.append(("conflict", None))
        for store, answer in zip(stores[1:], answers[1:], strict=True):
            assert answer == answers[0], f"step {step}: memory {answers[0]} != {store.name} {answer}"
        if step[0] == "new":
            sent.append(item)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams)
def test_memory_and_redis_agree(redis_url: tuple[str, str], stream: list[tuple]) -> None:
    url, prefix = redis_url
    run = next(_runs)
    # Retry records written behind the answer (the default), and by `remember` itself.
    behind = RedisStore(url, prefix=f"{prefix}-{run}", budget_s=2.0)
    direct = RedisStore(url, prefix=f"{prefix}-{run}-direct", budget_s=2.0, write_behind=False)
    try:
        _run_stream(PLAN, [MemoryStore(native=True), MemoryStore(native=False), behind, direct], stream)
    finally:
        behind.close()
        direct.close()


# Filters, delays and bucketed (longer than a day) windows, over streams of several days,
# in the three stores: in-process, standalone Redis and Redis Cluster.
BIG = "amount_base_minor >= 500000000"
LONG_PLAN = compiled_plan(
    [
        WindowSpec("card_count_2d", ("card_id",), Aggregate.COUNT, 2 * DAY),
        WindowSpec("card_count_1h", ("card_id",), Aggregate.COUNT, HOUR),
        WindowSpec("card_sum_3d_big", ("card_id",), Aggregate.SUM, 3 * DAY, "amount", BIG),
        WindowSpec("card_count_1h_big", ("card_id",), Aggregate.COUNT, HOUR, None, BIG),
        WindowSpec("card_min_2d", ("card_id",), Aggregate.MIN, 2 * DAY, "amount"),
        WindowSpec("card_max_2d", ("card_id",), Aggregate.MAX, 2 * DAY, "amount"),
        WindowSpec("card_avg_1d_after_1d", ("card_id",), Aggregate.AVG, DAY, "amount", None, DAY),
        WindowSpec("card_count_30m_after_20m", ("card_id",), Aggregate.COUNT, 30 * MIN, None, None, 20 * MIN),
        WindowSpec("card_max_1h_after_10m", ("card_id",), Aggregate.MAX, HOUR, "amount", None, 10 * MIN),
        WindowSpec("device_cards_2d", ("device_id",), Aggregate.DISTINCT, 2 * DAY, "card_id"),
        WindowSpec("device_cards_1d_after_1h", ("device_id",), Aggregate.DISTINCT, DAY, "card_id", None, HOUR),
        WindowSpec("device_cards_1h_big", ("device_id",), Aggregate.DISTINCT, HOUR, "card_id", BIG),
        WindowSpec("device_count_2d_after_12h", ("device_id",), Aggregate.COUNT, 2 * DAY, None, None, 12 * HOUR),
        # Time windows longer than a day (exact, capped), one filtered; distinct counts of other fields.
        WindowSpec("card_first_seen_3d", ("card_id",), Aggregate.FIRST_SEEN, 3 * DAY),
        WindowSpec("card_since_previous_2d", ("card_id",), Aggregate.SINCE_PREVIOUS, 2 * DAY),
        WindowSpec("card_since_previous_1h_big", ("card_id",), Aggregate.SINCE_PREVIOUS, HOUR, None, BIG),
        WindowSpec("pair_is_new_3d", ("device_id", "card_id"), Aggregate.IS_NEW, 3 * DAY),
        WindowSpec("device_is_new_1d_big", ("device_id",), Aggregate.IS_NEW, DAY, None, BIG),
        WindowSpec("card_countries_2d", ("card_id",), Aggregate.DISTINCT, 2 * DAY, "ip_country"),
        WindowSpec("device_shops_1d_big", ("device_id",), Aggregate.DISTINCT, DAY, "attributes.shop", BIG),
    ],
    allowed_lateness_ms=2 * HOUR,
    amount_scale=0.01,
    max_events_per_series=9,
)
long_offsets = st.one_of(
    st.integers(0, 5 * 24).map(lambda h: h * HOUR),  # on bucket edges
    st.integers(0, 5 * 24 * 12).map(lambda m: m * 5 * MIN),
    st.integers(0, 5 * DAY),
    st.integers(0, 5 * 24).map(lambda h: h * HOUR - 1),
)
long_event = st.tuples(
    st.just("new"),
    long_offsets,
    st.sampled_from(["c1", "c2"]),
    st.sampled_from(["d1", "d2", ""]),
    st.integers(0, 10**9),
)
# Redis loses the running totals of its hourly buckets (as after an upgrade from a version
# without them): they are rebuilt from the hours.
forget_totals = st.tuples(st.just("forget_totals"))
long_streams = st.lists(
    st.one_of(long_event, long_event, long_event, retry, remember, forget_totals), min_size=1, max_size=50
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=long_streams)
def test_filters_delays_and_buckets_agree_in_all_stores(
    redis_url: tuple[str, str], redis_cluster: LocalCluster, stream: list[tuple]
) -> None:
    url, prefix = redis_url
    run = next(_runs)
    stores: list[WindowStore] = [
        MemoryStore(native=True),
        MemoryStore(native=False),
        RedisStore(url, prefix=f"{prefix}-long-{run}", budget_s=2.0),
        RedisClusterStore(redis_cluster.nodes, prefix=f"{prefix}-cl-{run}", budget_s=2.0),
    ]
    try:
        _run_stream(LONG_PLAN, stores, stream)
    finally:
        for s in stores:
            s.close()


def test_a_lost_distinct_index_is_rebuilt_from_the_events(redis_url: tuple[str, str]) -> None:
    """Events written without the index (an older version, a manual delete) still count.

    The index is rebuilt by whichever call finds it missing: one adding a value,
    one adding an event without a value, or one that only reads (it fails the filter).
    """
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-rebuild", budget_s=2.0)
    big = "amount_base_minor >= 500"
    plan = compiled_plan(
        [
            WindowSpec("device_cards_1h", ("device_id",), Aggregate.DISTINCT, HOUR, "card_id"),
            WindowSpec("device_cards_1h_big", ("device_id",), Aggregate.DISTINCT, HOUR, "card_id", big),
        ],
        allowed_lateness_ms=2 * MIN,
        amount_scale=0.01,
    )
    client = store._client

    def send(i: int, card: str, amount: int) -> dict[str, float]:
        fields = {"device_id": "d1", "card_id": card, "amount_base_minor": amount}
        return plan.finish(store.apply(plan, plan.bind(f"t{i}", T0 + i * MIN, fields), f"fp{i}").raw)

    try:
        for i, card in enumerate(["c1", "c2", "c1", "c3"]):
            send(i, card, 1000)
        indexes = sorted(key.decode() for key in client.keys(f"{{{store.prefix}:device_id:d1}}:d:*"))
        assert len(indexes) == 2 and [client.zcard(k) for k in indexes] == [3, 3]
        # Lost; then an event without a card (added to both series, no value for the index).
        assert client.delete(*indexes) == 2
        w = send(5, "", 1000)
        assert (w["device_cards_1h"], w["device_cards_1h_big"]) == (3, 3)
        assert [client.zcard(k) for k in indexes] == [3, 3]
        # Lost again; then a small amount: a new card in one series, only a read in the filtered one.
        assert client.delete(*indexes) == 2
        w = send(6, "c4", 1)
        assert (w["device_cards_1h"], w["device_cards_1h_big"]) == (4, 3)
        assert sorted(client.zcard(k) for k in indexes) == [3, 4]
    finally:
        store.close()


DENSE_PLAN = compiled_plan(
    [
        WindowSpec("merchant_count_7d", ("merchant_id",), Aggregate.COUNT, 7 * DAY),
        WindowSpec("merchant_count_30d", ("merchant_id",), Aggregate.COUNT, 30 * DAY),
        WindowSpec("merchant_count_1d_before_7d", ("merchant_id",), Aggregate.COUNT, DAY, None, None, 7 * DAY),
        WindowSpec("merchant_count_30d_before_7d", ("merchant_id",), Aggregate.COUNT, 30 * DAY, None, None, 7 * DAY),
        WindowSpec("merchant_sum_7d", ("merchant_id",), Aggregate.SUM, 7 * DAY, "amount"),
        WindowSpec("merchant_avg_30d", ("merchant_id",), Aggregate.AVG, 30 * DAY, "amount"),
        WindowSpec("merchant_sum_2d_big", ("merchant_id",), Aggregate.SUM, 2 * DAY, "amount", BIG),
        WindowSpec("merchant_max_7d", ("merchant_id",), Aggregate.MAX, 7 * DAY, "amount_minor"),
    ],
    allowed_lateness_ms=3 * HOUR,
    amount_scale=0.01,
    max_events_per_series=50,
)


def test_dense_long_windows_read_running_totals_and_agree(redis_url: tuple[str, str]) -> None:
    """40 days of a busy merchant (hundreds of hourly buckets): events late by up to the allowed
    lateness across hour and day edges, events too late to be added (only read), retries, and
    the running totals deleted now and then (as in a Redis written by the previous layout:
    hours, no totals) and rebuilt. Every answer equals the in-process store's. Its max window
    keeps reading the hours (no totals)."""
    import random

    url, prefix = redis_url
    rng = random.Random(11)
    memory = MemoryStore()
    redis_store = RedisStore(url, prefix=f"{prefix}-dense", budget_s=2.0)
    client = redis_store._client
    stream: list[tuple[str, int, dict[str, object]]] = []
    t = T0
    for i in range(2_400):
        t += rng.choice([1, 7, 20, 31, 59]) * MIN + rng.randrange(MIN)
        late = rng.random()
        if late < 0.1:
            when = t - rng.randrange(3 * HOUR)  # late, within the lateness
        elif late < 0.13:
            when = t - rng.randrange(5 * HOUR, 2 * DAY)  # too late: only read, its windows reach furthest back
        else:
            when = t
        amount = rng.choice([100, 2_500, 600_000_000, 99])
        stream.append((f"m{i}", when, {"merchant_id": "m1", "amount_base_minor": amount, "amount_minor": amount}))
    try:
        for i, (txid, when, fields) in enumerate(stream):
            if i % 500 == 499:  # lost, or written by a version without them: rebuilt from the hours
                assert client.delete(*client.keys(f"{{{redis_store.prefix}:*}}:r*")) == 3  # count, sum, filtered sum
            ids = [txid] if i % 37 else [txid, txid]  # now and then a retry of the same event
            for same in ids:
                bound = DENSE_PLAN.bind(same, when, fields)
                want = DENSE_PLAN.finish(memory.apply(DENSE_PLAN, bound, f"fp-{same}").raw)
                got = DENSE_PLAN.finish(redis_store.apply(DENSE_PLAN, bound, f"fp-{same}").raw)
                assert got == want, f"event {i} ({txid} at {when - T0} ms): memory {want} != redis {got}"
        # The totals hold about the bucket retention (37 days and the lateness), not every hour ever.
        totals = f"{{{redis_store.prefix}:merchant_id:m1}}:r"  # of the count series
        assert 600 < client.zcard(totals) <= (37 * 24 + 3) + 24, client.zcard(totals)
        assert want["merchant_count_30d"] > 500
    finally:
        redis_store.close()


def test_running_totals_follow_hours_an_older_version_added_to(redis_url: tuple[str, str]) -> None:
    """During a rolling upgrade, a worker still on the previous version adds events to the
    series and the hourly buckets but not to the running totals. The next event of that hour
    finds the totals short of the hour's count and builds them again from the hours, so the
    long windows count the older worker's events too, once their hour is in the buckets."""
    url, prefix = redis_url
    plan = compiled_plan(
        [
            WindowSpec("card_count_3d", ("card_id",), Aggregate.COUNT, 3 * DAY),
            WindowSpec("card_sum_3d", ("card_id",), Aggregate.SUM, 3 * DAY, "amount"),
        ],
        allowed_lateness_ms=HOUR,
        amount_scale=0.01,
    )
    memory = MemoryStore()
    store = RedisStore(url, prefix=f"{prefix}-mixed", budget_s=2.0)
    client = store._client
    tag = f"{{{store.prefix}:card_id:c1}}"

    def new_version(i: int, t: int, amount: int) -> None:
        bound = plan.bind(f"t{i}", t, {"card_id": "c1", "amount_base_minor": amount})
        want = plan.finish(memory.apply(plan, bound, f"fp{i}").raw)
        got = plan.finish(store.apply(plan, bound, f"fp{i}").raw)
        assert got == want, f"event {i}: memory {want} != redis {got}"

    def older_version(i: int, t: int, amount: int) -> None:
        """What the previous script writes for an event: its series and its hour, no totals."""
        memory.apply(plan, plan.bind(f"t{i}", t, {"card_id": "c1", "amount_base_minor": amount}), f"fp{i}")
        hour = str(t // HOUR)
        client.zadd(f"{tag}:n", {f"t{i}": t})
        client.hincrby(f"{tag}:b", hour, 1)
        client.zadd(f"{tag}:z:amount_base_minor", {f"t{i}": t})
        client.hset(f"{tag}:h:amount_base_minor", f"t{i}", amount)
        cur = client.hget(f"{tag}:b:amount_base_minor", hour)
        c, s, mn, mx = (int(x) for x in cur.split()) if cur else (0, 0, amount, amount)
        client.hset(f"{tag}:b:amount_base_minor", hour, f"{c + 1} {s + amount} {min(mn, amount)} {max(mx, amount)}")

    try:
        for i in range(6):
            new_version(i, T0 + i * 5 * HOUR, 1_000 + i)
        older_version(6, T0 + 30 * HOUR + 10 * MIN, 70_000)
        new_version(7, T0 + 30 * HOUR + 20 * MIN, 80_000)  # the same hour: the totals are one short
        new_version(8, T0 + 32 * HOUR, 90_000)  # that hour is in the buckets now
        assert f"{T0 // HOUR + 30}:6:2".encode() in client.zrange(f"{tag}:r", 0, -1)
        older_version(9, T0 + 40 * HOUR + 5 * MIN, 5_000)  # a new hour, only in the older worker's
        new_version(10, T0 + 40 * HOUR + 30 * MIN, 6_000)  # totals have no such hour: built again
        new_version(11, T0 + 45 * HOUR, 7_000)
        new_version(12, T0 + 45 * HOUR + 1, 8_000)
    finally:
        store.close()
