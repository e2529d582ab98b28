"""Building and running the gRPC server: engine, health, reflection, graceful shutdown.

Health (`grpc.health.v1`): NOT_SERVING until the rule set and the model are
loaded, SERVING after, NOT_SERVING again once a shutdown starts. Every health
answer carries trailing metadata naming what serves and how the last reload
went (`risk-ruleset-version`, `risk-ruleset-digest`, `risk-model-version`,
`risk-challenger`: the challenger model and its mode or '', `risk-last-reload`:
`ok` or `failed <unix time>`: no path and no error text, those are admin `Status`'s). SIGTERM or
SIGINT stop accepting new calls and let in-flight ones finish within the
grace period; SIGHUP reloads the rule set at once (it is also watched).

Also here: TLS or mutual TLS on the scoring port (`tls_cert`, `tls_key`,
`tls_client_ca`), the admin service on its own port (`engine.service.admin`),
the decision log (`engine.decision_log`) written before each fresh answer,
admission control (`engine.service.admission`: overload is shed), the
store's circuit breakers and the fallback windows of degraded answers
(`engine.windows.breaker`, `engine.windows.fallback`), and the metrics of
requests, latency, shed calls, degraded causes and store errors.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.config import ConfigError, ServeConfig, unknown_env
from engine.decision_log import DecisionLog, RecordPolicy
from engine.model.drift import DriftMonitor
from engine.pipeline import Pipeline
from engine.privacy import Pseudonyms, set_active
from engine.reload import Reloader, ReloadStatus, load_serving
from engine.service.admin import AdminAuth, AdminServicer
from engine.service.admission import Admission, AdmissionPolicy
from engine.service.metrics import Metrics
from engine.service.pb import admin_pb2, admin_pb2_grpc, risk_pb2
from engine.service.servicer import RiskEngineServicer
from engine.windows.breaker import CLOSED, OPEN, BreakerPolicy
from engine.windows.fallback import FallbackPolicy, FallbackWindows
from engine.windows.memory import MemoryStore
from engine.windows.redis_cluster import RedisClusterStore
from engine.windows.redis_store import OnBreaker, RedisStore
from engine.windows.store import WindowStore

log = logging.getLogger("risk_engine.server")
SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["RiskEngine"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


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
        # Whether the last reload failed and when, never why: the reason names files and paths, and is
        # admin's to tell (Status); anyone who reaches the scoring port reads this.
        last = "ok" if status.last_attempt_ok else f"failed {status.last_failure_at:.0f}"
        return (
            ("risk-ruleset-version", _ascii(status.ruleset_version)),
            ("risk-ruleset-digest", status.ruleset_digest),
            ("risk-model-version", _ascii(status.model_version)),
            ("risk-challenger", _ascii(status.challenger)),
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
    decisions: DecisionLog | None = None
    admin_server: grpc.Server | None = None
    admin_port: int | None = None
    fallback: FallbackWindows | None = None
    drift: DriftMonitor | None = None

    def stop(self, grace_s: float) -> None:
        self.reloader.stop()
        if self.drift is not None:
            self.drift.stop()
        self.health.enter_graceful_shutdown()
        if self.admin_server is not None:
            self.admin_server.stop(0)
        self.server.stop(grace_s).wait()
        self.store.close()
        if self.decisions is not None:
            self.decisions.close()
        self.metrics.close()


def pseudonym_keys(config: ServeConfig) -> Pseudonyms | None:
    """The key of the pseudonyms of ids (None: ids kept in clear and card data refused), with a log line."""
    if config.clear_ids and config.card_data != "mask":
        log.warning(
            "ids are kept in clear in the window store and the decision log (RISK_CLEAR_IDS)",
            extra={"event": "config"},
        )
        return None
    keys, source = config.pseudonyms()
    log.info(
        "pseudonym key from %s, fingerprint %s: ids are stored as keyed hashes (README, Data protection)",
        source,
        keys.fingerprint(),
        extra={"event": "config", "key_fingerprint": keys.fingerprint()},
    )
    return keys


def make_store(
    config: ServeConfig, on_breaker: OnBreaker | None = None, pseudonyms: Pseudonyms | None = None
) -> WindowStore:
    delay = config.limits.max_event_age_s + config.limits.max_event_lead_s
    if config.redis_url:
        kind = RedisClusterStore if config.redis_url.startswith("redis+cluster://") else RedisStore
        return kind(
            config.redis_url,
            pseudonyms=pseudonyms,
            prefix=config.redis_prefix,
            budget_s=config.redis_budget_ms / 1000.0,
            breaker=BreakerPolicy(
                window_s=config.breaker_window_s,
                min_failures=config.breaker_min_failures,
                failure_rate=config.breaker_failure_rate,
                open_s=config.breaker_open_ms / 1000.0,
            ),
            on_breaker=on_breaker,
            idempotency_ttl_s=config.idempotency_ttl_s,
            max_connections=max(config.threads, 8),
            max_event_delay_s=delay,
            write_behind=config.redis_write_behind,
        )
    return MemoryStore(idempotency_ttl_s=config.idempotency_ttl_s, max_event_delay_s=delay)


class DegradedLog:
    """Logs degraded answers at most once a second per cause, with the count since the last line.

    During a Redis outage every call is degraded: one line per call would flood the log.
    Subclasses log other events the same way (`ShedLog`).
    """

    event = "degraded"
    template = "degraded answers (%d since last report): %s unavailable: %s"

    def __init__(self, interval_s: float = 1.0, count: Callable[[str, str], None] | None = None) -> None:
        """`count(cause, kind)` sees every event, the log line only one per interval and cause."""
        self.interval_s = interval_s
        self.count = count
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, cause: str, detail: str, kind: str = "") -> None:
        if self.count is not None:
            self.count(cause, kind)
        now = time.monotonic()
        with self._lock:
            self._count[cause] = self._count.get(cause, 0) + 1
            if now - self._last.get(cause, -1e9) < self.interval_s:
                return
            count, self._count[cause] = self._count[cause], 0
            self._last[cause] = now
        log.warning(self.template, count, cause, detail, extra={"event": self.event, "cause": cause, "count": count})


class ShedLog(DegradedLog):
    """Logs shed calls (RESOURCE_EXHAUSTED) at most once a second per cause."""

    event = "shed"
    template = "calls shed (%d since last report), cause %s: %s"


def breaker_log(count: Callable[[str, str], None] | None = None) -> OnBreaker:
    """Logs a target's breaker opening and closing (not each half-open probe: a bounded rate)."""
    opened_at: dict[str, float] = {}

    def on_change(target: str, old: str, new: str) -> None:
        if count is not None:
            count(target, new)
        if new == OPEN and old == CLOSED:
            opened_at[target] = time.monotonic()
            log.warning(
                "redis %s: circuit breaker open (failing fast; a probe call every breaker_open_ms)",
                target,
                extra={"event": "breaker", "target": target, "state": new},
            )
        elif new == CLOSED:
            down = time.monotonic() - opened_at.pop(target, time.monotonic())
            log.info(
                "redis %s: circuit breaker closed after %.1f s",
                target,
                down,
                extra={"event": "breaker", "target": target, "state": new, "open_s": round(down, 3)},
            )

    return on_change


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials of the scoring port (None: plaintext); mutual TLS when a client CA is set."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        cert = config.tls_cert.read_bytes()
        key = config.tls_key.read_bytes()
        ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from None
    for what, data, marker in (("--tls-cert", cert, b"CERTIFICATE"), ("--tls-key", key, b"PRIVATE KEY")):
        if b"-----BEGIN" not in data or marker not in data:
            raise ConfigError(f"{what}: not a PEM {marker.decode().lower()}")
    if ca is not None and b"CERTIFICATE" not in ca:
        raise ConfigError("--tls-client-ca: not a PEM certificate bundle")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def make_decision_log(config: ServeConfig, metrics: Metrics, policy: RecordPolicy | None = None) -> DecisionLog | None:
    if config.decision_log is None:
        return None
    try:
        dlog = DecisionLog(
            config.decision_log,
            policy=policy,
            max_file_bytes=int(config.decision_log_max_file_mb * 1024 * 1024),
            rotate_s=config.decision_log_rotate_s,
            max_total_bytes=int(config.decision_log_max_total_mb * 1024 * 1024),
        )
    except OSError as exc:
        raise ConfigError(f"--decision-log / RISK_DECISION_LOG {config.decision_log}: {exc}") from None
    if not os.access(config.decision_log, os.W_OK):
        dlog.close()
        raise ConfigError(f"--decision-log / RISK_DECISION_LOG {config.decision_log}: not writable")
    metrics.watch_decision_log(dlog)
    return dlog


