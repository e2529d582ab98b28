"""`risk-engine serve --workers N`: N server processes sharing one port, supervised by this one.

Python gRPC serves one process's calls under one GIL; to use every core, N
worker processes each run a whole server (their own Redis connection pool,
compiled rules and model, reloader) and listen on the same port with
SO_REUSEPORT, the kernel spreading new connections among them (Linux).

The parent:

- checks the rule set, the model and the config first, so a bad one fails
  with the same message as with one process;
- checks the port is free with a socket *without* SO_REUSEPORT, so a server
  already on the port (even one that allows sharing) is detected, then holds
  it with an SO_REUSEPORT socket that never listens (no connection goes to it)
  until every worker has stopped;
- starts the workers (`spawn`: fresh interpreters, no gRPC state copied by
  fork) and waits until each serves; one that cannot start stops them all;
- restarts a worker that dies (at once, or after a pause that doubles up to
  30 s while it keeps dying within 10 s of starting);
- forwards SIGTERM / SIGINT (then stops restarting) and SIGHUP to every
  worker, and exits once all have stopped, killing those still running
  after the grace period plus 5 s.

Worker `i` (0..N-1) serves /metrics on the metrics port + i and the admin
service on the admin port + i (0: each picks a free one, logged), and writes
its decision log to `<decision log>/worker-<i>` (one folder per process).
More than one worker needs Redis: the in-process store would split the
window counts among the processes (`ServeConfig.check`).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from engine.config import ConfigError, ServeConfig
from engine.logs import configure
from engine.reload import load_serving
from engine.service.server import serve, warn_unknown_env

log = logging.getLogger("risk_engine.workers")

#: A worker that ran this long before dying is restarted at once.
STABLE_S = 10.0
MAX_BACKOFF_S = 30.0
START_TIMEOUT_S = 120.0


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Check that host:port is free, then hold it for the workers (SO_REUSEPORT, not listening)."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR (as gRPC sets it) passes connections left in TIME_WAIT, not a listening socket.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        port = probe.getsockname()[1]
    except OSError as exc:
        raise OSError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server on this port?)"
        ) from None
    finally:
        probe.close()
    held = socket.socket(family, kind, proto)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], port, *address[2:]))
    except OSError as exc:
        held.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return held, port


def worker_config(config: ServeConfig, index: int, port: int) -> ServeConfig:
    """What worker `index` serves with: the shared port, its own metrics / admin ports and decision log."""

    def shifted(base: int | None) -> int | None:
        return base if not base else base + index

    return replace(
        config,
        port=port,
        worker_index=index,
        metrics_port=shifted(config.metrics_port),
        admin_port=shifted(config.admin_port),
        decision_log=config.decision_log / f"worker-{index}" if config.decision_log is not None else None,
    )


def _worker_main(config: ServeConfig, ready: Event) -> None:
    configure(config.log_format if config.log_format in ("json", "text") else "text")
    serve(config, on_started=lambda _running: ready.set())


class _Worker:
    def __init__(self, index: int, config: ServeConfig) -> None:
        self.index = index
        self.config = config
        self.process: BaseProcess | None = None
        self.ready: Event | None = None
        self.started_at = 0.0
        self.backoff_s = 0.0
        self.restart_at: float | None = None

    def start(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self.ready = ctx.Event()
        self.process = ctx.Process(
            target=_worker_main, args=(self.config, self.ready), name=f"risk-worker-{self.index}", daemon=False
        )
        self.process.start()
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info(
            "worker %d started: pid %s",
            self.index,
            self.process.pid,
            extra={"event": "worker_start", "worker": self.index, "pid": self.process.pid},
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def signal(self, signum: int) -> None:
        if self.alive and self.process is not None and self.process.pid is not None:
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass


def _check_loads(config: ServeConfig) -> None:
    """Load the rule set and the models once here: a bad one fails as it does with one process."""
    load_serving(config.rules, config.model, explain=False)


def supervise(config: ServeConfig) -> None:
    """Run `config.workers` server processes on one port until SIGTERM / SIGINT, restarting any that dies."""
    warn_unknown_env()
    config.check()
    _check_loads(config)
    if config.decision_log is not None:
        try:  # the workers' logs are folders of it: private like each of them
            config.decision_log.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"--decision-log / RISK_DECISION_LOG {config.decision_log}: {exc}") from None
    # The secrets the workers share, generated here once (beside the data) rather than raced for by each.
    if not config.clear_ids or config.card_data == "mask":
        config.pseudonyms()
    if config.admin_port is not None:
        config.admin_token()
    held, port = reserve_port(config.host, config.port)
    ctx = multiprocessing.get_context("spawn")
    workers = [_Worker(i, worker_config(config, i, port)) for i in range(config.workers)]
    stopping: list[float] = []  # when the stop began

    def on_stop(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            log.info(
                "signal %d: stopping %d workers (grace %.1f s)",
                signum,
                len(workers),
                config.grace_s,
                extra={"event": "stop", "signal": signum},
            )
        for w in workers:
            w.signal(signal.SIGTERM)

    def on_hangup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: forwarded to the workers", extra={"event": "reload"})
        for w in workers:
            w.signal(signal.SIGHUP)

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        for w in workers:
            w.start(ctx)
        _wait_ready(workers, stopping)
        log.info(
            "serving on %s:%d with %d workers (pids %s)",
            config.host,
            port,
            len(workers),
            ", ".join(str(w.process.pid) for w in workers if w.process is not None),
            extra={"event": "start", "port": port, "workers": [w.process.pid for w in workers if w.process]},
        )
        _supervise(workers, ctx, stopping, config.grace_s)
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        for w in workers:
            if w.process is not None:
                w.process.join(config.grace_s + 5.0)
                if w.process.is_alive():
                    w.process.kill()
        held.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("stopped", extra={"event": "stop"})


def _wait_ready(workers: list[_Worker], stopping: list[float]) -> None:
    """Until every worker serves; raise if one exits first (it logged why) or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for w in workers:
        assert w.ready is not None and w.process is not None
        while not w.ready.wait(0.1):
            if stopping:
                return
            if not w.process.is_alive():
                raise OSError(f"worker {w.index} exited during start-up (exit code {w.process.exitcode}): see its log")
            if time.monotonic() > deadline:
                raise OSError(f"worker {w.index} did not start within {START_TIMEOUT_S:.0f} s")


