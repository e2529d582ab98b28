"""Window semantics at every edge, in both stores (real Redis and in-process).

Semantics under test (engine/windows/__init__.py): the window d of an event at
t covers (t - d, t]; the event is in its own window; the same transaction id
never counts twice; late events read their own past and count for later ones.
"""

from __future__ import annotations

import math

import pytest
import redis

from engine.transaction import Action, ChallengerResult, Contribution, Reason, ReasonSource, ScoreResult
from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from engine.windows.spec import Aggregate, WindowPlan, WindowSpec
from engine.windows.store import IdempotencyConflict, StoreUnavailable, WindowStore
from tests.support.windows import MIN, T0, event, plan, recorded_answer


def test_current_event_is_inside_its_own_windows(store: WindowStore) -> None:
    p = plan()
    w = event(store, p, "a", T0, amount=250)
    assert w["card_count_10m"] == 1
    assert w["card_sum_10m"] == 2.5
    assert w["card_avg_10m"] == 2.5
    assert w["card_min_10m"] == w["card_max_10m"] == 2.5
    assert w["device_cards_1h"] == 1


def test_lower_edge_is_exclusive_upper_edge_inclusive(store: WindowStore) -> None:
    p = plan()
    event(store, p, "a", T0, amount=100)
    # Exactly 10 minutes later: the first event sits on the open lower edge (t - d) and is out.
    w = event(store, p, "b", T0 + 10 * MIN, amount=300)
    assert w["card_count_10m"] == 1
    assert w["card_sum_10m"] == 3.0
    assert w["card_count_1h"] == 2
    # One millisecond less than 10 minutes after "a": "a" is in.
    w = event(store, p, "c", T0 + 10 * MIN - 1 + 0, card="c2")
    w = event(store, p, "c3", T0 + 10 * MIN - 1, card="c1", amount=50)
    assert w["card_count_10m"] == 2  # a (T0 > t - d) and c3 itself; b is later than c3 -> not in
    assert w["card_min_10m"] == 0.5
    assert w["card_max_10m"] == 1.0


def test_same_timestamp_events_are_all_in(store: WindowStore) -> None:
    p = plan()
    event(store, p, "a", T0)
    w = event(store, p, "b", T0)
    assert w["card_count_10m"] == 2


def test_retry_does_not_double_count(store: WindowStore) -> None:
    p = plan()
    event(store, p, "a", T0, amount=100)
    fields = {"card_id": "c1", "device_id": "d1", "merchant_id": "m1", "amount_base_minor": 100}
    # The same transaction applied again before its response was recorded
    # (a retry racing the first attempt): windows are unchanged.
    again = store.apply(p, p.bind("a", T0, fields), f"fp-a-{T0}-c1-100")
    assert p.finish(again.raw)["card_count_10m"] == 1
    assert p.finish(again.raw)["card_sum_10m"] == 1.0
    w = event(store, p, "b", T0 + 1)
    assert w["card_count_10m"] == 2


def test_recorded_response_is_replayed_and_conflict_detected(store: WindowStore) -> None:
    p = plan()
    fields = {"card_id": "c1", "device_id": "d1", "merchant_id": "m1", "amount_base_minor": 100}
    first = store.apply(p, p.bind("a", T0, fields), "fp1")
    assert first.replay is None
    answer = recorded_answer("a")
    store.remember("a", "fp1", answer)
    retry = store.apply(p, p.bind("a", T0, fields), "fp1")
    assert retry.replay is not None
    # Redis keeps the JSON, the in-process store the answer itself: the same answer either way.
    got = ScoreResult.from_json(retry.replay) if isinstance(retry.replay, str) else retry.replay
    assert got.to_json() == answer.to_json()
    assert got.features == answer.features and got.reasons == answer.reasons
    with pytest.raises(IdempotencyConflict):
        store.apply(p, p.bind("a", T0, fields), "fp-other")
    # Neither the replay nor the conflict touched the windows.
    assert event(store, p, "b", T0 + 1)["card_count_10m"] == 2


def test_out_of_order_event_reads_its_own_past_and_counts_for_later(store: WindowStore) -> None:
    p = plan()
    event(store, p, "a", T0)
    event(store, p, "c", T0 + 8 * MIN)
    late = event(store, p, "b", T0 + 2 * MIN)  # arrives after c, happened before it
    assert late["card_count_10m"] == 2  # a and b; c is in b's future
    w = event(store, p, "d", T0 + 9 * MIN)
    assert w["card_count_10m"] == 4