def start(config: ServeConfig) -> Running:
    """Load everything, then start serving; raise on a bad rule set, model or config."""
    config.check()
    credentials = server_credentials(config)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="score"),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        # No SO_REUSEPORT: a second server on the same port must fail, not silently
        # split traffic (and, with the in-process store, window state). Except in the
        # workers of `--workers N`, which share the port their parent checked was free
        # and holds (engine.service.workers).
        options=[
            ("grpc.so_reuseport", 1 if config.worker_index is not None else 0),
            ("grpc.max_receive_message_length", 1024 * 1024),
        ],
    )
    health_servicer = VersionedHealth()
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    ruleset, model, challenger = load_serving(config.rules, config.model)
    keys = pseudonym_keys(config)
    set_active(keys)  # lists holding pseudonyms (blocked from the review desk) match the clear ids through it
    limits = replace(config.limits, card_mask=keys) if config.card_data == "mask" else config.limits
    metrics = Metrics()
    store = make_store(config, breaker_log(metrics.on_breaker), None if config.clear_ids else keys)
    fallback = None
    if config.redis_url and config.fallback_horizon_s > 0:
        fallback = FallbackWindows(
            FallbackPolicy(horizon_ms=int(config.fallback_horizon_s * 1000), max_entities=config.fallback_max_entities),
            max_event_delay_s=config.limits.max_event_lead_s,
        )
        metrics.watch_fallback(fallback)
    drift = DriftMonitor(interval_s=config.drift_interval_s) if config.drift_interval_s > 0 else None
    if drift is not None:
        metrics.watch_drift(drift)
    pipeline = Pipeline(
        ruleset,
        model,
        store,
        limits=limits,
        on_degraded=DegradedLog(count=metrics.on_degraded),
        challenger=challenger,
        fallback=fallback,
        drift=drift,
    )
    decisions = make_decision_log(
        config,
        metrics,
        RecordPolicy(
            pseudonyms=None if config.clear_ids else keys,
            kept_attributes=lambda: pipeline.snapshot.ruleset.keep_attributes,
        ),
    )
    metrics.watch_store(store)
    if store.records is not None:
        metrics.watch_records(store.records)
    admission = Admission(
        AdmissionPolicy(max_queue_s=config.max_queue_ms / 1000.0),
        on_shed=ShedLog(count=metrics.on_shed),
        observe_wait=metrics.observe_queue_wait,
    )
    admission.watch(server)

    def on_change(status: ReloadStatus) -> None:
        health_servicer.status = status
        metrics.set_status(status)

    archive = config.archive
    if archive is not None:
        try:
            archive.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            if decisions is not None:
                decisions.close()
            raise ConfigError(f"--ruleset-archive / RISK_RULESET_ARCHIVE {archive}: {exc}") from None
    reloader = Reloader(
        pipeline, config.rules, config.model, interval_s=config.reload_interval_s or 1.0, archive=archive
    )
    on_change(reloader.status)
    reloader.on_change = on_change
    servicer = RiskEngineServicer(
        pipeline,
        metrics.observe,
        observe_steps=metrics.observe_steps,
        on_scored=decisions.record if decisions is not None else None,
        on_request=metrics.request,
        admission=admission,
    )
    server.add_generic_rpc_handlers((servicer.handler(),))
    address = f"{config.host}:{config.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        if decisions is not None:
            decisions.close()
        raise OSError(f"cannot listen on {address}")
    admin_server, admin_port = None, None
    if config.admin_port is not None:
        admin_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="admin"),
            maximum_concurrent_rpcs=4,
            options=[("grpc.so_reuseport", 0)],
        )
        token, created = config.admin_token()
        log.info(
            "admin calls need the bearer token in %s (%s)%s",
            config.admin_token_path,
            "generated now" if created else "read",
            f" or a client certificate named {', '.join(config.admin_allow)}" if config.admin_allow else "",
            extra={"event": "config", "admin_token_file": str(config.admin_token_path)},
        )
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(reloader, store.name, lambda: decisions, AdminAuth(token, config.admin_allow)),
            admin_server,
        )
        admin_address = f"{config.admin_host}:{config.admin_port}"
        # Beyond loopback the config check demands mutual TLS: the same credentials as the scoring port.
        admin_port = (
            admin_server.add_secure_port(admin_address, credentials)
            if credentials is not None and config.tls_client_ca is not None
            else admin_server.add_insecure_port(admin_address)
        )
        if admin_port == 0:
            if decisions is not None:
                decisions.close()
            raise OSError(f"cannot listen on {admin_address} (admin)")
    if not store.warm_up(ruleset.windows):  # connects and loads the scripts before the first call needs them
        log.warning("the window store does not answer yet: calls are degraded until it does", extra={"event": "start"})
    metrics_port = None
    if config.metrics_port is not None:
        metrics_port = metrics.serve(config.metrics_host, config.metrics_port)
    server.start()
    if admin_server is not None:
        admin_server.start()
    if config.reload_interval_s > 0:
        reloader.start()
    if drift is not None:
        drift.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving on %s:%d rules=%s (%s) model=%s store=%s metrics=%s admin=%s tls=%s decision_log=%s",
        config.host,
        port,
        ruleset.version,
        ruleset.digest,
        model.version,
        store.name,
        f"{config.metrics_host}:{metrics_port}" if metrics_port is not None else "off",
        f"{config.admin_host}:{admin_port}" if admin_port is not None else "off",
        "mutual" if config.tls_client_ca else ("on" if credentials else "off"),
        config.decision_log or "off",
        extra={
            "event": "start",
            "port": port,
            "ruleset_version": ruleset.version,
            "ruleset_digest": ruleset.digest,
            "model_version": model.version,
            "store": store.name,
            "metrics_port": metrics_port,
            "admin_port": admin_port,
            "config": config.summary(),
        },
    )
    return Running(
        server,
        port,
        pipeline,
        health_servicer,
        store,
        reloader,
        metrics,
        metrics_port,
        decisions,
        admin_server,
        admin_port,
        fallback,
        drift,
    )


