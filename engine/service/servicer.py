"""The RiskEngine servicer: maps each Score call onto the pipeline and its errors onto status codes.

| engine outcome               | gRPC status        |
|------------------------------|--------------------|
| scored (possibly degraded)   | OK                 |
| retry of a scored id         | OK, same response, initial metadata `risk-replayed: true` |
| InvalidTransaction           | INVALID_ARGUMENT, "transaction.FIELD: reason" |
| IdempotencyConflict          | ALREADY_EXISTS     |
| bytes that are no ScoreRequest | INVALID_ARGUMENT |
| queued past RISK_MAX_QUEUE_MS  | RESOURCE_EXHAUSTED (shed, engine.service.admission) |
| DeadlineTooClose             | RESOURCE_EXHAUSTED (shed: no time left to score properly) |
| anything unexpected          | INTERNAL (logged)  |

Feedback maps the same way, except that the window store not answering is
UNAVAILABLE (a label is not on a payment's path: the caller retries), and a
second, different outcome for a transaction is ALREADY_EXISTS.

The method is registered with a raw-bytes handler (`handler`) so that a
request that does not even parse gets INVALID_ARGUMENT rather than gRPC's
generic INTERNAL "exception deserializing request", and so that each call
carries its arrival time for admission control (a call that waited too long
for a worker is shed before it is even parsed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from engine.pipeline import DeadlineTooClose, IdempotencyConflict, InvalidTransaction, Pipeline
from engine.privacy import looks_like_card_number
from engine.service.admission import Admission, AdmissionPolicy, AdmittingHandler
from engine.service.convert import to_feedback, to_feedback_response, to_response, to_transaction
from engine.service.pb import risk_pb2
from engine.transaction import ScoreResult, Transaction
from engine.windows.store import StoreUnavailable

log = logging.getLogger("risk_engine.service")

Request = TypeVar("Request", risk_pb2.ScoreRequest, risk_pb2.FeedbackRequest)
Response = TypeVar("Response", risk_pb2.ScoreResponse, risk_pb2.FeedbackResponse)

#: Called once per answered call with its status code name, its server-side duration in seconds and its method.
OnRequest = Callable[[str, float, str], None]


def _loggable(transaction_id: str) -> str:
    """A transaction id for a log line: never a card number (`RISK_CARD_DATA=mask` lets one through)."""
    return "masked" if looks_like_card_number(transaction_id) else transaction_id[:128]


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


class RiskEngineServicer:
    """Scores calls; `observe` sees each fresh result, `on_scored` each fresh (transaction, result),
    `on_request` each call's status code, duration and method (replays included)."""

    def __init__(
        self,
        pipeline: Pipeline,
        observe: Callable[[ScoreResult], None] | None = None,
        *,
        observe_steps: Callable[[tuple[int, ...]], None] | None = None,
        on_scored: Callable[[Transaction, ScoreResult], object] | None = None,
        on_request: OnRequest | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.admission = admission or Admission(AdmissionPolicy())
        self.observe = observe or (lambda result: None)
        self.observe_steps = observe_steps or (lambda timings: None)
        self.on_scored = on_scored
        self.on_request = on_request

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handler, parsing requests itself and stamping arrivals (see the module docstring)."""
        return AdmittingHandler(
            "risk.v1.RiskEngine",
            {
                "Score": (self.score_bytes, risk_pb2.ScoreResponse.SerializeToString),
                "Feedback": (self.feedback_bytes, risk_pb2.FeedbackResponse.SerializeToString),
            },
            self.admission,
        )

    def score_bytes(
        self, raw: bytes, context: grpc.ServicerContext, arrived: float | None = None
    ) -> risk_pb2.ScoreResponse:
        return self._answer(raw, context, risk_pb2.ScoreRequest, self._score, "Score", arrived)

    def feedback_bytes(
        self, raw: bytes, context: grpc.ServicerContext, arrived: float | None = None
    ) -> risk_pb2.FeedbackResponse:
        return self._answer(raw, context, risk_pb2.FeedbackRequest, self._feedback, "Feedback", arrived)

    def _answer(
        self,
        raw: bytes,
        context: grpc.ServicerContext,
        message: type[Request],
        handle: Callable[[Request, grpc.ServicerContext], Response],
        method: str,
        arrived: float | None,
    ) -> Response:
        """Shed a call that waited too long; else parse the request bytes, answer them with `handle`, count the
        call; refusals become the call's status."""
        started = time.perf_counter()
        try:
            if arrived is not None:
                shed = self.admission.queued_too_long(arrived)
                if shed is not None:
                    raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, shed)
            try:
                request = message.FromString(raw)
            except DecodeError:
                raise _Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request: not a valid {message.DESCRIPTOR.full_name} message",
                ) from None
            response = handle(request, context)
        except _Refused as refused:
            self._answered(refused.code.name, started, method)
            context.abort(refused.code, refused.details)
        self._answered("OK", started, method)
        return response

    def _feedback(self, request: risk_pb2.FeedbackRequest, context: grpc.ServicerContext) -> risk_pb2.FeedbackResponse:
        try:
            fb = to_feedback(request, self.pipeline.limits, int(self.pipeline.clock() * 1000))
            result = self.pipeline.feedback(fb, context.time_remaining())
        except InvalidTransaction as exc:
            path = exc.field if exc.field in ("transaction", "outcome", "known_at") else f"transaction.{exc.field}"
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {exc.reason}") from None
        except IdempotencyConflict:
            raise _Refused(
                grpc.StatusCode.ALREADY_EXISTS,
                f"transaction.transaction_id: {request.transaction.transaction_id!r} already has a different "
                "feedback (outcome or known_at)",
            ) from None
        except DeadlineTooClose as exc:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_close(exc)) from None
        except StoreUnavailable as exc:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, f"window store unavailable ({exc.kind}): retry") from None
        except Exception:
            log.exception(
                "unexpected error while recording feedback",
                extra={"event": "error", "transaction_id": _loggable(request.transaction.transaction_id)},
            )
            raise _Refused(
                grpc.StatusCode.INTERNAL, "internal error while recording feedback; see the server log"
            ) from None
        return to_feedback_response(result)

    def _too_close(self, exc: DeadlineTooClose) -> str:
        detail = f"cannot be scored before the deadline: {exc}; retry with a longer deadline or on another instance"
        self.admission.on_shed("deadline", detail)
        return detail

    def _answered(self, code: str, started: float, method: str) -> None:
        if self.on_request is not None:
            self.on_request(code, time.perf_counter() - started, method)

    def _score(self, request: risk_pb2.ScoreRequest, context: grpc.ServicerContext) -> risk_pb2.ScoreResponse:
        try:
            txn = to_transaction(request, self.pipeline.limits)
            scored = self.pipeline.score(txn, context.time_remaining(), dry_run=request.dry_run)
        except InvalidTransaction as exc:
            path = exc.field if exc.field in ("transaction", "dry_run") else f"transaction.{exc.field}"
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {exc.reason}") from None
        except IdempotencyConflict as exc:
            raise _Refused(
                grpc.StatusCode.ALREADY_EXISTS,
                f"transaction.transaction_id: {exc.transaction_id!r} was already scored with different content",
            ) from None
        except DeadlineTooClose as exc:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_close(exc)) from None
        except Exception:
            log.exception(
                "unexpected error while scoring",
                extra={"event": "error", "transaction_id": _loggable(request.transaction.transaction_id)},
            )
            raise _Refused(grpc.StatusCode.INTERNAL, "internal error while scoring; see the server log") from None
        if scored.replayed:
            context.send_initial_metadata((("risk-replayed", "true"),))
        else:
            if not scored.result.dry_run:  # sandbox calls stay out of the decision metrics
                self.observe(scored.result)
                self.observe_steps(scored.timings_ns)
            if self.on_scored is not None:
                self.on_scored(txn, scored.result)
        return to_response(scored.result)
