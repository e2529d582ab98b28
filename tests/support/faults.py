"""Faults under steady load, with real processes: the harness of tests/integration/test_faults.py and
benchmarks/soak.py.

A `risk-engine serve` process (Redis store, decision log, admin port, rules
and model registry copied to a scratch folder so that they can be broken)
takes steady traffic from a few client threads, each call with a deadline,
while `run_faults` injects, one after the other:

| fault | how |
|---|---|
| `redis_stop` | kill redis-server, keep it down, start it again (empty: no persistence) |
| `redis_pause` | `CLIENT PAUSE` (all commands) for longer than the budget |
| `redis_sleep` | `DEBUG SLEEP`: Redis stalls mid-command |
| `redis_restart` | kill and start at once |
| `corrupt_model` | a model folder whose model.txt is garbage, promoted (models/PROMOTED) |
| `broken_rules` | a syntax error pushed into rules.yaml |
| `sigterm` | SIGTERM to the server under load, then a new server process |

For each phase it counts answers (OK), degraded answers, errors by status
code and the slowest call, measures how long the service took to return to
normal after the fault ended, and checks that no window was double counted:
a probe card gets one new transaction per tick during the phase; after
recovery every probe transaction is sent again (same id, same content) and a
last fresh one must see `card_count_10m` = distinct probe transactions + 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.service.pb import admin_pb2, admin_pb2_grpc, risk_pb2, risk_pb2_grpc
from tests.support.redis import free_port

ROOT = Path(__file__).resolve().parent.parent


class RedisLike(Protocol):
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...


def make_request(card: str, tid: str | None = None, event_ms: int | None = None) -> risk_pb2.ScoreRequest:
    ms = event_ms if event_ms is not None else int(time.time() * 1000)
    t = risk_pb2.Transaction(
        transaction_id=tid or f"load-{uuid.uuid4().hex}",
        amount_minor=2_500,
        currency="EUR",
        user_id=f"u-{card}",
        card_id=card,
        device_id=f"d-{card}",
        ip="85.214.132.117",
        country="DE",
        merchant_id="m-1",
        channel=risk_pb2.CHANNEL_APP,
    )
    t.event_time.CopyFrom(Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000))
    return risk_pb2.ScoreRequest(transaction=t)


@dataclass
class PhaseCounts:
    calls: int = 0
    ok: int = 0
    degraded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    max_latency_ms: float = 0.0
    recovery_s: float = 0.0
    probe_distinct: int = 0
    probe_count_after: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "degraded": self.degraded,
            "errors": dict(self.errors),
            "max_latency_ms": round(self.max_latency_ms, 1),
            "recovery_s": round(self.recovery_s, 2),
            "probe_distinct": self.probe_distinct,
            "probe_count_after": self.probe_count_after,
        }


class Server:
    """A `risk-engine serve` process on scratch copies of the rules and the model registry."""

    def __init__(
        self,
        workdir: Path,
        rules: Path,
        registry: Path,
        redis_url: str,
        grace_s: float = 2.0,
        threads: int = 8,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.threads = threads
        self.env = env or {}
        self.rules = workdir / "rules"
        self.registry = workdir / "models"
        shutil.copytree(rules, self.rules)
        shutil.copytree(registry, self.registry)
        self.redis_url = redis_url
        self.grace_s = grace_s
        self.port = free_port()
        self.admin_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "server.log"

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RISK_GRACE_S": str(self.grace_s), **self.env}
        cmd = [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            *("--port", str(self.port), "--admin-port", str(self.admin_port)),
            *("--rules", str(self.rules), "--model", str(self.registry), "--redis-url", self.redis_url),
            *("--metrics-port", str(self.metrics_port), "--reload-interval", "0.2", "--threads", str(self.threads)),
            *("--decision-log", str(self.workdir / "decisions"), "--log-format", "json"),
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if (
                        health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the server did not become SERVING; see {self.log}")
                time.sleep(0.1)
        finally:
            channel.close()

    def metrics(self) -> str:
        """The server's /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def status(self) -> admin_pb2.StatusResponse:
        with grpc.insecure_channel(f"127.0.0.1:{self.admin_port}") as channel:
            token = (self.workdir / "decisions" / "admin.token").read_text().strip()  # generated by the server
            return admin_pb2_grpc.AdminStub(channel).Status(
                admin_pb2.StatusRequest(), timeout=5, metadata=(("authorization", f"Bearer {token}"),)
            )

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(self.grace_s + 15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class Load:
    """Steady traffic from `threads` client threads; counts land in the current phase."""

    def __init__(self, port: int, threads: int = 4, pause_s: float = 0.01, deadline_s: float = 0.25) -> None:
        self.port = port
        self.threads = threads
        self.pause_s = pause_s
        self.deadline_s = deadline_s
        self.phases: dict[str, PhaseCounts] = {}
        self.current = PhaseCounts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def phase(self, name: str) -> PhaseCounts:
        with self._lock:
            self.current = self.phases.setdefault(name, PhaseCounts())
            return self.current

    def call(self, stub: risk_pb2_grpc.RiskEngineStub, req: risk_pb2.ScoreRequest) -> risk_pb2.ScoreResponse | None:
        started = time.perf_counter()
        try:
            resp = stub.Score(req, timeout=self.deadline_s)
            code = None
        except grpc.RpcError as exc:
            resp, code = None, exc.code().name
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            c = self.current
            c.calls += 1
            c.max_latency_ms = max(c.max_latency_ms, elapsed_ms)
            if code is not None:
                c.errors[code] += 1
            else:
                c.ok += 1
                c.degraded += bool(resp is not None and resp.degraded)
        return resp

    def _run(self, index: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        n = 0
        while not self._stop.is_set():
            n += 1
            self.call(stub, make_request(f"card-{index}-{n % 50}"))
            time.sleep(self.pause_s)
        channel.close()

    def start(self) -> None:
        self._stop.clear()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(10)


class Probe:
    """One new transaction of a dedicated card per tick, to check counting after recovery."""

    def __init__(self, load: Load, port: int, name: str, tick_s: float = 0.05) -> None:
        self.load = load
        self.card = f"probe-{name}-{uuid.uuid4().hex[:6]}"
        self.sent: list[risk_pb2.ScoreRequest] = []
        self.retried_degraded = 0
        self.tick_s = tick_s
        self.port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        while not self._stop.is_set():
            req = make_request(self.card, tid=f"{self.card}-{len(self.sent)}")
            self.sent.append(req)
            self.load.call(stub, req)
            time.sleep(self.tick_s)
        channel.close()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def verify(self, port: int) -> tuple[int, int]:
        """Retry every probe transaction, then one fresh: (distinct ids, the fresh one's card_count_10m)."""
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = risk_pb2_grpc.RiskEngineStub(channel)
            for req in self.sent:
                for _attempt in range(20):  # a gateway retries a degraded answer; it counts nothing twice
                    if not stub.Score(req, timeout=2).degraded:
                        break
                    self.retried_degraded += 1
                    time.sleep(0.1)
                else:
                    raise AssertionError(f"retries of {req.transaction.transaction_id} stay degraded")
            fresh = stub.Score(make_request(self.card, tid=f"{self.card}-final"), timeout=2)
        return len(self.sent), int(fresh.features["card_count_10m"])


def wait_normal(port: int, timeout_s: float = 10.0) -> float:
    """Seconds until a call is answered not degraded."""
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        while True:
            try:
                if not stub.Score(make_request("recovery-check"), timeout=1).degraded:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"the service did not return to normal within {timeout_s} s")
            time.sleep(0.05)


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_faults(
    server: Server,
    redis_proc: RedisLike,
    hold_s: float = 1.5,
    log: Callable[[str], None] = print,
    threads: int = 4,
    pause_s: float = 0.01,
) -> dict[str, PhaseCounts]:
    """Every fault in turn under steady load; returns the counts per phase (module docstring)."""
    load = Load(server.port, threads=threads, pause_s=pause_s)
    load.start()

    def phase(name: str, inject: Callable[[], None], restore: Callable[[], None]) -> None:
        counts = load.phase(name)
        with Probe(load, server.port, name) as probe:
            time.sleep(hold_s / 3)
            inject()
            time.sleep(hold_s)
            restore()
            counts.recovery_s = wait_normal(server.port)
            time.sleep(hold_s / 3)
        load.phase(f"{name}:after")
        counts.probe_distinct, counts.probe_count_after = probe.verify(server.port)
        log(f"{name}: {counts.as_dict()}")

    try:
        load.phase("baseline")
        time.sleep(hold_s)

        phase("redis_stop", redis_proc.stop, redis_proc.start)

        def pause() -> None:
            with redis.Redis(port=redis_proc.port, socket_timeout=5) as admin:
                admin.execute_command("CLIENT", "PAUSE", str(int(hold_s * 1000)), "ALL")

        phase("redis_pause", pause, lambda: None)

        sleeper: list[threading.Thread] = []

        def sleep() -> None:
            t = threading.Thread(
                target=lambda: redis.Redis(port=redis_proc.port, socket_timeout=hold_s + 5).execute_command(
                    "DEBUG", "SLEEP", str(hold_s)
                )
            )
            t.start()
            sleeper.append(t)

        phase("redis_sleep", sleep, lambda: sleeper[0].join())

        def restart() -> None:
            redis_proc.stop()
            redis_proc.start()

        phase("redis_restart", restart, lambda: None)

        promoted = server.registry / "PROMOTED"
        good = promoted.read_text()

        def corrupt_model() -> None:
            folder = server.registry / "corrupt-model"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(server.registry / good.strip(), folder)
            (folder / "model.txt").write_bytes(os.urandom(2048))
            promoted.write_text("corrupt-model\n")
            wait_for(lambda: not server.status().last_reload_ok, what="the corrupt model to be refused")

        def restore_model() -> None:
            promoted.write_text(good)
            wait_for(lambda: server.status().last_reload_ok, what="the good model to be reloaded")

        phase("corrupt_model", corrupt_model, restore_model)

        rules_file = server.rules / "rules.yaml"
        rules_text = rules_file.read_text()

        def break_rules() -> None:
            rules_file.write_text(rules_text + "\n  - id: broken\n    condition: 'amount >'\n  : : :\n")
            wait_for(lambda: not server.status().last_reload_ok, what="the broken rule set to be refused")

        def restore_rules() -> None:
            rules_file.write_text(rules_text)
            wait_for(lambda: server.status().last_reload_ok, what="the rule set to be reloaded")

        phase("broken_rules", break_rules, restore_rules)

        exit_codes: list[int] = []

        def sigterm() -> None:
            exit_codes.append(server.terminate())

        def restart_server() -> None:
            server.start()

        phase("sigterm", sigterm, restart_server)
        if exit_codes != [0]:
            raise AssertionError(f"the server exited with {exit_codes} on SIGTERM")
    finally:
        load.stop()
    return {k: v for k, v in load.phases.items() if not k.endswith(":after")}
