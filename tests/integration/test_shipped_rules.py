"""Each shipped rule fires for the transaction it is written for, and not for a look-alike benign one.

Runs over gRPC against a live server with a real Redis, so the windows the
rules read are the real ones.
"""

from __future__ import annotations

import uuid

import pytest

from engine.rules import load_ruleset
from engine.service.pb import risk_pb2, risk_pb2_grpc
from tests.support import RULES
from tests.support.requests import now_ms, request

DENY, REVIEW = risk_pb2.DECISION_DENY, risk_pb2.DECISION_REVIEW


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def codes(resp: risk_pb2.ScoreResponse) -> set[str]:
    return {r.code for r in resp.reasons}


def fired(resp: risk_pb2.ScoreResponse, rule_id: str) -> risk_pb2.Reason | None:
    return next((r for r in resp.reasons if r.rule_id == rule_id), None)


def in_shadow(resp: risk_pb2.ScoreResponse, rule_id: str) -> risk_pb2.Reason | None:
    return next((r for r in resp.shadow_reasons if r.rule_id == rule_id), None)


def send(stub: risk_pb2_grpc.RiskEngineStub, **kw: object) -> risk_pb2.ScoreResponse:
    return stub.Score(request(**kw), timeout=5)  # type: ignore[arg-type]


def test_every_shipped_rule_has_a_test_here() -> None:
    tested = {
        "card_testing_burst",
        "device_farm",
        "device_card_burst",
        "ip_many_cards",
        "high_risk_country_large_amount",
        "very_large_amount",
        "new_device_spending_spike",
        "private_ip_on_web",
        "blocklisted_card_or_device",
        "blocked_ip_range",
        "ip_country_mismatch_large_amount",
        "high_risk_industry_amount",
        "ip_burst",
        "unknown_device_at_night",
        "card_ip_country_hopping",
        "new_device_for_known_user",
        "card_repeat_within_30s",
    }
    assert {r.id for r in load_ruleset(RULES).rules} == tested


