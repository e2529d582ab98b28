"""The Score rpc end to end: real server, real socket, real Redis, a model trained by the project."""

from __future__ import annotations

import math

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running
from tests.support.requests import now_ms, request


def call(stub: risk_pb2_grpc.RiskEngineStub, req: risk_pb2.ScoreRequest) -> risk_pb2.ScoreResponse:
    return stub.Score(req, timeout=5)


def test_benign_transaction_is_allowed_with_versions_and_features(
    stub: risk_pb2_grpc.RiskEngineStub, server: Running
) -> None:
    resp = call(stub, request(card_id="c-benign", device_id="d-benign", user_id="u-benign", amount_minor=1999))
    assert resp.decision == risk_pb2.DECISION_ALLOW
    assert resp.reasons == []
    assert 0.0 <= resp.score <= 1.0
    assert resp.ruleset_version == "2026.12.06-2"
    assert resp.ruleset_digest == server.pipeline.snapshot.ruleset.digest and len(resp.ruleset_digest) == 16
    # What enrichment found, beside the numeric features: the default request's IP is in Germany.
    assert dict(resp.enrichment) == {"ip_country": "DE", "amount_base": "19.99", "base_currency": "EUR"}
    assert resp.model_version == server.pipeline.snapshot.model.version  # type: ignore[union-attr]
    assert resp.model_version.startswith("test-gbm-")
    assert not resp.degraded
    assert resp.features["amount"] == pytest.approx(19.99)
    assert resp.features["card_count_10m"] == 1
    assert resp.features["score"] == pytest.approx(resp.score)
    assert resp.elapsed_us > 0


