"""Prometheus metrics of the service: what is deployed, how reloads went, decisions and rule hits.

Each server owns its own registry (several servers can run in one process,
as in the tests) and exposes it over HTTP with prometheus-client. Names:

| metric | type | labels |
|---|---|---|
| `risk_ruleset_info` | gauge (1) | `version`, `digest` of the active rule set |
| `risk_model_info` | gauge (1) | `version` of the active model |
| `risk_ruleset_loaded_timestamp_seconds` | gauge | when the active set was swapped in |
| `risk_reloads_total` | counter | `result` = `ok` or `failed` |
| `risk_last_reload_ok` | gauge | 1 when the last reload attempt succeeded, else 0 |
| `risk_last_reload_failure_timestamp_seconds` | gauge | 0 when no reload has failed |
| `risk_decisions_total` | counter | `decision`, `degraded` |
| `risk_rule_hits_total` | counter | `rule_id`, `mode` = `active` or `shadow` |
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from engine.reload import ReloadStatus
from engine.transaction import ReasonSource, ScoreResult


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ruleset_info = Gauge("risk_ruleset_info", "The active rule set", ["version", "digest"], registry=r)
        self.model_info = Gauge("risk_model_info", "The active model", ["version"], registry=r)
        self.loaded_at = Gauge(
            "risk_ruleset_loaded_timestamp_seconds", "When the active rule set was swapped in", registry=r
        )
        self.reloads = Counter("risk_reloads", "Rule set reload attempts", ["result"], registry=r)
        self.last_ok = Gauge("risk_last_reload_ok", "1 when the last reload attempt succeeded", registry=r)
        self.last_failure_at = Gauge(
            "risk_last_reload_failure_timestamp_seconds", "When a reload last failed (0: never)", registry=r
        )
        self.decisions = Counter("risk_decisions", "Scored transactions", ["decision", "degraded"], registry=r)
        self.rule_hits = Counter("risk_rule_hits", "Rules that fired", ["rule_id", "mode"], registry=r)
        self._lock = threading.Lock()
        self._status: ReloadStatus | None = None
        self.server: ThreadingHTTPServer | None = None

    def set_status(self, status: ReloadStatus) -> None:
        with self._lock:
            old = self._status
            if old is not None:
                if (old.ruleset_version, old.ruleset_digest) != (status.ruleset_version, status.ruleset_digest):
                    self.ruleset_info.remove(old.ruleset_version, old.ruleset_digest)
                if old.model_version != status.model_version:
                    self.model_info.remove(old.model_version)
                self.reloads.labels("ok").inc(status.reloads_ok - old.reloads_ok)
                self.reloads.labels("failed").inc(status.reloads_failed - old.reloads_failed)
            self.ruleset_info.labels(status.ruleset_version, status.ruleset_digest).set(1)
            self.model_info.labels(status.model_version).set(1)
            self.loaded_at.set(status.loaded_at)
            self.last_ok.set(1 if status.last_attempt_ok else 0)
            self.last_failure_at.set(status.last_failure_at)
            self._status = status

    def observe(self, result: ScoreResult) -> None:
        self.decisions.labels(result.decision.name.lower(), "true" if result.degraded else "false").inc()
        for reason in result.reasons:
            if reason.source is ReasonSource.RULE:
                self.rule_hits.labels(reason.rule_id, "active").inc()
        for reason in result.shadow:
            self.rule_hits.labels(reason.rule_id, "shadow").inc()

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        return int(server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
