"""The admin gRPC service (`risk.v1.Admin`): reload and status, on its own port, never the gateway's.

The server binds it to `--admin-host` (127.0.0.1 by default; another address
only with mutual TLS) on `--admin-port`, with its own small thread pool, so
that whoever can reach the scoring port cannot reload anything and admin
calls never take a scoring worker.

Admin has an identity of its own (`AdminAuth`): a call needs either the
bearer token (`authorization: Bearer <token>` metadata; the token is read
from `--admin-token-file`, or generated 0600 beside the data on first use,
and compared in constant time) or, over mutual TLS, a client certificate
whose identity (subject common name or a SAN) is on `--admin-allow`, a list
of its own: the gateway's certificate, valid for scoring, is not on it. No
credential: UNAUTHENTICATED; a certificate not on the list or a wrong
token: PERMISSION_DENIED. Every call is logged (`event: admin_audit`) with
who, what and the result. `Reload` answers `reloaded=false` when nothing on
disk changed since what serves was loaded, and reloads are rate-limited
(one per `min_reload_interval_s`, RESOURCE_EXHAUSTED otherwise).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Sequence

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


class AdminAuth:
    """Who may call admin: the bearer token, or a client certificate identity on the allow-list."""

    def __init__(self, token: str, allow: Sequence[str] = ()) -> None:
        if len(token) < 16:
            raise ValueError("the admin token has at least 16 characters")
        self._token = token.encode()
        self.allow = frozenset(allow)

    def identify(self, context: grpc.ServicerContext) -> tuple[grpc.StatusCode | None, str]:
        """(None, who) for an allowed caller, else (the status to refuse with, who it seemed to be)."""
        sent = ""
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                sent = value
        names = _cert_names(context)
        if sent:
            scheme, _, token = sent.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token):
                return None, "token" + (f" (certificate {names[0]})" if names else "")
            return grpc.StatusCode.PERMISSION_DENIED, "a wrong bearer token"
        allowed = [n for n in names if n in self.allow]
        if allowed:
            return None, f"certificate {allowed[0]}"
        if names:
            return grpc.StatusCode.PERMISSION_DENIED, f"certificate {names[0]} (not on the admin allow-list)"
        return grpc.StatusCode.UNAUTHENTICATED, "no credential"


def _cert_names(context: grpc.ServicerContext) -> list[str]:
    """The client certificate's common name and SANs (mutual TLS), or []."""
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for raw in auth.get(key, ()):
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if name not in names:
                names.append(name)
    return names


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        reloader: Reloader,
        store_name: str,
        decisions: Callable[[], DecisionLog | None],
        auth: AdminAuth | None = None,
        min_reload_interval_s: float = 2.0,
    ) -> None:
        self.reloader = reloader
        self.store_name = store_name
        self.decisions = decisions
        self.auth = auth
        self.min_reload_interval_s = min_reload_interval_s
        self._reload_lock = threading.Lock()
        self._last_reload = -1e9

    def _admit(self, context: grpc.ServicerContext, action: str) -> str:
        """The caller's identity; aborts the call (logged) when it may not call admin."""
        if self.auth is None:
            return context.peer()
        refusal, who = self.auth.identify(context)
        if refusal is not None:
            self._audit(who, context.peer(), action, refusal.name)
            context.abort(refusal, f"admin needs its own credential: {who}")
        return who

    @staticmethod
    def _audit(who: str, peer: str, action: str, result: str) -> None:
        log.info(
            "admin %s by %s from %s: %s",
            action,
            who,
            peer,
            result,
            extra={"event": "admin_audit", "who": who, "peer": peer, "action": action, "result": result},
        )

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
        who = self._admit(context, "status")
        self._audit(who, context.peer(), "status", "ok")
        return self.status()

    def Reload(  # noqa: N802 - the gRPC method name
        self, request: admin_pb2.ReloadRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReloadResponse:
        who = self._admit(context, "reload")
        with self._reload_lock:
            wait = self._last_reload + self.min_reload_interval_s - time.monotonic()
            if wait > 0:
                self._audit(who, context.peer(), "reload", "rate-limited")
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"one reload per {self.min_reload_interval_s:g} s: retry in {wait:.1f} s",
                )
            self._last_reload = time.monotonic()
            if not self.reloader.changed_on_disk():
                result, swapped = "nothing changed", False
            else:
                before = self.reloader.status
                swapped = self.reloader.reload_now()
                after = self.reloader.status
                same = (before.ruleset_digest, before.model_version, before.challenger) == (
                    after.ruleset_digest,
                    after.model_version,
                    after.challenger,
                )
                swapped = swapped and not same
                result = "reloaded" if swapped else ("unchanged" if after.last_attempt_ok else "refused")
        self._audit(who, context.peer(), "reload", result)
        return admin_pb2.ReloadResponse(reloaded=swapped, status=self.status())