def test_currency_is_converted_to_the_base_currency(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    jpy = call(stub, request(card_id="c-jpy", currency="JPY", amount_minor=10_000))  # JPY has no minor unit
    assert jpy.features["amount"] == pytest.approx(61.0)  # 10,000 JPY * 0.0061
    kwd = call(stub, request(card_id="c-kwd", currency="KWD", amount_minor=1_500))  # 1.500 KWD
    assert kwd.features["amount"] == pytest.approx(4.5)


def test_retry_returns_identical_response_and_counts_once(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    t = now_ms()
    first = call(stub, request(transaction_id="retry-1", card_id="c-retry", event_time_ms=t))
    response, rpc = stub.Score.with_call(
        request(transaction_id="retry-1", card_id="c-retry", event_time_ms=t), timeout=5
    )
    assert response == first  # byte-for-byte the same message
    assert response.ruleset_digest and response.enrichment["amount_base"] == "25.00"  # kept in the record too
    assert ("risk-replayed", "true") in rpc.initial_metadata()
    nxt = call(stub, request(transaction_id="retry-2", card_id="c-retry", event_time_ms=t + 1))
    assert nxt.features["card_count_10m"] == 2  # retry-1 counted once, plus retry-2


def test_same_id_with_other_content_is_already_exists(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    t = now_ms()
    call(stub, request(transaction_id="dup-1", card_id="c-dup", amount_minor=1000, event_time_ms=t))
    with pytest.raises(grpc.RpcError) as err:
        call(stub, request(transaction_id="dup-1", card_id="c-dup", amount_minor=9999, event_time_ms=t))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "transaction.transaction_id" in err.value.details()
    nxt = call(stub, request(transaction_id="dup-2", card_id="c-dup", event_time_ms=t + 1))
    assert nxt.features["card_count_10m"] == 2  # the refused call changed no window


MALFORMED = [
    ("transaction.transaction_id", dict(transaction_id=" ")),
    ("transaction.transaction_id", dict(transaction_id="x" * 129)),
    ("transaction.event_time", dict(with_time=False)),
    ("transaction.event_time", dict(event_time_ms=now_ms() - 30 * 86_400_000)),
    ("transaction.event_time", dict(event_time_ms=now_ms() + 3_600_000)),
    ("transaction.amount_minor", dict(amount_minor=-1)),
    ("transaction.amount_minor", dict(amount_minor=10**15)),
    ("transaction.currency", dict(currency="")),
    ("transaction.currency", dict(currency="usd")),
    ("transaction.currency", dict(currency="XYZ")),
    ("transaction.currency", dict(currency="BRL")),  # valid ISO code but no rate configured
    ("transaction.country", dict(country="ZZ")),
    ("transaction.country", dict(country="de")),
    ("transaction.ip", dict(ip="999.1.1.1")),
    ("transaction.ip", dict(ip="not-an-ip")),
    ("transaction.card_id", dict(card_id="c\x1f1")),
    ("transaction.device_id", dict(device_id="d" * 500)),
    ("transaction.card_id", dict(card_id="", user_id="")),
    ("transaction.channel", dict(channel=42)),
    ("transaction.attributes", dict(attributes={f"k{i}": "v" for i in range(33)})),
    ("transaction.attributes", dict(attributes={"bad key": "v"})),
    ("transaction.attributes[mcc]", dict(attributes={"mcc": "9" * 300})),
    ("transaction.attributes[ua]", dict(attributes={"ua": "x" * 70_000})),  # big, but under the 1 MiB message cap
]


@pytest.mark.parametrize(("field", "kwargs"), MALFORMED, ids=[f"{f}:{i}" for i, (f, _) in enumerate(MALFORMED)])
def test_malformed_request_is_invalid_argument_and_touches_no_state(
    stub: risk_pb2_grpc.RiskEngineStub, redis_url: tuple[str, str], field: str, kwargs: dict
) -> None:
    client = redis.Redis.from_url(redis_url[0])
    before = sorted(client.scan_iter(match=f"*{redis_url[1]}*"))
    with pytest.raises(grpc.RpcError) as err:
        call(stub, request(**kwargs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()
    assert len(err.value.details()) < 300
    assert sorted(client.scan_iter(match=f"*{redis_url[1]}*")) == before  # nothing reached Redis
    client.close()


def test_missing_transaction_and_garbage_bytes(server: Running) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(risk_pb2.ScoreRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("transaction:")
    raw = channel.unary_unary("/risk.v1.RiskEngine/Score", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff garbage", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request: not a valid risk.v1.ScoreRequest")
    # The server is still fine afterwards.
    assert stub.Score(request(), timeout=5).decision != risk_pb2.DECISION_UNSPECIFIED
    channel.close()


def test_health_and_reflection(server: Running) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "risk.v1.RiskEngine"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"risk.v1.RiskEngine", "grpc.health.v1.Health"} <= names
    channel.close()


def test_score_is_a_probability_and_matches_offline_prediction(
    stub: risk_pb2_grpc.RiskEngineStub, server: Running
) -> None:
    resp = call(stub, request(card_id="c-prob", amount_minor=123_45))
    model = server.pipeline.snapshot.model
    assert model is not None
    offline = model.predict({name: resp.features.get(name, math.nan) for name in model.features})
    assert resp.score == pytest.approx(offline, abs=1e-12)


def test_ip_spellings_are_one_entity_and_one_transaction(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    t = now_ms()
    spellings = ["2001:db8::7", "2001:DB8::7", "2001:db8:0:0:0:0:0:7", "2001:0db8::0007"]
    for k, ip in enumerate(spellings):
        resp = call(stub, request(ip=ip, card_id=f"c-ip-{k}", device_id=f"d-ip-{k}", event_time_ms=t + k))
    assert resp.features["ip_distinct_cards_1h"] == 4
    for k, ip in enumerate(["203.0.113.77", "::ffff:203.0.113.77"]):
        resp = call(stub, request(ip=ip, card_id=f"c-v4-{k}", device_id=f"d-v4-{k}", event_time_ms=t + k))
    assert resp.features["ip_distinct_cards_1h"] == 2
    first = call(stub, request(transaction_id="ip-retry", ip="2001:db8::8", event_time_ms=t))
    again = call(stub, request(transaction_id="ip-retry", ip="2001:DB8:0::8", event_time_ms=t))
    assert again == first


def test_window_edges_over_the_wire(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    t = now_ms() - 3_600_000
    ten_minutes = 600_000
    call(stub, request(card_id="c-edge", event_time_ms=t))
    on_edge = call(stub, request(card_id="c-edge", event_time_ms=t + ten_minutes))
    assert on_edge.features["card_count_10m"] == 1  # (t' - 10m, t']: the first one sits on the open edge
    assert on_edge.features["card_count_1d"] == 2
    inside = call(stub, request(card_id="c-edge2", event_time_ms=t))
    inside = call(stub, request(card_id="c-edge2", event_time_ms=t + ten_minutes - 1))
    assert inside.features["card_count_10m"] == 2
    same_ms = call(stub, request(card_id="c-edge2", event_time_ms=t + ten_minutes - 1))
    assert same_ms.features["card_count_10m"] == 3  # the same millisecond is inside