def test_distinct_and_composite_entities(store: WindowStore) -> None:
    p = plan()
    event(store, p, "a", T0, card="c1", device="d1", merchant="m1")
    event(store, p, "b", T0 + 1, card="c2", device="d1", merchant="m1")
    event(store, p, "c", T0 + 2, card="c2", device="d1", merchant="m2")
    w = event(store, p, "d", T0 + 3, card="c1", device="d1", merchant="m1")
    assert w["device_cards_1h"] == 2  # c1, c2
    assert w["pair_count_1h"] == 2  # (c1, m1): a and d
    assert w["card_count_1h"] == 2


def test_missing_entity_is_neither_updated_nor_read(store: WindowStore) -> None:
    p = plan()
    w = event(store, p, "a", T0, device="")
    assert w["device_cards_1h"] == 0
    assert w["card_count_10m"] == 1
    w = event(store, p, "b", T0 + 1, device="d9")
    assert w["device_cards_1h"] == 1


def test_state_older_than_retention_is_trimmed(store: WindowStore) -> None:
    p = plan()  # longest window 1h + lateness 5m
    event(store, p, "a", T0)
    event(store, p, "b", T0 + 70 * MIN)  # trims "a" (older than 65 min behind the newest)
    # c is 20 minutes late, beyond the allowed 5: its 1h window (T0 - 10m, T0 + 50m]
    # no longer sees "a" (trimmed), in both stores alike.
    late = event(store, p, "c", T0 + 50 * MIN)
    assert late["card_count_1h"] == 1
    # d is 4 minutes late, within the allowed lateness: exact. (T0 + 6m, T0 + 66m] holds c and d.
    w = event(store, p, "d", T0 + 66 * MIN)
    assert w["card_count_1h"] == 2


def test_events_within_the_allowed_lateness_are_exact(store: WindowStore) -> None:
    p = plan()  # longest window 1h + lateness 5m
    event(store, p, "a", T0)
    event(store, p, "x", T0 + 8 * MIN)
    event(store, p, "b", T0 + 70 * MIN)  # drops "a" (older than T0 + 70m - 65m), keeps "x"
    late = event(store, p, "d", T0 + 66 * MIN)  # 4 minutes late
    assert late["card_count_1h"] == 2  # (T0 + 6m, T0 + 66m]: x and d
    assert late["card_count_10m"] == 1


def test_a_backlog_of_other_entities_does_not_evict_live_state(store: WindowStore) -> None:
    p = plan()
    event(store, p, "x1", T0, card="busy-1")
    for i in range(12):  # other entities move far ahead in event time (a backlog flush)
        event(store, p, f"o{i}", T0 + 3 * 3_600_000 + i, card=f"other-{i}")
    w = event(store, p, "x2", T0 + MIN, card="busy-1")
    assert w["card_count_10m"] == 2


def test_value_series_keep_at_most_the_cap(store: WindowStore) -> None:
    p = WindowPlan(
        [
            WindowSpec("card_count_1h", ("card_id",), Aggregate.COUNT, 60 * MIN),
            WindowSpec("card_sum_1h", ("card_id",), Aggregate.SUM, 60 * MIN, "amount"),
        ],
        allowed_lateness_ms=5 * MIN,
        amount_scale=0.01,
        max_events_per_series=3,
    )
    for i in range(5):
        w = event(store, p, f"t{i}", T0 + i * MIN, amount=100)
    assert w["card_count_1h"] == 5  # counts are not walked, so not capped
    assert w["card_sum_1h"] == 3.0  # the sum walks the 3 newest events only