#: Full (oldest-generation) collections only after this many middle-generation ones: in effect never.
GC_FULL_COLLECTION_EVERY = 1_000_000


def tune_gc() -> None:
    """Keep Python's full garbage collections off the payment path.

    A full collection walks every tracked object of the process while
    holding the GIL: with the in-process window store's series that is
    hundreds of milliseconds (measured: 268 ms after 51,000 transactions,
    and a 0.8 s stall in the load test), paid by whichever request is
    running. Serving creates little cyclic garbage (reference counting frees
    the rest), so: everything loaded so far is frozen out of collections
    (`gc.freeze`), and full collections are pushed back so far that they
    do not happen, while the young generations are still collected as
    usual. The cost: cyclic garbage that survives into the oldest
    generation (a replaced rule set's, for instance) is not reclaimed.
    `RISK_GC_TUNING=off` keeps Python's defaults.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_COLLECTION_EVERY)


def pin_to_one_core(index: int, processes: int = 1) -> int | None:
    """Keep this process's threads on one core: the index-th it may use, of `processes` server processes.

    A server process is GIL-bound: one thread runs Python at a time. Spread
    over two cores, every hand-off (the gRPC poller queueing a call for a
    worker thread, a worker waking the next) wakes a thread on the other core
    that then waits for the GIL, and the two ping-pong: measured with the
    load generator on 2 cores, 20-24 context switches per request and a third
    of the server's CPU. On one core the hand-offs are cheap (7 per request),
    and Redis or the client use the other core. At least one core is left
    unpinned: with as many server processes as cores, each pinned, Redis had
    no core to run on when they were busy (measured with `--workers 2` on 2
    cores: its answers came late, calls degraded and queued), so then none
    is pinned. Threads started later inherit the mask. Returns the core, or
    None when nothing was pinned (too few cores, or no `sched_setaffinity`).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if processes >= len(allowed):
        return None
    core = allowed[index % len(allowed)]
    os.sched_setaffinity(0, {core})
    return core


