"""Building and running the gRPC server: engine, health, reflection, graceful shutdown.

Health (`grpc.health.v1`): NOT_SERVING until the rule set and the model are
loaded, SERVING after, NOT_SERVING again once a shutdown starts. Every health
answer carries trailing metadata naming what serves and how the last reload
went (`risk-ruleset-version`, `risk-ruleset-digest`, `risk-model-version`,
`risk-last-reload`: `ok` or `failed <unix time>: <first error>`). SIGTERM or
SIGINT stop accepting new calls and let in-flight ones finish within the
grace period; SIGHUP reloads the rule set at once (it is also watched).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.config import ServeConfig
from engine.model.predictor import load_model
from engine.pipeline import Pipeline
from engine.reload import Reloader, ReloadStatus
from engine.rules.ruleset import load_ruleset
from engine.service.metrics import Metrics
from engine.service.pb import risk_pb2
from engine.service.servicer import RiskEngineServicer
from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from engine.windows.store import WindowStore

log = logging.getLogger("risk_engine.server")
SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["RiskEngine"].full_name


def _ascii(text: str, limit: int = 300) -> str:
    """Metadata values must be printable ASCII."""
    flat = " ".join(text.split())
    return "".join(c if " " <= c <= "~" else "?" for c in flat)[:limit]


class VersionedHealth(health.HealthServicer):
    """The standard health service, whose answers also say what serves (trailing metadata)."""

    def __init__(self) -> None:
        super().__init__()
        self.status: ReloadStatus | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        status = self.status
        if status is None:
            return ()
        last = "ok" if status.last_attempt_ok else f"failed {status.last_failure_at:.0f}: {status.last_failure}"
        return (
            ("risk-ruleset-version", _ascii(status.ruleset_version)),
            ("risk-ruleset-digest", status.ruleset_digest),
            ("risk-model-version", _ascii(status.model_version)),
            ("risk-last-reload", _ascii(last)),
        )

    def Check(  # noqa: N802 - the gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        context.set_trailing_metadata(self.metadata())
        return super().Check(request, context)


@dataclass
class Running:
    server: grpc.Server
    port: int
    pipeline: Pipeline
    health: VersionedHealth
    store: WindowStore
    reloader: Reloader
    metrics: Metrics
    metrics_port: int | None

    def stop(self, grace_s: float) -> None:
        self.reloader.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.store.close()
        self.metrics.close()


def make_store(config: ServeConfig) -> WindowStore:
    delay = config.limits.max_event_age_s + config.limits.max_event_lead_s
    if config.redis_url:
        return RedisStore(
            config.redis_url,
            prefix=config.redis_prefix,
            budget_s=config.redis_budget_ms / 1000.0,
            cooldown_s=config.redis_cooldown_ms / 1000.0,
            idempotency_ttl_s=config.idempotency_ttl_s,
            max_connections=max(config.threads, 8),
            max_event_delay_s=delay,
        )
    return MemoryStore(idempotency_ttl_s=config.idempotency_ttl_s, max_event_delay_s=delay)


class DegradedLog:
    """Logs degraded answers at most once a second per cause, with the count since the last line.

    During a Redis outage every call is degraded: one line per call would flood the log.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, cause: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._count[cause] = self._count.get(cause, 0) + 1
            if now - self._last.get(cause, -1e9) < self.interval_s:
                return
            count, self._count[cause] = self._count[cause], 0
            self._last[cause] = now
        log.warning("degraded answers (%d since last report): %s unavailable: %s", count, cause, detail)


def start(config: ServeConfig) -> Running:
    """Load everything, then start serving; raise on a bad rule set, model or config."""
    config.check()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="score"),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        # No SO_REUSEPORT: a second server on the same port must fail, not silently
        # split traffic (and, with the in-process store, window state).
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 1024 * 1024)],
    )
    health_servicer = VersionedHealth()
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    ruleset = load_ruleset(config.rules)
    model = load_model(config.model, ruleset)
    store = make_store(config)
    pipeline = Pipeline(ruleset, model, store, limits=config.limits, on_degraded=DegradedLog())
    metrics = Metrics()

    def on_change(status: ReloadStatus) -> None:
        health_servicer.status = status
        metrics.set_status(status)

    reloader = Reloader(pipeline, config.rules, config.model, interval_s=config.reload_interval_s or 1.0)
    on_change(reloader.status)
    reloader.on_change = on_change
    server.add_generic_rpc_handlers((RiskEngineServicer(pipeline, metrics.observe).handler(),))
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    metrics_port = None
    if config.metrics_port is not None:
        metrics_port = metrics.serve(config.metrics_host, config.metrics_port)
    server.start()
    if config.reload_interval_s > 0:
        reloader.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving on %s:%d rules=%s (%s) model=%s store=%s metrics=%s",
        config.host,
        port,
        ruleset.version,
        ruleset.digest,
        model.version,
        store.name,
        f"{config.metrics_host}:{metrics_port}" if metrics_port is not None else "off",
    )
    return Running(server, port, pipeline, health_servicer, store, reloader, metrics, metrics_port)


def serve(config: ServeConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and exit."""
    running = start(config)
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("signal %d: draining in-flight calls (grace %.1f s)", signum, config.grace_s)
        stop.set()

    def hangup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: reloading the rule set")
        threading.Thread(target=running.reloader.reload_now, name="sighup-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, hangup)
    while not stop.wait(0.5):
        pass
    running.stop(config.grace_s)
    log.info("stopped")
