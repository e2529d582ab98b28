"""Hostile input over the wire: every request gets OK or a clear client error, never INTERNAL or a hang."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running
from tests.support.requests import now_ms

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "EUR", "USD", "JPY", "KWD", "DE", "KP", "10.0.0.1", "::1", "fe80::1%eth0", "c-1", "x" * 129]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x20), max_size=5),
)
amounts = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 10**6))
seconds = st.one_of(
    st.integers(-(2**62), 2**62),
    st.just(now_ms() // 1000),
    st.integers(now_ms() // 1000 - 10**6, now_ms() // 1000 + 10**4),
)


@st.composite
def requests(draw: st.DrawFn) -> risk_pb2.ScoreRequest:
    t = risk_pb2.Transaction(
        transaction_id=draw(st.one_of(text, st.uuids().map(str))),
        amount_minor=draw(amounts),
        currency=draw(text),
        user_id=draw(text),
        card_id=draw(text),
        device_id=draw(text),
        ip=draw(text),
        country=draw(text),
        merchant_id=draw(text),
        channel=draw(st.integers(-3, 10)),
        attributes=draw(st.dictionaries(text, text, max_size=40)),
    )
    if draw(st.booleans()):
        t.event_time.CopyFrom(Timestamp(seconds=draw(seconds), nanos=draw(st.integers(0, 999_999_999))))
    return risk_pb2.ScoreRequest(transaction=t) if draw(st.integers(0, 20)) else risk_pb2.ScoreRequest()


_ids = itertools.count()
FIELDS = ["currency", "user_id", "card_id", "device_id", "ip", "country", "merchant_id"]


@st.composite
def nearly_valid(draw: st.DrawFn) -> risk_pb2.ScoreRequest:
    """A valid request with one field made hostile, so most of them reach scoring."""
    t = risk_pb2.Transaction(
        transaction_id=f"fuzz-{next(_ids)}",  # unique: hypothesis repeats its draws
        amount_minor=draw(st.integers(0, 10**9)),
        currency=draw(st.sampled_from(["EUR", "USD", "JPY", "KWD", "CNY"])),
        user_id=draw(st.sampled_from(["u1", "u2", ""])),
        card_id=draw(st.sampled_from(["c1", "c2", "c3"])),
        device_id=draw(st.sampled_from(["d1", "d2", ""])),
        ip=draw(st.sampled_from(["81.2.69.160", "10.0.0.1", "2001:db8::1", ""])),
        country=draw(st.sampled_from(["DE", "KP", "CN", ""])),
        merchant_id="m1",
        channel=draw(st.integers(0, 4)),
        attributes=draw(st.dictionaries(st.sampled_from(["mcc", "bin", "ua"]), st.text(max_size=20), max_size=3)),
    )
    ms = now_ms() - draw(st.integers(0, 12 * 3_600_000))  # within the accepted age of one day
    t.event_time.CopyFrom(Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000))
    if draw(st.booleans()):
        setattr(t, draw(st.sampled_from(FIELDS)), draw(text))
    return risk_pb2.ScoreRequest(transaction=t)


@pytest.fixture
def channel(server: Running) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield ch
    ch.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=requests())
def test_fuzzed_requests_get_ok_or_a_client_error(channel: grpc.Channel, req: risk_pb2.ScoreRequest) -> None:
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    try:
        resp = stub.Score(req, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS), exc
        assert exc.details().startswith("transaction")
        return
    assert resp.decision != risk_pb2.DECISION_UNSPECIFIED
    assert not resp.degraded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=nearly_valid())
def test_nearly_valid_requests_are_scored_or_refused_by_field(
    channel: grpc.Channel, req: risk_pb2.ScoreRequest
) -> None:
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    try:
        resp = stub.Score(req, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        assert exc.details().split(":")[0] in {f"transaction.{f}" for f in FIELDS}, exc.details()
        return
    assert resp.transaction_id == req.transaction.transaction_id
    assert resp.decision != risk_pb2.DECISION_UNSPECIFIED and not resp.degraded
    assert 0.0 <= resp.score <= 1.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_raw_bytes_never_crash_the_server(channel: grpc.Channel, raw: bytes) -> None:
    call = channel.unary_unary("/risk.v1.RiskEngine/Score")
    try:
        call(raw, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS), exc
        assert exc.details().startswith(("request:", "transaction")), exc.details()


def _valid_bytes() -> bytes:
    req = risk_pb2.ScoreRequest(
        transaction=risk_pb2.Transaction(
            transaction_id="fuzz-seed",
            amount_minor=2_500,
            currency="EUR",
            card_id="c1",
            ip="81.2.69.160",
            country="DE",
            channel=risk_pb2.CHANNEL_APP,
            attributes={"mcc": "5812"},
        )
    )
    ms = now_ms()
    req.transaction.event_time.CopyFrom(Timestamp(seconds=ms // 1000, nanos=0))
    return req.SerializeToString()


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A valid request's bytes with flips, cuts, insertions and duplicated pieces: mostly near-misses."""
    data = bytearray(_valid_bytes())
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "varint"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "repeat":
            data += data[pos : pos + draw(st.integers(1, 16))]
        else:  # an overlong varint, a classic parser trap
            data[pos:pos] = b"\xff" * draw(st.integers(1, 11))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=mutated_bytes())
def test_mutated_valid_requests_get_ok_or_invalid_argument(channel: grpc.Channel, raw: bytes) -> None:
    call = channel.unary_unary("/risk.v1.RiskEngine/Score")
    try:
        call(raw, timeout=5)
    except grpc.RpcError as exc:
        # ALREADY_EXISTS: a mutation that keeps the seed's id but changes its content.
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS), exc
        assert exc.details().startswith(("request:", "transaction")), exc.details()


@settings(max_examples=2000, deadline=None)
@given(req=requests())
def test_conversion_and_validation_only_ever_refuse_with_a_field(req: risk_pb2.ScoreRequest) -> None:
    """In process, many more examples: mapping and validation raise nothing but InvalidTransaction."""
    from engine.service.convert import to_transaction
    from engine.validation import InvalidTransaction, Limits, validate

    limits = Limits()
    try:
        validate(to_transaction(req, limits), limits, now_ms())
    except InvalidTransaction as exc:
        assert exc.field and exc.reason


def test_an_oversized_request_is_refused_without_reaching_the_engine(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/risk.v1.RiskEngine/Score")
    with pytest.raises(grpc.RpcError) as refused:
        call(b"\x0a" + b"\xff" * 2_000_000, timeout=5)  # over the 1 MiB receive limit
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    req = risk_pb2.ScoreRequest.FromString(_valid_bytes())
    req.transaction.transaction_id = f"fuzz-after-{next(_ids)}"
    assert stub.Score(req, timeout=5).decision != risk_pb2.DECISION_UNSPECIFIED  # still serving
