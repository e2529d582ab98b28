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
| `risk_requests_total` | counter | `method`, `code` (gRPC status name: `OK`, `INVALID_ARGUMENT`, ...) |
| `risk_step_duration_seconds` | histogram | `step`: prepare, windows, model, rules, record (`engine.pipeline.STEPS`) |
| `risk_request_duration_seconds` | histogram | `method`; server-side, from the handler's start to its answer |
| `risk_degraded_total` | counter | `cause`: windows, model, record, challenger, explain (`on_degraded`) |
| `risk_store_errors_total` | counter | `kind`: `timeout`, `connection`, `open`, `deadline`, `other` (*) |
| `risk_store_breaker_state` | gauge | `target` (a Redis or cluster master, host:port): 0 closed, 1 half-open, 2 open |
| `risk_store_breaker_transitions_total` | counter | `target`, `state` entered (`open`, `half_open`, `closed`) |
| `risk_shed_total` | counter | `cause`: `queue`, `in_flight`, `deadline` (engine.service.admission) |
| `risk_queue_wait_seconds` | histogram | time a call waited for a worker thread |
| `risk_fallback_answers_total` | counter | degraded answers that read the process's fallback windows |
| `risk_fallback_entities` | gauge | entity values the fallback windows keep |
| `risk_decision_log_records_total` | counter | `result` = `written`, `write_error` (lost) |
| `risk_decision_log_files_rotated_total`, `risk_decision_log_files_deleted_total` | counter | |
| `risk_retry_records_total` | counter | Redis only: `result` = `written`, `lost` (also counted as degraded `record`) |
| `risk_retry_record_queue` | gauge | Redis only: retry records queued for the writer (behind the answer) |
| `risk_model_drift_psi` | gauge | `feature` (`score`: the score): PSI of the last hour against the model's references |
| `risk_model_drift_rows` | gauge | scored transactions behind `risk_model_drift_psi` |

(*) `open`: failing fast, the target's circuit breaker is open; `deadline`: the
retry record was skipped, too little time left.

`RESOURCE_EXHAUSTED` refusals beyond `max_concurrent_rpcs` are answered by
gRPC's poller before any handler runs: they are in `risk_shed_total{cause="in_flight"}`,
not in `risk_requests_total`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.decision_log import DecisionLog
from engine.model.drift import DriftMonitor
from engine.pipeline import STEPS
from engine.reload import ReloadStatus
from engine.service.admission import SHED_CAUSES
from engine.transaction import ReasonSource, ScoreResult
from engine.windows.breaker import STATE_VALUES
from engine.windows.fallback import FallbackWindows
from engine.windows.records import RecordWriter
from engine.windows.store import UNAVAILABLE_KINDS, WindowStore