def test_card_testing_burst(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    card, t = uid("card"), now_ms() - 300_000
    for k in range(4):
        resp = send(stub, card_id=card, amount_minor=199, event_time_ms=t + k * 30_000, device_id=uid("d"))
        assert fired(resp, "card_testing_burst") is None
    resp = send(stub, card_id=card, amount_minor=199, event_time_ms=t + 120_000, device_id=uid("d"))
    reason = fired(resp, "card_testing_burst")
    assert reason is not None and reason.code == "CARD_TESTING" and reason.source == risk_pb2.REASON_SOURCE_RULE
    assert resp.decision == DENY
    assert resp.features["card_count_10m"] == 5


def test_card_testing_burst_not_for_normal_amounts(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    card, t = uid("card"), now_ms() - 300_000
    for k in range(5):
        resp = send(stub, card_id=card, amount_minor=5_000, event_time_ms=t + k * 30_000, device_id=uid("d"))
    assert resp.features["card_count_10m"] == 5
    assert "CARD_TESTING" not in codes(resp)


@pytest.mark.parametrize(("cards", "fires"), [(4, True), (3, False)])
def test_device_farm(stub: risk_pb2_grpc.RiskEngineStub, cards: int, fires: bool) -> None:
    device, t = uid("dev"), now_ms() - 600_000
    for k in range(cards):
        resp = send(stub, device_id=device, card_id=uid("c"), user_id=uid("u"), event_time_ms=t + k * 60_000)
    assert resp.features["device_distinct_cards_1d"] == cards
    assert (fired(resp, "device_farm") is not None) is fires
    if fires:
        assert resp.decision == DENY and "DEVICE_MANY_CARDS" in codes(resp)


@pytest.mark.parametrize(("cards", "fires"), [(4, True), (3, False)])
def test_device_card_burst(stub: risk_pb2_grpc.RiskEngineStub, cards: int, fires: bool) -> None:
    device, t = uid("dev"), now_ms() - 600_000
    for k in range(cards):
        resp = send(stub, device_id=device, card_id=uid("c"), user_id=uid("u"), event_time_ms=t + k * 60_000)
    assert resp.features["device_distinct_cards_1h"] == cards
    assert (fired(resp, "device_card_burst") is not None) is fires
    if fires:
        assert resp.decision == DENY and "DEVICE_CARD_BURST" in codes(resp)


@pytest.mark.parametrize(("cards", "fires"), [(6, True), (5, False)])
def test_ip_many_cards(stub: risk_pb2_grpc.RiskEngineStub, cards: int, fires: bool) -> None:
    ip, t = f"203.0.113.{uuid.uuid4().int % 250 + 1}", now_ms() - 600_000
    for k in range(cards):
        resp = send(stub, ip=ip, device_id=uid("d"), card_id=uid("c"), user_id=uid("u"), event_time_ms=t + k * 60_000)
    assert resp.features["ip_distinct_cards_1h"] == cards
    assert (fired(resp, "ip_many_cards") is not None) is fires
    if fires:
        assert resp.decision in (REVIEW, DENY)


@pytest.mark.parametrize(
    ("country", "amount_minor", "fires"),
    [("KP", 10_000, True), ("IR", 25_000, True), ("KP", 9_999, False), ("DE", 50_000, False)],
)
def test_high_risk_country_large_amount(
    stub: risk_pb2_grpc.RiskEngineStub, country: str, amount_minor: int, fires: bool
) -> None:
    resp = send(stub, country=country, amount_minor=amount_minor, card_id=uid("c"))
    assert (fired(resp, "high_risk_country_large_amount") is not None) is fires
    if fires:
        assert resp.decision in (REVIEW, DENY)


@pytest.mark.parametrize(
    ("amount_minor", "currency", "fires"),
    [(1_000_000, "EUR", True), (999_999, "EUR", False), (1_100_000, "USD", True), (1_000_000, "USD", False)],
)
def test_very_large_amount_in_base_currency(
    stub: risk_pb2_grpc.RiskEngineStub, amount_minor: int, currency: str, fires: bool
) -> None:
    resp = send(stub, amount_minor=amount_minor, currency=currency, card_id=uid("c"))
    assert (fired(resp, "very_large_amount") is not None) is fires


@pytest.mark.parametrize(("devices", "fires"), [(3, True), (1, False)])
def test_new_device_spending_spike(stub: risk_pb2_grpc.RiskEngineStub, devices: int, fires: bool) -> None:
    user, card, t = uid("u"), uid("c"), now_ms() - 3_600_000
    device_names = [uid("d") for _ in range(devices)]
    earlier = device_names[:-1] or device_names
    for k in range(5):  # usual spending of 20 EUR, on every device but the last
        send(
            stub,
            user_id=user,
            card_id=card,
            device_id=earlier[k * len(earlier) // 5],
            amount_minor=2_000,
            event_time_ms=t + k * 60_000,
        )
    resp = send(
        stub, user_id=user, card_id=card, device_id=device_names[-1], amount_minor=200_000, event_time_ms=t + 600_000
    )
    assert resp.features["user_distinct_devices_1d"] == devices
    assert (fired(resp, "new_device_spending_spike") is not None) is fires
    if fires:
        assert "ACCOUNT_TAKEOVER_SUSPECTED" in codes(resp) and resp.decision in (REVIEW, DENY)


@pytest.mark.parametrize(
    ("channel", "ip", "fires"),
    [
        (risk_pb2.CHANNEL_WEB, "10.1.2.3", True),
        (risk_pb2.CHANNEL_WEB, "::1", True),
        (risk_pb2.CHANNEL_APP, "10.1.2.3", False),
        (risk_pb2.CHANNEL_WEB, "81.2.69.160", False),
    ],
)
def test_private_ip_on_web(stub: risk_pb2_grpc.RiskEngineStub, channel: int, ip: str, fires: bool) -> None:
    resp = send(stub, channel=channel, ip=ip, card_id=uid("c"))
    assert (fired(resp, "private_ip_on_web") is not None) is fires


@pytest.mark.parametrize(
    ("card", "device", "fires"),
    [("card-stolen-0001", "d-ok", True), ("c-ok", "dev-fraud-0001", True), ("c-ok", "d-ok", False)],
)
def test_blocklisted_card_or_device(stub: risk_pb2_grpc.RiskEngineStub, card: str, device: str, fires: bool) -> None:
    resp = send(stub, card_id=card if card != "c-ok" else uid("c"), device_id=device)
    assert (fired(resp, "blocklisted_card_or_device") is not None) is fires
    assert (resp.decision == DENY) is fires


@pytest.mark.parametrize(("ip", "fires"), [("203.0.113.9", True), ("2001:db8:bad:1::2", True), ("203.0.114.9", False)])
def test_blocked_ip_range(stub: risk_pb2_grpc.RiskEngineStub, ip: str, fires: bool) -> None:
    resp = send(stub, ip=ip, card_id=uid("c"))
    assert (fired(resp, "blocked_ip_range") is not None) is fires


@pytest.mark.parametrize(
    ("ip", "country", "amount_minor", "fires"),
    [
        ("8.8.8.8", "DE", 30_000, True),  # a US address (embedded database) with a German card
        ("8.8.8.8", "US", 30_000, False),
        ("8.8.8.8", "DE", 29_999, False),
        ("10.0.0.1", "DE", 30_000, False),  # a private address has no country: no mismatch
    ],
)
def test_ip_country_mismatch_large_amount(
    stub: risk_pb2_grpc.RiskEngineStub, ip: str, country: str, amount_minor: int, fires: bool
) -> None:
    resp = send(stub, ip=ip, country=country, amount_minor=amount_minor, card_id=uid("c"))
    assert (fired(resp, "ip_country_mismatch_large_amount") is not None) is fires


@pytest.mark.parametrize(("mcc", "amount_minor", "fires"), [("7995", 50_000, True), ("5411", 50_000, False)])
def test_high_risk_industry_amount(
    stub: risk_pb2_grpc.RiskEngineStub, mcc: str, amount_minor: int, fires: bool
) -> None:
    resp = send(stub, merchant_category=mcc, amount_minor=amount_minor, card_id=uid("c"))
    assert (fired(resp, "high_risk_industry_amount") is not None) is fires


def test_ip_burst_acts_only_on_its_rollout_share(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    from engine.rollout import rollout_bucket

    high, low = divmod(uuid.uuid4().int % 60_000, 250)
    ip, t = f"5.9.{high}.{low}", now_ms() - 120_000

    def tid_in_share(want: bool) -> str:  # ids picked so that both parts of the rollout are seen
        while True:
            tid = uid("burst")
            if (rollout_bucket("ip_burst", tid) < 2500) is want:
                return tid

    acted = shadowed = 0
    for k in range(40):
        tid = tid_in_share(k % 2 == 0)
        resp = send(stub, transaction_id=tid, ip=ip, card_id=uid("c"), event_time_ms=t + k * 1000)
        count = resp.features["ip_count_10m"]
        assert count == k + 1
        in_share = rollout_bucket("ip_burst", tid) < 2500
        in_reasons = fired(resp, "ip_burst") is not None
        in_shadow = any(r.rule_id == "ip_burst" for r in resp.shadow_reasons)
        if count < 20:
            assert not in_reasons and not in_shadow
        else:
            assert in_reasons is in_share and in_shadow is not in_share
            acted += in_reasons
            shadowed += in_shadow
    assert (acted, shadowed) == (10, 11)  # k = 19..39: even k in the share


def test_unknown_device_at_night_is_shadow_only(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    night = now - dt.timedelta(minutes=1) if 1 <= now.hour <= 6 else now.replace(hour=3, minute=0, second=0)
    if night > now:
        night -= dt.timedelta(days=1)
    resp = send(
        stub,
        channel=risk_pb2.CHANNEL_WEB,
        device_id="",
        amount_minor=20_000,
        event_time_ms=int(night.timestamp() * 1000),
        card_id=uid("c"),
    )
    assert fired(resp, "unknown_device_at_night") is None
    (shadow,) = resp.shadow_reasons
    assert shadow.rule_id == "unknown_device_at_night" and shadow.code == "NIGHT_NO_DEVICE"
    assert shadow.action == REVIEW


# --- the rules of issue 20: windows over any field, first seen, time since (shipped in shadow) -----------


def test_card_ip_country_hopping(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    """Three IP countries on one card within a day: a distinct count over the enriched `ip_country`."""
    card, t = uid("card"), now_ms() - 3_600_000
    # Germany, the United States, Germany again, then China (the embedded geo database).
    for k, ip in enumerate(["85.214.132.117", "8.8.8.8", "85.214.132.118"]):
        resp = send(stub, card_id=card, device_id=uid("d"), user_id=uid("u"), ip=ip, event_time_ms=t + k * 600_000)
        assert in_shadow(resp, "card_ip_country_hopping") is None
    assert resp.features["card_ip_countries_1d"] == 2
    resp = send(stub, card_id=card, device_id=uid("d"), user_id=uid("u"), ip="223.5.5.5", event_time_ms=t + 2_400_000)
    assert resp.features["card_ip_countries_1d"] == 3 and resp.enrichment["ip_country"] == "CN"
    reason = in_shadow(resp, "card_ip_country_hopping")
    assert reason is not None and reason.code == "IP_COUNTRY_HOPPING" and reason.action == REVIEW
    assert reason.message == "Payments on this card from 3 IP countries in 24 hours, this one from CN."
    assert fired(resp, "card_ip_country_hopping") is None  # in shadow: never part of the decision


def test_new_device_for_known_user(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    """A device new to a user known for 13 hours (a pair entity's is_new, the user's first_seen)."""
    user, card, usual, t = uid("u"), uid("c"), uid("d"), now_ms()
    first = send(
        stub, user_id=user, card_id=card, device_id=usual, amount_minor=3_000, event_time_ms=t - 13 * 3_600_000
    )
    assert first.features["user_device_is_new_90d"] == 1 and first.features["user_first_seen_90d"] == 0
    assert in_shadow(first, "new_device_for_known_user") is None  # a new user: every device is new
    same = send(stub, user_id=user, card_id=card, device_id=usual, amount_minor=20_000, event_time_ms=t - 60_000)
    assert same.features["user_device_is_new_90d"] == 0
    assert in_shadow(same, "new_device_for_known_user") is None
    resp = send(stub, user_id=user, card_id=card, device_id=uid("d"), amount_minor=20_000, event_time_ms=t)
    assert resp.features["user_device_is_new_90d"] == 1
    assert resp.features["user_first_seen_90d"] == 13 * 3600
    reason = in_shadow(resp, "new_device_for_known_user")
    assert reason is not None and reason.code == "NEW_DEVICE_FOR_USER"
    assert reason.message == "A device new to this user, who was first seen 13 h ago, paying 200.00 EUR."
    small = send(stub, user_id=user, card_id=card, device_id=uid("d"), amount_minor=14_999, event_time_ms=t + 1)
    assert small.features["user_device_is_new_90d"] == 1 and in_shadow(small, "new_device_for_known_user") is None


@pytest.mark.parametrize(
    ("gap_ms", "fires", "shown"), [(12_000, True, "12 s"), (29_999, True, "29.9 s"), (30_000, False, "")]
)
def test_card_repeat_within_30s(stub: risk_pb2_grpc.RiskEngineStub, gap_ms: int, fires: bool, shown: str) -> None:
    """A second payment on one card within 30 seconds of the previous one (since_previous)."""
    card, t = uid("card"), now_ms() - 600_000
    first = send(stub, card_id=card, device_id=uid("d"), event_time_ms=t)
    assert "card_since_previous_1h" not in first.features  # no previous payment: missing, not 0
    assert in_shadow(first, "card_repeat_within_30s") is None
    resp = send(stub, card_id=card, device_id=uid("d"), event_time_ms=t + gap_ms)
    assert resp.features["card_since_previous_1h"] == gap_ms / 1000
    reason = in_shadow(resp, "card_repeat_within_30s")
    assert (reason is not None) is fires
    if reason is not None:
        assert reason.code == "CARD_REPEAT_30S"
        assert reason.message == f"A second payment on this card {shown} after the previous one."