def test_distinct_counts_follow_the_cap_with_ties_at_its_edge(store: WindowStore) -> None:
    """Capped distinct: a value counts while one of its events is kept, ties at one time included.

    (Redis reads distinct counts from an index of each value's newest time; the
    cap drops the oldest events by time, then id, and the index must follow.)
    """
    p = WindowPlan(
        [WindowSpec("device_cards_1h", ("device_id",), Aggregate.DISTINCT, 60 * MIN, "card_id")],
        allowed_lateness_ms=5 * MIN,
        amount_scale=0.01,
        max_events_per_series=3,
    )
    steps = [  # id, minute, card, distinct cards among the 3 newest events
        ("e1", 0, "A", 1),
        ("e2", 1, "B", 2),
        ("e3", 1, "B", 2),  # a tie with e2 at minute 1
        ("e4", 2, "C", 2),  # drops e1: A has no event left
        ("e5", 3, "D", 3),  # drops e2: B still has e3 at the same minute
        ("e6", 4, "E", 3),  # drops e3: B is gone
        ("e7", 4, "", 2),  # drops e4 (C); a missing value is kept as an event, never counted
    ]
    for txid, minute, card, expected in steps:
        w = event(store, p, txid, T0 + minute * MIN, card=card)
        assert w["device_cards_1h"] == expected, txid
    # The analysts lower the cap to 1: three events go at once (D, E and the missing value).
    lower = WindowPlan(p.specs, allowed_lateness_ms=5 * MIN, amount_scale=0.01, max_events_per_series=1)
    assert event(store, lower, "e8", T0 + 5 * MIN, card="F")["device_cards_1h"] == 1


TIME_PLAN = WindowPlan(
    [
        WindowSpec("card_first_seen_10m", ("card_id",), Aggregate.FIRST_SEEN, 10 * MIN),
        WindowSpec("card_since_previous_10m", ("card_id",), Aggregate.SINCE_PREVIOUS, 10 * MIN),
        WindowSpec("pair_is_new_10m", ("card_id", "device_id"), Aggregate.IS_NEW, 10 * MIN),
        WindowSpec("card_countries_1h", ("card_id",), Aggregate.DISTINCT, 60 * MIN, "ip_country"),
        WindowSpec("card_shops_1h", ("card_id",), Aggregate.DISTINCT, 60 * MIN, "attributes.shop"),
        WindowSpec("card_first_seen_2d", ("card_id",), Aggregate.FIRST_SEEN, 2 * 24 * 60 * MIN),
    ],
    allowed_lateness_ms=5 * MIN,
    amount_scale=0.01,
    max_events_per_series=4,
)


def timed(
    store: WindowStore, txid: str, t: int, *, card: str = "c1", device: str = "d1", country: str = "", shop: str = ""
) -> dict[str, float]:
    fields = {
        "card_id": card,
        "device_id": device,
        "amount_base_minor": 100,
        "ip_country": country,
        "attributes": {"shop": shop} if shop else {},
    }
    outcome = store.apply(TIME_PLAN, TIME_PLAN.bind(txid, t, fields), f"fp-{txid}-{t}-{card}-{device}")
    assert outcome.replay is None
    return TIME_PLAN.finish(outcome.raw)


def test_first_seen_since_previous_and_is_new_at_their_edges(store: WindowStore) -> None:
    w = timed(store, "a", T0)  # the first event: its own age is 0, nothing before it
    assert (w["card_first_seen_10m"], w["pair_is_new_10m"]) == (0.0, 1.0)
    assert math.isnan(w["card_since_previous_10m"])
    w = timed(store, "b", T0 + 30_000)  # 30 s later, the same card and device
    assert (w["card_first_seen_10m"], w["card_since_previous_10m"], w["pair_is_new_10m"]) == (30.0, 30.0, 0.0)
    w = timed(store, "c", T0 + 30_000, device="d2")  # the same millisecond: "b" is a previous event
    assert (w["card_since_previous_10m"], w["pair_is_new_10m"]) == (0.0, 1.0)  # a new device for the card
    # Exactly 10 minutes after "a": "a" is on the open lower edge, out; "b" and "c" are in.
    w = timed(store, "d", T0 + 10 * MIN)
    assert (w["card_first_seen_10m"], w["card_since_previous_10m"]) == (570.0, 570.0)
    w = timed(store, "e", T0 + 10 * MIN - 1, card="c2")  # another card: its own history only
    assert w["card_first_seen_10m"] == 0.0 and math.isnan(w["card_since_previous_10m"])