#: Pipeline steps run from about 5 µs (rules) to a Redis budget (50 ms).
STEP_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25)
#: A call waits for a worker from microseconds (idle) to the queue limit (50 ms by default) and beyond.
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


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
        self.requests = Counter("risk_requests", "Calls answered, by gRPC status", ["method", "code"], registry=r)
        self.latency = Histogram(
            "risk_request_duration_seconds",
            "Server-side time of a call",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.steps = Histogram(
            "risk_step_duration_seconds",
            "Time of each pipeline step of a fresh Score (engine.pipeline.STEPS)",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self._step_children = tuple(self.steps.labels(step) for step in STEPS)
        self.degraded = Counter("risk_degraded", "Degraded steps, by cause", ["cause"], registry=r)
        self.store_errors = Counter(
            "risk_store_errors", "Window store (Redis) calls that failed or were skipped", ["kind"], registry=r
        )
        self.shed = Counter("risk_shed", "Calls refused with RESOURCE_EXHAUSTED, by cause", ["cause"], registry=r)
        self.queue_wait = Histogram(
            "risk_queue_wait_seconds", "Time a call waited for a worker thread", buckets=WAIT_BUCKETS, registry=r
        )
        self.breaker_transitions = Counter(
            "risk_store_breaker_transitions", "Circuit breaker state changes", ["target", "state"], registry=r
        )
        for cause in SHED_CAUSES:
            self.shed.labels(cause)
        # Pre-create the children that are read before they first happen (dashboards see zeros, not gaps).
        self._score_latency = self.latency.labels("Score")
        self._score_codes: dict[str, Counter] = {}
        for cause in ("windows", "model", "record", "challenger", "explain"):
            self.degraded.labels(cause)
        for kind in UNAVAILABLE_KINDS:
            self.store_errors.labels(kind)
        self._lock = threading.Lock()
        self._status: ReloadStatus | None = None
        self.server: ThreadingHTTPServer | WSGIServer | None = None

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

    def observe_steps(self, timings_ns: tuple[int, ...]) -> None:
        """The per-step durations of one fresh Score (Scored.timings_ns)."""
        for child, ns in zip(self._step_children, timings_ns, strict=False):
            child.observe(ns / 1e9)

    def observe(self, result: ScoreResult) -> None:
        self.decisions.labels(result.decision.name.lower(), "true" if result.degraded else "false").inc()
        for reason in result.reasons:
            if reason.source is ReasonSource.RULE:
                self.rule_hits.labels(reason.rule_id, "active").inc()
        for reason in result.shadow:
            self.rule_hits.labels(reason.rule_id, "shadow").inc()

    def request(self, code: str, seconds: float, method: str = "Score") -> None:
        """One answered call: its status code name and server-side duration."""
        counter = self._score_codes.get(code) if method == "Score" else None
        if counter is None:
            counter = self.requests.labels(method, code)
            if method == "Score":
                self._score_codes[code] = counter
        counter.inc()
        (self._score_latency if method == "Score" else self.latency.labels(method)).observe(seconds)

    def on_degraded(self, cause: str, kind: str) -> None:
        """Count a degraded step (the pipeline's on_degraded); store failures also by their kind."""
        self.degraded.labels(cause).inc()
        if kind:
            self.store_errors.labels(kind).inc()

    def on_shed(self, cause: str, _kind: str = "") -> None:
        self.shed.labels(cause).inc()

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def on_breaker(self, target: str, state: str) -> None:
        self.breaker_transitions.labels(target, state).inc()

    def watch_store(self, store: WindowStore) -> None:
        """Export each Redis target's breaker state, read at scrape time."""
        self.registry.register(_BreakerCollector(store))

    def watch_fallback(self, fallback: FallbackWindows) -> None:
        """Export how much the fallback windows are used and hold, read at scrape time."""
        self.registry.register(_FallbackCollector(fallback))

    def watch_records(self, records: RecordWriter) -> None:
        """Export the Redis retry-record writer's counters, read at scrape time."""
        self.registry.register(_RecordWriterCollector(records))

    def watch_decision_log(self, decisions: DecisionLog) -> None:
        """Export the decision log's counters, read at scrape time (nothing on the request thread)."""
        self.registry.register(_DecisionLogCollector(decisions))

    def watch_drift(self, drift: DriftMonitor) -> None:
        """Export the model's drift (computed by its own thread), read at scrape time."""
        self.registry.register(_DriftCollector(drift))

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        return int(server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _RecordWriterCollector(Collector):
    def __init__(self, records: RecordWriter) -> None:
        self.records = records

    def collect(self) -> Iterator[Metric]:
        written = CounterMetricFamily(
            "risk_retry_records", "Retry records written to Redis behind the answer, by outcome", labels=["result"]
        )
        written.add_metric(["written"], self.records.written)
        written.add_metric(["lost"], self.records.lost)
        yield written
        yield GaugeMetricFamily("risk_retry_record_queue", "Retry records queued for the writer", self.records.queued)


class _DecisionLogCollector(Collector):
    def __init__(self, decisions: DecisionLog) -> None:
        self.decisions = decisions

    def collect(self) -> Iterator[Metric]:
        stats = self.decisions.stats
        records = CounterMetricFamily(
            "risk_decision_log_records", "Decision log records, by outcome", labels=["result"]
        )
        records.add_metric(["written"], stats.written)
        records.add_metric(["write_error"], stats.write_failures)
        yield records
        yield CounterMetricFamily(
            "risk_decision_log_files_rotated", "Decision log files closed by rotation", stats.files_rotated
        )
        yield CounterMetricFamily(
            "risk_decision_log_files_deleted", "Decision log files deleted to bound the total", stats.files_deleted
        )


class _DriftCollector(Collector):
    def __init__(self, drift: DriftMonitor) -> None:
        self.drift = drift

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "risk_model_drift_psi",
            "Population stability index over the last hour against the model's reference histograms",
            labels=["feature"],
        )
        for name, value in self.drift.values().items():
            gauge.add_metric([name], value)
        yield gauge
        yield GaugeMetricFamily("risk_model_drift_rows", "Scored transactions behind the drift values", self.drift.rows)


class _BreakerCollector(Collector):
    def __init__(self, store: WindowStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "risk_store_breaker_state",
            "Circuit breaker of each Redis target: 0 closed, 1 half-open, 2 open",
            labels=["target"],
        )
        for target, state in sorted(self.store.breakers().items()):
            gauge.add_metric([target], STATE_VALUES[state])
        yield gauge


class _FallbackCollector(Collector):
    def __init__(self, fallback: FallbackWindows) -> None:
        self.fallback = fallback

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "risk_fallback_answers", "Degraded answers that read this process's fallback windows", self.fallback.used
        )
        yield GaugeMetricFamily(
            "risk_fallback_entities", "Entity values kept by the fallback windows", self.fallback.entities()
        )
