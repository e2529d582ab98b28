"""The RiskEngine servicer: maps each Score call onto the pipeline and its errors onto status codes.

| engine outcome               | gRPC status        |
|------------------------------|--------------------|
| scored (possibly degraded)   | OK                 |
| retry of a scored id         | OK, same response, initial metadata `risk-replayed: true` |
| InvalidTransaction           | INVALID_ARGUMENT, "transaction.FIELD: reason" |
| IdempotencyConflict          | ALREADY_EXISTS     |
| bytes that are no ScoreRequest | INVALID_ARGUMENT |
| anything unexpected          | INTERNAL (logged)  |

The method is registered with a raw-bytes handler (`handler`) so that a
request that does not even parse gets INVALID_ARGUMENT rather than gRPC's
generic INTERNAL "exception deserializing request".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from engine.pipeline import IdempotencyConflict, InvalidTransaction, Pipeline
from engine.service.convert import to_response, to_transaction
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.transaction import ScoreResult

log = logging.getLogger("risk_engine.service")


class RiskEngineServicer(risk_pb2_grpc.RiskEngineServicer):
    def __init__(self, pipeline: Pipeline, observe: Callable[[ScoreResult], None] | None = None) -> None:
        self.pipeline = pipeline
        self.observe = observe or (lambda result: None)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handler, parsing requests itself (see the module docstring)."""
        score = grpc.unary_unary_rpc_method_handler(
            self.score_bytes,
            request_deserializer=None,
            response_serializer=risk_pb2.ScoreResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler("risk.v1.RiskEngine", {"Score": score})

    def score_bytes(self, raw: bytes, context: grpc.ServicerContext) -> risk_pb2.ScoreResponse:
        try:
            request = risk_pb2.ScoreRequest.FromString(raw)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: not a valid risk.v1.ScoreRequest message")
        return self.Score(request, context)

    def Score(self, request: risk_pb2.ScoreRequest, context: grpc.ServicerContext) -> risk_pb2.ScoreResponse:  # noqa: N802
        try:
            txn = to_transaction(request, self.pipeline.limits)
            scored = self.pipeline.score(txn, context.time_remaining())
        except InvalidTransaction as exc:
            path = exc.field if exc.field == "transaction" else f"transaction.{exc.field}"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {exc.reason}")
        except IdempotencyConflict as exc:
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"transaction.transaction_id: {exc.transaction_id!r} was already scored with different content",
            )
        except Exception:
            log.exception("unexpected error while scoring")
            context.abort(grpc.StatusCode.INTERNAL, "internal error while scoring; see the server log")
        if scored.replayed:
            context.send_initial_metadata((("risk-replayed", "true"),))
        else:
            self.observe(scored.result)
        return to_response(scored.result)