def test_time_windows_of_a_retry_a_late_event_and_a_missing_entity(store: WindowStore) -> None:
    timed(store, "a", T0)
    timed(store, "b", T0 + 2 * MIN)
    w = timed(store, "b", T0 + 2 * MIN)  # a retry: it is not its own previous event
    assert (w["card_since_previous_10m"], w["pair_is_new_10m"]) == (120.0, 0.0)
    w = timed(store, "late", T0 + MIN)  # late: reads its own past ("b" is after it)
    assert (w["card_first_seen_10m"], w["card_since_previous_10m"]) == (60.0, 60.0)
    w = timed(store, "c", T0 + 3 * MIN)  # and counts for the events after it
    assert w["card_since_previous_10m"] == 60.0
    w = timed(store, "nodev", T0 + 4 * MIN, device="")  # no device: the pair is missing, so not new
    assert w["pair_is_new_10m"] == 0.0 and w["card_since_previous_10m"] == 60.0


def test_time_windows_longer_than_a_day_keep_at_most_the_cap(store: WindowStore) -> None:
    for i in range(6):
        w = timed(store, f"t{i}", T0 + i * MIN)
    # Up to a day, a time window reads the count series: exact, not capped.
    assert (w["card_first_seen_10m"], w["card_since_previous_10m"]) == (300.0, 60.0)
    # Longer, its own time series keeps the 4 newest events: the oldest kept is 3 minutes old, not 5.
    assert w["card_first_seen_2d"] == 180.0


def test_distinct_counts_of_an_enriched_field_and_an_attribute(store: WindowStore) -> None:
    counts = []
    for i, (country, shop) in enumerate([("DE", "s1"), ("", ""), ("FR", "s1"), ("DE", "s2"), ("BR", "")]):
        w = timed(store, f"t{i}", T0 + i * MIN, country=country, shop=shop)
        counts.append((w["card_countries_1h"], w["card_shops_1h"]))
    assert counts == [(1, 1), (1, 1), (2, 1), (2, 2), (3, 2)]  # '' and an absent attribute are not values


def test_the_distinct_index_drops_values_with_the_events(redis_url: tuple[str, str]) -> None:
    """Redis: the index holds only values with a kept event (it never grows past the events)."""
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-index", budget_s=2.0)
    p = plan()
    try:
        for i, card in enumerate(["c1", "c2", "c3"]):
            event(store, p, f"t{i}", T0 + i * MIN, card=card)
        index = f"{{{store.prefix}:device_id:d1}}:d:card_id"
        assert store._client.zrange(index, 0, -1) == [b"c1", b"c2", b"c3"]
        # Past the retention (1 hour + 5 minutes of lateness): the old events and their values go.
        w = event(store, p, "t9", T0 + 2 * 60 * MIN, card="c4")
        assert w["device_cards_1h"] == 1
        assert store._client.zrange(index, 0, -1) == [b"c4"]
        # It expires with the events.
        events_ttl = store._client.pttl(f"{{{store.prefix}:device_id:d1}}:z:card_id")
        assert events_ttl > 0 and abs(store._client.pttl(index) - events_ttl) < 1000
    finally:
        store.close()


def test_concurrent_first_calls_on_a_new_plan(redis_url: tuple[str, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, prefix = redis_url
    for attempt in range(5):
        store = RedisStore(url, prefix=f"{prefix}-{attempt}", budget_s=2.0)
        p = plan()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i, s=store, q=p: event(s, q, f"t{i}", T0 + i, card=f"c{i}"), range(16)))
        assert all(r["card_count_10m"] == 1 for r in results)
        store.close()


def test_redis_keys_expire_and_share_a_slot(redis_url: tuple[str, str]) -> None:
    import redis as redis_lib
    from redis.crc import key_slot

    url, prefix = redis_url
    store = RedisStore(url, prefix=prefix, budget_s=2.0)
    p = plan()
    import time

    t = int(time.time() * 1000)
    event(store, p, "a", t)  # type: ignore[arg-type]
    client = redis_lib.Redis.from_url(url)
    keys = sorted({k.decode() for k in client.scan_iter(match=f"*{prefix}*")})  # SCAN may return a key twice
    card_keys = [k for k in keys if k.startswith(f"{{{prefix}:card_id:c1}}")]
    assert len(card_keys) == 2  # count set, amount set (amounts in its members: no hash since issue 23)
    slots = {key_slot(k.encode()) for k in card_keys}
    assert len(slots) == 1
    # Keys outlive their retention (longest window of the series + 5m lateness) by the
    # longest accepted event delay (1 day + 5 min by default): a delayed event still
    # finds its history.
    delay = 86_400_000 + 300_000
    expected = {
        f"{{{prefix}:card_id:c1}}:n": 65 * MIN,  # counts over 10m and 1h
        f"{{{prefix}:card_id:c1}}:z:amount_base_minor": 15 * MIN,  # amounts over 10m
    }
    for k, retention in expected.items():
        assert retention + delay - 5_000 < client.pttl(k) <= retention + delay, k
    client.close()
    store.close()