def _supervise(
    workers: list[_Worker], ctx: multiprocessing.context.SpawnContext, stopping: list[float], grace_s: float
) -> None:
    while True:
        if stopping:
            if not any(w.alive for w in workers):
                return
            if time.monotonic() - stopping[0] > grace_s + 5.0:
                for w in workers:
                    if w.alive and w.process is not None:
                        log.warning("worker %d still running after the grace period: killed", w.index)
                        w.process.kill()
                return
        sentinels = [w.process.sentinel for w in workers if w.alive and w.process is not None]
        multiprocessing.connection.wait(sentinels, timeout=0.2)
        if stopping:
            continue
        now = time.monotonic()
        for w in workers:
            if w.alive or w.process is None:
                continue
            if w.restart_at is None:
                ran = now - w.started_at
                w.backoff_s = 0.0 if ran >= STABLE_S else min(MAX_BACKOFF_S, max(0.5, 2 * w.backoff_s))
                w.restart_at = now + w.backoff_s
                log.warning(
                    "worker %d (pid %s) exited with code %s after %.1f s: restarting in %.1f s",
                    w.index,
                    w.process.pid,
                    w.process.exitcode,
                    ran,
                    w.backoff_s,
                    extra={"event": "worker_exit", "worker": w.index, "exit_code": w.process.exitcode},
                )
            if now >= w.restart_at:
                w.start(ctx)
