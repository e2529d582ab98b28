"""Importing a file of labels into a running server through the Feedback rpc.

`risk-engine feedback import` reads transactions with their outcome (and,
where the file has it, the time the outcome became known) through the same
column mappings as the backtest, and sends one Feedback call per labeled
row, in the order the labels became known. A call the server could not
answer (UNAVAILABLE, DEADLINE_EXCEEDED) is retried with backoff; the rpc is
idempotent, so a retry or a second import of the same file counts nothing
twice (it comes back as a duplicate).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from engine.offline.datasets import load_dataset, load_mapping
from engine.service.convert import from_feedback
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.transaction import Feedback
from engine.windows.spec import FRAUD, GENUINE

#: Codes worth a retry: the server or its store was briefly unable to answer.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class ImportReport:
    sent: int = 0
    recorded: int = 0
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # status code name -> count
    first_errors: list[str] = field(default_factory=list)


def read_feedback(path: str | Path, mapping: str | Path, label_delay_ms: int | None) -> tuple[list[Feedback], int]:
    """(feedback in the order it became known, number of unlabeled rows) from a labeled file.

    A row's outcome comes from the mapping's label column; it became known at
    the label time column when the mapping names one, else `label_delay_ms`
    after the transaction, else (None) now.
    """
    column_mapping = load_mapping(mapping)
    if column_mapping.label is None:
        raise ValueError(f"the mapping {mapping} names no label column")
    _, dataset = load_dataset(path, [(str(mapping), column_mapping)])
    assert dataset.labels is not None
    now_ms = int(time.time() * 1000)
    out: list[Feedback] = []
    unlabeled = 0
    for i, txn in enumerate(dataset.transactions):
        label = dataset.labels[i]
        if label != label:  # NaN: not labeled
            unlabeled += 1
            continue
        known = -1
        if dataset.label_times_ms is not None:
            known = int(dataset.label_times_ms[i])
        if known < 0:
            known = now_ms if label_delay_ms is None else min(txn.event_time_ms + label_delay_ms, now_ms)
        out.append(Feedback(txn, FRAUD if label >= 0.5 else GENUINE, known))
    out.sort(key=lambda fb: (fb.known_at_ms, fb.transaction.event_time_ms))
    return out, unlabeled


def send_feedback(
    channel: grpc.Channel, items: list[Feedback], timeout_s: float = 2.0, attempts: int = 5
) -> ImportReport:
    """Send each feedback once (retrying what the server could not answer) and count the outcomes."""
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    report = ImportReport()
    for fb in items:
        request = from_feedback(fb)
        report.sent += 1
        for attempt in range(attempts):
            try:
                response: risk_pb2.FeedbackResponse = stub.Feedback(request, timeout=timeout_s)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in RETRYABLE and attempt + 1 < attempts:
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                report.refused[code.name] += 1
                if len(report.first_errors) < 10:
                    report.first_errors.append(f"{fb.transaction.transaction_id}: {code.name}: {exc.details()}")
                break
            if response.duplicate:
                report.duplicates += 1
            else:
                report.recorded += 1
            break
    return report
