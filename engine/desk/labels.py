"""Resolutions become labels: each resolved case is sent to the engine as a `Feedback` call.

A resolution and its pending label are written in one transaction
(`label_state = 'pending'`, an outbox in the case row), then delivered
through `engine.service.feedback_client.send_feedback`, the code path of
`risk-engine feedback import`: the transaction as the decision log gave it,
the outcome (fraud or genuine), and the resolution time as `known_at`, so
the engine's label windows (`merchant_frauds_known_1d`, ...) count it from
then on. The console tries at once, after the resolution commits, and a
background thread retries what is still pending every `retry_s` seconds:
labels survive an engine that is down or restarting, and the rpc is
idempotent (a label sent twice comes back as a duplicate and counts once).

A label the engine refuses for good (INVALID_ARGUMENT, or ALREADY_EXISTS: the
transaction already has the other outcome, e.g. from an imported
chargeback) is marked `failed` with the engine's reason, shown on the case
and the dashboard; nothing else is retried forever silently: the
dashboard shows how many labels are pending and the oldest.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import Engine, select, update

from engine.desk import schema as t
from engine.desk.audit import audit_write
from engine.desk.db import now_ms
from engine.desk.rules_view import transaction_of
from engine.transaction import Feedback
from engine.windows.spec import FRAUD, GENUINE

log = logging.getLogger("risk_engine.desk")

#: Refusals that a retry cannot change.
PERMANENT = ("INVALID_ARGUMENT", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED")
_OUTCOME = {t.FRAUD: FRAUD, t.GENUINE: GENUINE}


@dataclass(frozen=True)
class EngineChannel:
    """How the console reaches the engine's scoring port (plaintext, TLS, or mutual TLS)."""

    target: str
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def open(self) -> grpc.Channel:
        if self.ca is None and self.cert is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(
            self.target, grpc.ssl_channel_credentials(self.ca, private_key=self.key, certificate_chain=self.cert)
        )


class LabelSender:
    """Delivers pending labels (module docstring)."""

    def __init__(self, engine: Engine, channel: EngineChannel | None, *, timeout_s: float = 2.0, retry_s: float = 5.0):
        self.engine = engine
        self.target = channel
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._channel = channel.open() if channel is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="desk-labels", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._channel is not None:
            self._channel.close()

    def _run(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                self.deliver_pending()
            except Exception as exc:  # noqa: BLE001 - keep retrying through database outages
                log.error("delivering labels failed (retrying): %s: %s", type(exc).__name__, exc)

    def deliver_pending(self, limit: int = 200) -> int:
        with self.engine.connect() as conn:
            ids = [
                int(r[0])
                for r in conn.execute(
                    select(t.cases.c.id)
                    .where(t.cases.c.label_state == "pending")
                    .order_by(t.cases.c.resolved_at_ms)
                    .limit(limit)
                )
            ]
        return sum(1 for case_id in ids if self.deliver(case_id) == "sent")

    def deliver(self, case_id: int) -> str:
        """Send one case's label; its label state afterwards: sent, pending (will retry) or failed."""
        if self._channel is None:
            return "pending"  # no --engine: labels wait until a console that has one sends them
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.cases.c.record, t.cases.c.resolution, t.cases.c.resolved_at_ms, t.cases.c.label_state).where(
                    t.cases.c.id == case_id
                )
            ).first()
        if row is None or row.label_state != "pending" or row.resolution not in _OUTCOME:
            return str(row.label_state) if row is not None else "missing"
        record: dict[str, Any] = json.loads(row.record)
        feedback = Feedback(transaction_of(record["transaction"]), _OUTCOME[row.resolution], int(row.resolved_at_ms))
        from engine.service.feedback_client import send_feedback  # pulls in the offline readers: load when used

        with self._lock:  # one call at a time per console: labels are few, and order is kept
            report = send_feedback(self._channel, [feedback], timeout_s=self.timeout_s, attempts=1)
        if report.recorded or report.duplicates:
            state, error = "sent", None
        else:
            code = next(iter(report.refused), "UNKNOWN")
            error = report.first_errors[0] if report.first_errors else code
            state = "failed" if code in PERMANENT else "pending"
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(t.cases)
                .where(t.cases.c.id == case_id, t.cases.c.label_state == "pending")
                .values(
                    label_state=state,
                    label_sent_at_ms=now_ms() if state == "sent" else None,
                    label_attempts=t.cases.c.label_attempts + 1,
                    label_error=error,
                )
                .returning(t.cases.c.id)
            ).first()
            if changed is not None and state != "pending":
                audit_write(
                    conn,
                    "desk",
                    "label_sent" if state == "sent" else "label_failed",
                    case_id=case_id,
                    before={"label_state": "pending"},
                    after={"label_state": state, "outcome": row.resolution},
                    detail=("duplicate: the engine had it already" if report.duplicates else error or ""),
                )
        return state
