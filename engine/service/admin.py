"""The admin gRPC service (`risk.v1.Admin`): reload and status, on its own port, never the gateway's.

The server binds it to `--admin-host` (127.0.0.1 by default; another address
only with mutual TLS) on `--admin-port`, with its own small thread pool, so
that whoever can reach the scoring port cannot reload anything and admin
calls never take a scoring worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from engine.decision_log import DecisionLog
from engine.reload import Reloader
from engine.service.pb import admin_pb2, admin_pb2_grpc

log = logging.getLogger("risk_engine.admin")


def _ts(unix: float) -> Timestamp:
    ts = Timestamp()
    if unix > 0:
        ts.FromNanoseconds(int(unix * 1e9))
    return ts


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, reloader: Reloader, store_name: str, decisions: Callable[[], DecisionLog | None]) -> None:
        self.reloader = reloader
        self.store_name = store_name
        self.decisions = decisions

    def status(self) -> admin_pb2.StatusResponse:
        s = self.reloader.status
        dlog = self.decisions()
        return admin_pb2.StatusResponse(
            ruleset_version=s.ruleset_version,
            ruleset_digest=s.ruleset_digest,
            model_version=s.model_version,
            loaded_at=_ts(s.loaded_at),
            reloads_ok=s.reloads_ok,
            reloads_failed=s.reloads_failed,
            last_reload_ok=s.last_attempt_ok,
            last_failure=s.last_failure,
            last_failure_at=_ts(s.last_failure_at),
            store=self.store_name,
            decision_log_on=dlog is not None,
            decision_log_written=dlog.stats.written if dlog else 0,
            decision_log_dropped=0,  # records are written before the answer: none is dropped
            decision_log_write_failures=dlog.stats.write_failures if dlog else 0,
        )

    def Status(  # noqa: N802 - the gRPC method name
        self, request: admin_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.StatusResponse:
        return self.status()

    def Reload(  # noqa: N802 - the gRPC method name
        self, request: admin_pb2.ReloadRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReloadResponse:
        peer = context.peer()
        log.info("admin reload requested by %s", peer, extra={"event": "reload", "peer": peer})
        swapped = self.reloader.reload_now()
        return admin_pb2.ReloadResponse(reloaded=swapped, status=self.status())