def test_memory_store_forgets_idle_series_like_redis_key_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.windows.memory as memory

    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    store = MemoryStore(max_event_delay_s=60.0)
    p = plan()  # card count series: retention 65 min; TTL = 65 min + 60 s
    event(store, p, "a", T0, card="idle")
    event(store, p, "b", T0, card="busy")
    clock[0] += 65 * 60 + 59  # just before the TTL: both still there
    assert event(store, p, "c", T0 + 1, card="busy")["card_count_1h"] == 2
    assert event(store, p, "d", T0 + 1, card="idle")["card_count_1h"] == 2
    clock[0] += 65 * 60 + 61  # "idle" and "busy" were both last written at the previous tick
    assert event(store, p, "e", T0 + 2, card="idle")["card_count_1h"] == 1  # expired, as its Redis key would


def test_a_packed_answer_unpacks_to_the_same_answer() -> None:
    """The in-process store keeps answers packed (feature values in a float array): exact, NaN included."""
    answer = ScoreResult(
        transaction_id="t-1",
        decision=Action.DENY,
        score=0.9712345678901234,
        reasons=(
            Reason(
                "MODEL_HIGH_RISK",
                ReasonSource.MODEL,
                "score above the deny threshold",
                Action.DENY,
                "",
                (Contribution("amount", 1234.5, 0.61), Contribution("card_count_1d", 9.0, 0.2)),
            ),
        ),
        ruleset_version="2026.12.06-1",
        model_version="handbook-gbm-0cf15f867b",
        degraded=False,
        features={
            "amount": 1234.5,
            "amount_to_card_usual": float("nan"),
            "tiny": 5e-324,
            "big": 1.7976931348623157e308,
        },
        elapsed_us=88,
        shadow=(Reason("IP_BURST", ReasonSource.RULE, "burst", Action.REVIEW, "ip_burst"),),
        challenger=ChallengerResult("challenger-1", 0.5, Action.ALLOW, False, "shadow"),
    )
    again = answer.packed().unpacked()
    assert again.to_json() == answer.to_json()
    assert list(again.features) == list(answer.features)  # the order too
    assert math.isnan(again.features["amount_to_card_usual"])
    assert (again.reasons, again.shadow, again.challenger) == (answer.reasons, answer.shadow, answer.challenger)
    # Every answer with the same feature list shares one tuple of names.
    other = ScoreResult("t-2", Action.ALLOW, 0.1, (), "v", "m", False, dict(answer.features))
    assert other.packed()._parts[7] is answer.packed()._parts[7]


def test_a_lost_script_cache_is_filled_again(redis_url: tuple[str, str]) -> None:
    """Redis restarted or SCRIPT FLUSH: the next call sends the script itself (EVAL), then EVALSHA works again."""
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-flush", budget_s=2.0)
    admin = redis.Redis.from_url(url)
    p = plan()
    try:
        assert event(store, p, "a", T0)["card_count_10m"] == 1
        admin.script_flush()
        assert event(store, p, "b", T0 + 1)["card_count_10m"] == 2
        assert admin.script_exists(store._source(p).sha) == [True]
    finally:
        admin.close()
        store.close()


def test_a_script_error_is_unavailable_and_leaves_the_connection_usable(redis_url: tuple[str, str]) -> None:
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-wrongtype", budget_s=2.0)
    admin = redis.Redis.from_url(url)
    p = plan()
    try:
        admin.set(f"{{{store.prefix}:card_id:broken}}:n", "not a sorted set")  # a manual edit gone wrong
        with pytest.raises(StoreUnavailable) as err:
            event(store, p, "a", T0, card="broken")
        assert err.value.kind == "other" and "WRONGTYPE" in str(err.value)
        assert event(store, p, "b", T0, card="fine")["card_count_10m"] == 1  # the next call is answered
    finally:
        admin.close()
        store.close()
