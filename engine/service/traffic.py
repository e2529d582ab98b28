"""Simulated traffic to a live server: native rows (`engine.offline.synthetic`) as `Score` calls.

`to_request` turns one row into a `risk.v1.ScoreRequest`; `stream` sends rows
to a server at a steady rate, one call at a time, and counts the decisions,
errors and latencies (`risk-engine simulate --target`, the demo, the load
generator).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from engine.service.pb import risk_pb2, risk_pb2_grpc


def to_request(row: dict[str, Any], id_prefix: str = "") -> risk_pb2.ScoreRequest:
    """A `risk.v1.ScoreRequest` for one native row (as `engine.offline.synthetic` writes them)."""
    ts = Timestamp()
    ts.FromMilliseconds(int(row["event_time_ms"]))
    return risk_pb2.ScoreRequest(
        transaction=risk_pb2.Transaction(
            transaction_id=f"{id_prefix}{row['transaction_id']}",
            event_time=ts,
            amount_minor=int(row["amount_minor"]),
            currency=row["currency"],
            user_id=row["user_id"],
            card_id=row["card_id"],
            device_id=row["device_id"],
            ip=row["ip"],
            country=row["country"],
            merchant_id=row["merchant_id"],
            merchant_category=row.get("merchant_category", ""),
            channel=risk_pb2.Channel.Value(f"CHANNEL_{row['channel'].upper()}"),
        )
    )


@dataclass
class StreamStats:
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)


def stream(
    rows: Iterable[dict[str, Any]],
    target: str,
    rate: float,
    *,
    duration_s: float | None = None,
    timeout_s: float = 1.0,
    on_response: Any = None,
) -> StreamStats:
    """Send rows to `target` (HOST:PORT) at `rate` per second, one at a time, paced to the schedule.

    `on_response(row, response_or_None, latency_ms, error_code_name_or_None)` is called after each
    call. Stops after `duration_s` (when given), when the rows run out, or on KeyboardInterrupt.
    """
    stats = StreamStats()
    prefix = f"sim-{time.time_ns():x}-"
    with grpc.insecure_channel(target) as channel:
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        start = time.perf_counter()
        for i, row in enumerate(rows):
            due = start + i / rate
            now = time.perf_counter()
            if duration_s is not None and now - start >= duration_s:
                break
            if due > now:
                time.sleep(due - now)
            t0 = time.perf_counter()
            try:
                resp = stub.Score(to_request(row, prefix), timeout=timeout_s)
                code = None
            except grpc.RpcError as exc:
                resp, code = None, exc.code().name
            ms = (time.perf_counter() - t0) * 1000
            stats.sent += 1
            stats.latencies_ms.append(ms)
            if code is not None:
                stats.errors[code] = stats.errors.get(code, 0) + 1
            else:
                name = risk_pb2.Decision.Name(resp.decision).removeprefix("DECISION_").lower()
                stats.decisions[name] = stats.decisions.get(name, 0) + 1
            if on_response is not None:
                on_response(row, resp, ms, code)
    return stats