def warn_unknown_env() -> None:
    """Log the RISK_* environment variables that no setting reads (a typo would otherwise go unnoticed)."""
    unknown = unknown_env()
    if unknown:
        log.warning(
            "unknown environment variable(s) ignored: %s (see `risk-engine serve --help`)",
            ", ".join(unknown),
            extra={"event": "config"},
        )


def serve(config: ServeConfig, on_started: Callable[[Running], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and exit.

    One process: `risk-engine serve --workers N` runs N of these under
    `engine.service.workers.supervise` instead.
    """
    warn_unknown_env()
    if config.cpu_affinity:
        core = pin_to_one_core(config.worker_index or 0, config.workers)
        if core is not None:
            log.info(
                "pinned to core %d (RISK_CPU_AFFINITY=off lets it move)", core, extra={"event": "config", "core": core}
            )
    running = start(config)
    if config.gc_tuning:
        tune_gc()
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info(
            "signal %d: draining in-flight calls (grace %.1f s)",
            signum,
            config.grace_s,
            extra={"event": "stop", "signal": signum},
        )
        stop.set()

    def hangup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: reloading the rule set", extra={"event": "reload"})
        threading.Thread(target=running.reloader.reload_now, name="sighup-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, hangup)
    if on_started is not None:
        on_started(running)
    while not stop.wait(0.5):
        pass
    running.stop(config.grace_s)
    log.info("stopped", extra={"event": "stop"})
