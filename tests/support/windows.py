"""Window plans, events and recorded answers shared by the window, store and replay tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from engine.enrich import FIELDS
from engine.rules.expr import compile_condition
from engine.transaction import Action, Reason, ReasonSource, ScoreResult
from engine.windows.spec import Aggregate, WindowPlan, WindowSpec
from engine.windows.store import WindowStore

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def plan() -> WindowPlan:
    return WindowPlan(
        [
            WindowSpec("card_count_10m", ("card_id",), Aggregate.COUNT, 10 * MIN),
            WindowSpec("card_sum_10m", ("card_id",), Aggregate.SUM, 10 * MIN, "amount"),
            WindowSpec("card_avg_10m", ("card_id",), Aggregate.AVG, 10 * MIN, "amount"),
            WindowSpec("card_min_10m", ("card_id",), Aggregate.MIN, 10 * MIN, "amount"),
            WindowSpec("card_max_10m", ("card_id",), Aggregate.MAX, 10 * MIN, "amount"),
            WindowSpec("card_count_1h", ("card_id",), Aggregate.COUNT, 60 * MIN),
            WindowSpec("device_cards_1h", ("device_id",), Aggregate.DISTINCT, 60 * MIN, "card_id"),
            WindowSpec("pair_count_1h", ("card_id", "merchant_id"), Aggregate.COUNT, 60 * MIN),
        ],
        allowed_lateness_ms=5 * MIN,
        amount_scale=0.01,
    )


def event(
    store: WindowStore,
    p: WindowPlan,
    txid: str,
    t: int,
    *,
    card: str = "c1",
    device: str = "d1",
    merchant: str = "m1",
    amount: int = 100,
) -> dict[str, float]:
    fields = {"card_id": card, "device_id": device, "merchant_id": merchant, "amount_base_minor": amount}
    bound = p.bind(txid, t, fields)
    outcome = store.apply(p, bound, f"fp-{txid}-{t}-{card}-{amount}")
    assert outcome.replay is None
    return p.finish(outcome.raw)


def recorded_answer(txid: str) -> ScoreResult:
    """An answer to keep for retries, with a reason and features (and no NaN, so `==` compares it)."""
    return ScoreResult(
        transaction_id=txid,
        decision=Action.REVIEW,
        score=0.8125,
        reasons=(Reason("CARD_TESTING", ReasonSource.RULE, "many small payments", Action.REVIEW, "card_testing"),),
        ruleset_version="v1",
        model_version="m1",
        degraded=False,
        features={"amount": 12.5, "card_count_10m": 4.0, "score": 0.8125},
        elapsed_us=321,
    )


#: The plan both stores replay in the parity tests: every aggregate, short windows, a small cap.
PLAN = WindowPlan(
    [
        WindowSpec("card_count_5m", ("card_id",), Aggregate.COUNT, 5 * MIN),
        WindowSpec("card_count_1h", ("card_id",), Aggregate.COUNT, 60 * MIN),
        WindowSpec("card_sum_1h", ("card_id",), Aggregate.SUM, 60 * MIN, "amount"),
        WindowSpec("card_avg_5m", ("card_id",), Aggregate.AVG, 5 * MIN, "amount"),
        WindowSpec("card_min_1h", ("card_id",), Aggregate.MIN, 60 * MIN, "amount"),
        WindowSpec("card_max_5m", ("card_id",), Aggregate.MAX, 5 * MIN, "amount"),
        WindowSpec("device_cards_1h", ("device_id",), Aggregate.DISTINCT, 60 * MIN, "card_id"),
        WindowSpec("card_devices_5m", ("card_id",), Aggregate.DISTINCT, 5 * MIN, "device_id"),
        WindowSpec("card_devices_1h", ("card_id",), Aggregate.DISTINCT, 60 * MIN, "device_id"),
        WindowSpec("pair_count_5m", ("device_id", "card_id"), Aggregate.COUNT, 5 * MIN),
        WindowSpec("card_first_seen_1h", ("card_id",), Aggregate.FIRST_SEEN, 60 * MIN),
        WindowSpec("card_since_previous_5m", ("card_id",), Aggregate.SINCE_PREVIOUS, 5 * MIN),
        WindowSpec("card_since_previous_1h", ("card_id",), Aggregate.SINCE_PREVIOUS, 60 * MIN),
        WindowSpec("pair_is_new_5m", ("device_id", "card_id"), Aggregate.IS_NEW, 5 * MIN),
        WindowSpec("card_countries_1h", ("card_id",), Aggregate.DISTINCT, 60 * MIN, "ip_country"),
        WindowSpec("device_shops_5m", ("device_id",), Aggregate.DISTINCT, 5 * MIN, "attributes.shop"),
    ],
    allowed_lateness_ms=2 * MIN,
    amount_scale=0.01,
    max_events_per_series=7,  # small, so the cap on value (and time) series is exercised too
)


def event_fields(card: str, device: str, amount: int) -> dict[str, Any]:
    """An event's fields for the window tests: its IP country and `shop` attribute follow from
    its amount, so that distinct counts over them see repeats, new values and none ('', absent)."""
    shop = ["", "s1", "s2"][amount // 4 % 3]
    return {
        "card_id": card,
        "device_id": device,
        "amount_base_minor": amount,
        "ip_country": ["", "DE", "FR", "BR"][amount % 4],
        "attributes": {"shop": shop} if shop else {},
    }


def compile_filter(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A window filter compiled as the rule loader compiles it (over the enriched fields)."""
    return compile_condition(text, {name: kind for name, (kind, _) in FIELDS.items()}, "window filter").fn


def compiled_plan(specs: Sequence[WindowSpec], *args: Any, **kwargs: Any) -> WindowPlan:
    """A WindowPlan of specs written with filter text alone, their filters compiled as the loader does."""
    ready = [replace(s, filter_fn=compile_filter(s.filter)) if s.filter and s.filter_fn is None else s for s in specs]
    return WindowPlan(ready, *args, **kwargs)
