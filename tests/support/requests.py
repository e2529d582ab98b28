"""Building requests for tests, and waiting for a server process."""

from __future__ import annotations

import itertools
import subprocess
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.service.pb import risk_pb2

_ids = itertools.count()


def now_ms() -> int:
    return int(time.time() * 1000)


def request(
    *,
    transaction_id: str | None = None,
    event_time_ms: int | None = None,
    amount_minor: int = 2_500,
    currency: str = "EUR",
    user_id: str = "u-1",
    card_id: str = "c-1",
    device_id: str = "d-1",
    ip: str = "85.214.132.117",  # in Germany, like the default card country
    country: str = "DE",
    merchant_id: str = "m-1",
    channel: int = risk_pb2.CHANNEL_APP,
    attributes: dict[str, str] | None = None,
    merchant_category: str = "",
    with_time: bool = True,
) -> risk_pb2.ScoreRequest:
    t = risk_pb2.Transaction(
        transaction_id=transaction_id or f"t-{next(_ids)}-{time.monotonic_ns()}",
        amount_minor=amount_minor,
        currency=currency,
        user_id=user_id,
        card_id=card_id,
        device_id=device_id,
        ip=ip,
        country=country,
        merchant_id=merchant_id,
        channel=channel,
        attributes=attributes or {},
        merchant_category=merchant_category,
    )
    if with_time:
        ms = event_time_ms if event_time_ms is not None else now_ms()
        t.event_time.CopyFrom(Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000))
    return risk_pb2.ScoreRequest(transaction=t)


def wait_serving(channel: grpc.Channel, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Until the server process answers SERVING for risk.v1.RiskEngine; fail if it exits or takes too long."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            request = health_pb2.HealthCheckRequest(service="risk.v1.RiskEngine")
            if health.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "server did not become SERVING"
        time.sleep(0.1)
