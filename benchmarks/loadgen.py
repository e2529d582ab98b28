"""Load generator for `risk.v1.RiskEngine/Score`: throughput and latency under load, against the gRPC ceiling.

    python benchmarks/loadgen.py                      # = make bench: the whole sweep, ~6 minutes
    python benchmarks/loadgen.py --quick              # shorter phases, fewer points (a smoke run)
    python benchmarks/loadgen.py --targets trivial,redis --duration 10 --warmup 3

What one run does, with everything it needs started here and stopped at the end:

- builds a pool of unique requests from the traffic simulator (engine.offline.synthetic: one
  simulated day of many users, moved to the present, serialized once, so the client spends no
  time building messages and no request is ever a retry);
- per target (the trivial server of benchmarks/trivial_server.py, which answers a fixed response
  to the same request message; `risk-engine serve` with the shipped rules and model on a fresh
  redis-server; the same with the in-process store), started as a separate process:
  * closed loop (N requests in flight, split over P client processes) at rising N: the highest
    achieved rate is the target's maximum throughput;
  * open loop at half of that maximum: requests sent on a fixed schedule, latency measured from
    each request's *intended* send time, so a queue (in the server or in the client) shows up;
  * closed loop with one request in flight: the latency floor;
- writes benchmarks/results/loadgen.json and the Markdown table between the `loadgen` markers of
  benchmarks/README.md, with the engine's figures as ratios to the trivial server's.

Clients are asyncio (grpc.aio) processes, each with its own channel; they share the machine's
cores with the server (and Redis). Latency percentiles are over every completed call, errors
included (a timed-out call counts with its time-out); errors are counted by status code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHOD = "/risk.v1.RiskEngine/Score"
QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
README_BEGIN = "<!-- loadgen:begin -->"
README_END = "<!-- loadgen:end -->"


# --- statistics -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, linear interpolation (numpy's default); NaN if empty."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class PhaseResult:
    """What one load phase measured, merged over its client processes."""

    target: str
    mode: str  # "closed" or "open"
    procs: int
    concurrency: int  # closed: requests in flight in all; open: 0
    offered_rate: float  # open: requests per second scheduled; closed: 0
    duration_s: float
    completed: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    degraded: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    late_sends: int = 0  # open loop: sends more than 1 ms behind schedule (the client could not keep up)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    sent_total: int = 0  # warm-up included
    pool_wrapped: bool = False  # requests were repeated: the engine answered some as retries

    @property
    def rate(self) -> float:
        """Answers with status OK per second: a call shed with RESOURCE_EXHAUSTED is not throughput."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "target": self.target,
            "mode": self.mode,
            "procs": self.procs,
            "concurrency": self.concurrency,
            "offered_rate_per_s": round(self.offered_rate, 1),
            "duration_s": round(self.duration_s, 2),
            "achieved_rate_per_s": round(self.rate, 1),
            "completed": self.completed,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "latency_ms": {name: round(percentile(lat, q), 3) for name, q in QUANTILES},
            "latency_ms_mean": round(sum(lat) / len(lat), 3) if lat else math.nan,
            "degraded": self.degraded,
            "decisions": dict(sorted(self.decisions.items())),
            "late_sends": self.late_sends,
            "pool_wrapped": self.pool_wrapped,
            "cpu_ms_per_request": {
                "client": round(1000 * self.client_cpu_s / self.sent_total, 3) if self.sent_total else None,
                "server": round(1000 * self.server_cpu_s / self.sent_total, 3) if self.sent_total else None,
                "redis": round(1000 * self.redis_cpu_s / self.sent_total, 3) if self.sent_total else None,
            },
        }


def merge(parts: list[dict[str, Any]], result: PhaseResult) -> PhaseResult:
    """Fold the reports of the client processes into `result`."""
    errors: Counter[str] = Counter(result.errors)
    decisions: Counter[str] = Counter(result.decisions)
    for part in parts:
        lat = array("d")
        lat.frombytes(part["latencies"])
        result.latencies_ms.extend(lat)
        result.completed += len(lat)
        result.ok += part["ok"]
        errors.update(part["errors"])
        decisions.update(part["decisions"])
        result.degraded += part["degraded"]
        result.late_sends += part["late_sends"]
        result.client_cpu_s += part["cpu_s"]
        result.sent_total += part["sent"]
    result.errors = dict(errors)
    result.decisions = dict(decisions)
    return result


# --- the client process ---------------------------------------------------------------------


@dataclass
class Job:
    target: str  # host:port
    mode: str  # closed | open
    concurrency: int  # closed: in flight in this process
    rate: float  # open: requests per second from this process
    warmup_s: float
    duration_s: float
    start_wall: float  # time.time() at which every process starts sending
    pool: str  # pickle file of serialized requests
    offset: int  # this process sends pool[offset], pool[offset + stride], ... (modulo the pool's size)
    stride: int
    timeout_s: float = 2.0
    max_outstanding: int = 4096
    #: Connections, used in turn: the kernel spreads connections (not requests) over the processes
    #: of `serve --workers N`, so a multi-process server needs several.
    channels: int = 1


async def _run(job: Job) -> dict[str, Any]:
    import grpc

    from engine.service.pb import risk_pb2

    with open(job.pool, "rb") as fh:
        pool: list[bytes] = pickle.load(fh)  # our own file
    size = len(pool)
    # A local subchannel pool per channel: one TCP connection each, not one shared.
    options = [("grpc.so_reuseport", 0), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in range(job.channels)]
    calls = [c.unary_unary(METHOD) for c in channels]  # bytes in, bytes out: messages were serialized beforehand
    for c in channels:
        await c.channel_ready()
    turn = 0
    parse = risk_pb2.ScoreResponse.FromString
    decision_name = {v.number: v.name.removeprefix("DECISION_").lower() for v in risk_pb2.Decision.DESCRIPTOR.values}

    lat = array("d")
    errors: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    ok = degraded = late = sent = 0
    now = time.perf_counter
    start = now() + (job.start_wall - time.time())
    measure_from = start + job.warmup_s
    end = measure_from + job.duration_s
    cursor = 0

    def next_request() -> bytes:
        nonlocal cursor, sent
        req = pool[(job.offset + cursor * job.stride) % size]  # wraps (retries) only when the pool runs out
        cursor += 1
        sent += 1
        return req

    async def one(req: bytes, t0: float) -> None:
        nonlocal ok, degraded, turn
        code = None
        call = calls[turn % len(calls)]
        turn += 1
        try:
            raw = await call(req, timeout=job.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        t1 = now()
        if t0 < measure_from or t0 >= end:
            return
        lat.append((t1 - t0) * 1000.0)
        if code is not None:
            errors[code] += 1
            return
        ok += 1
        resp = parse(raw)
        degraded += resp.degraded
        decisions[decision_name.get(resp.decision, str(resp.decision))] += 1

    cpu0 = os.times()
    await asyncio.sleep(max(0.0, start - now()))
    if job.mode == "closed":

        async def worker() -> None:
            while now() < end:
                req = next_request()
                await one(req, now())

        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
    else:
        interval = 1.0 / job.rate
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while True:
            intended = start + i * interval
            if intended >= end:
                break
            delay = intended - now()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001 and intended >= measure_from:
                late += 1
            if len(tasks) >= job.max_outstanding:
                if intended >= measure_from:
                    errors["CLIENT_OVERFLOW"] += 1
            else:
                task = asyncio.ensure_future(one(next_request(), intended))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks)
    cpu1 = os.times()
    for c in channels:
        await c.close()
    return {
        "latencies": lat.tobytes(),
        "ok": ok,
        "errors": dict(errors),
        "decisions": dict(decisions),
        "degraded": degraded,
        "late_sends": late,
        "sent": sent,
        "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }


def _client_main(job: Job, out: Any) -> None:
    try:
        out.put(asyncio.run(_run(job)))
    except BaseException as exc:
        out.put({"failed": f"{type(exc).__name__}: {exc}"})
        raise


# --- processes we start ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(pid: int) -> list[int]:
    """`pid` and every live process descending from it (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


class Service:
    """A process started for the benchmark (server or Redis), stopped by `stop()`."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.name, self.port, self.log = name, port, log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=new_session
        )

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"loadgen: {self.name} exited during start:\n{self.log.read_text()[-3000:]}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit(f"loadgen: {self.name} did not become SERVING within {timeout_s:.0f} s")

    def cpu(self) -> float:
        """CPU time of the process and its children (the worker processes of `serve --workers N`)."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_redis(workdir: Path) -> Service:
    port = free_port()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("loadgen: redis-server not found (apt-get install redis-server), or skip the redis target")
    cmd = [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    svc = Service("redis-server", cmd, port, workdir / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return svc
        except OSError:
            time.sleep(0.05)
    svc.stop()
    raise SystemExit("loadgen: redis-server did not answer PING")


def start_server(
    kind: str,
    workdir: Path,
    redis: Service | None,
    metrics_port: int | None = None,
    env_extra: dict[str, str] | None = None,
) -> Service:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RISK_METRICS_PORT": str(metrics_port) if metrics_port else "off",
        "RISK_ADMIN_PORT": "off",
        "RISK_RELOAD_INTERVAL_S": "0",
        **(env_extra or {}),
    }
    env.pop("REDIS_URL", None)
    if kind == "trivial":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "trivial_server.py"), str(port)]
    else:
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)]
        cmd += ["--rules", str(ROOT / "rules"), "--model", str(ROOT / "models")]
        if kind in ("redis", "redis-2w"):
            assert redis is not None
            cmd += ["--redis-url", f"redis://127.0.0.1:{redis.port}/0"]
        if kind == "redis-2w":
            cmd += ["--workers", "2"]
    svc = Service(kind, cmd, port, workdir / f"server-{kind}.log", env)
    svc.wait_serving()
    return svc


# --- the request pool -----------------------------------------------------------------------


def build_pool(size: int, path: Path, seed: int = 7) -> int:
    """Serialize `size` unique requests (simulated traffic of the last day) into a pickle file."""
    from engine.offline.synthetic import generate, shift_to_present
    from engine.service.traffic import to_request

    users = max(int(size / 1.4), 500)  # about 2 payments per user a day; ~1.5 in the last 24 hours kept
    rows = shift_to_present(generate(days=2, users=users, merchants=max(users // 30, 50), seed=seed))
    prefix = f"lg-{time.time_ns():x}-"
    pool = [to_request(r, prefix).SerializeToString() for r in rows[:size]]
    with path.open("wb") as fh:
        pickle.dump(pool, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return len(pool)


def _pipeline_cpu_main(pool_path: str, count: int, warmup: int, out: Any) -> None:
    """In a process of its own: the in-process pipeline's CPU per Score, as the server runs it, on the pool's requests.

    The server's pipeline (shipped rules and model, the in-process store, the drift record,
    explanations, the record of each response for retries), called directly on the requests the
    load phases send (the first `warmup` not measured): mean thread CPU per call, and the p50 of
    each call's wall time (what benchmarks/pipeline_steps.py reports).
    """
    try:
        from engine.model.drift import DriftMonitor
        from engine.model.predictor import load_model
        from engine.pipeline import Pipeline
        from engine.rules.loader import load_ruleset
        from engine.service.convert import to_transaction
        from engine.service.pb import risk_pb2
        from engine.service.server import tune_gc
        from engine.windows.memory import MemoryStore

        with open(pool_path, "rb") as fh:
            pool: list[bytes] = pickle.load(fh)[: warmup + count]  # our own file
        ruleset = load_ruleset(ROOT / "rules")
        model = load_model(ROOT / "models", ruleset)
        model.prepare_explanations()
        pipeline = Pipeline(ruleset, model, MemoryStore(), drift=DriftMonitor(interval_s=3600.0))
        transactions = [to_transaction(risk_pb2.ScoreRequest.FromString(raw), pipeline.limits) for raw in pool]
        tune_gc()
        for txn in transactions[:warmup]:
            pipeline.score(txn, 2.0)
        walls = array("d")
        clock, cpu = time.perf_counter_ns, time.thread_time_ns
        cpu0 = cpu()
        for txn in transactions[warmup:]:
            t0 = clock()
            pipeline.score(txn, 2.0)
            walls.append((clock() - t0) / 1000)
        cpu_us = (cpu() - cpu0) / 1000 / max(1, len(walls))
        ordered = sorted(walls)
        out.put(
            {"calls": len(walls), "cpu_us_per_call": round(cpu_us, 1), "wall_p50_us": round(percentile(ordered, 50), 1)}
        )
    except BaseException as exc:
        out.put({"failed": f"{type(exc).__name__}: {exc}"})
        raise


def pipeline_cpu(pool: Path, count: int = 20_000, warmup: int = 2_000) -> dict[str, Any]:
    """`_pipeline_cpu_main` in a separate process (nothing else runs meanwhile)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_pipeline_cpu_main, args=(str(pool), count, warmup, out), daemon=True)
    child.start()
    result: dict[str, Any] = out.get(timeout=600)
    child.join(10)
    if "failed" in result:
        raise SystemExit(f"loadgen: the in-process pipeline measurement failed: {result['failed']}")
    return result


# --- phases ---------------------------------------------------------------------------------


@dataclass
class Runner:
    pool: Path
    pool_size: int
    warmup_s: float
    duration_s: float
    cursor: int = 0  # next unused request of the pool (per server: reset for each new server)
    redis: Service | None = None  # its CPU time is reported with the engine's

    def phase(
        self,
        server: Service,
        mode: str,
        procs: int,
        concurrency: int = 0,
        rate: float = 0.0,
        label: str = "",
        timeout_s: float = 2.0,
    ) -> PhaseResult:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        start_wall = time.time() + 2.5  # time for the processes to start and load the pool
        per_proc_in_flight = max(1, concurrency // procs) if mode == "closed" else 0
        jobs = [
            Job(
                target=f"127.0.0.1:{server.port}",
                mode=mode,
                concurrency=per_proc_in_flight,
                rate=rate / procs,
                warmup_s=self.warmup_s,
                duration_s=self.duration_s,
                start_wall=start_wall,
                pool=str(self.pool),
                offset=self.cursor + k,
                stride=procs,
                channels=16 if server.name == "redis-2w" else 1,
                timeout_s=timeout_s,
            )
            for k in range(procs)
        ]
        children = [ctx.Process(target=_client_main, args=(job, out), daemon=True) for job in jobs]
        for child in children:
            child.start()
        watch_redis = self.redis is not None and server.name in ("redis", "redis-2w")
        cpu0, rcpu0 = server.cpu(), self.redis.cpu() if watch_redis and self.redis else 0.0
        parts = [out.get(timeout=self.warmup_s + self.duration_s + 120) for _ in children]
        cpu1, rcpu1 = server.cpu(), self.redis.cpu() if watch_redis and self.redis else 0.0
        for child in children:
            child.join(10)
        failed = [p["failed"] for p in parts if "failed" in p]
        if failed:
            raise SystemExit(f"loadgen: a client process failed: {failed[0]}")
        result = PhaseResult(
            target=label or server.name,
            mode=mode,
            procs=procs,
            concurrency=per_proc_in_flight * procs if mode == "closed" else 0,
            offered_rate=rate,
            duration_s=self.duration_s,
        )
        merge(parts, result)
        result.server_cpu_s, result.redis_cpu_s = cpu1 - cpu0, rcpu1 - rcpu0
        self.cursor += max(p["sent"] for p in parts) * procs
        if self.cursor > self.pool_size and server.name != "trivial":
            result.pool_wrapped = True
            print(f"  warning: the request pool ({self.pool_size:,}) wrapped: some requests were retries")
        s = result.summary()
        lat = s["latency_ms"]
        what = f"{mode:6} procs={procs} " + (
            f"in-flight={result.concurrency:<4}" if mode == "closed" else f"rate={rate:<7.0f}"
        )
        print(
            f"  {result.target:8} {what} -> {s['achieved_rate_per_s']:8.1f}/s"
            f"  p50 {lat['p50']:7.2f}  p99 {lat['p99']:7.2f}  p99.9 {lat['p99.9']:7.2f} ms"
            f"  errors {sum(result.errors.values())}  late {result.late_sends}",
            flush=True,
        )
        return result


def sweep_target(
    runner: Runner, server: Service, concurrencies: list[int], procs: int, more_procs: int
) -> dict[str, Any]:
    """One in flight, then closed loop at rising in-flight counts until the rate stops rising, then open loop.

    `more_procs` > `procs`: also the best in-flight count from that many client processes (does
    one client process saturate the server, or is the client the bottleneck?).
    """
    runner.cursor = 0
    one = runner.phase(server, "closed", 1, 1)
    closed: list[PhaseResult] = [one]
    best_rate = one.rate
    for conc in concurrencies:
        r = runner.phase(server, "closed", procs, conc)
        closed.append(r)
        if r.rate < best_rate * 1.03 and conc >= 8:
            break  # no longer rising: the maximum is behind us
        best_rate = max(best_rate, r.rate)
    best = max(closed, key=lambda r: r.rate)
    if more_procs > procs:
        closed.append(runner.phase(server, "closed", more_procs, max(best.concurrency, more_procs)))
        best = max(closed, key=lambda r: r.rate)
    open_loop = runner.phase(server, "open", procs, rate=best.rate / 2)
    return {"closed": closed, "max": best, "open_half": open_loop, "one_in_flight": one}


# --- the report -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import grpc

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    versions = {"python": platform.python_version(), "grpcio": grpc.__version__}
    try:
        import lightgbm

        versions["lightgbm"] = lightgbm.__version__
    except ImportError:
        pass
    redis = shutil.which("redis-server")
    if redis:
        out = subprocess.run([redis, "--version"], capture_output=True, text=True).stdout
        versions["redis-server"] = next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory": mem, "versions": versions, "load_average_at_end": load}


TARGET_NAMES = {
    "trivial": "trivial server (fixed response: the Python gRPC ceiling)",
    "redis": "engine, Redis store",
    "memory": "engine, in-process store",
    "redis-2w": "engine, Redis store, 2 server processes (serve --workers 2)",
}


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [
        f"Machine: {m['cpus']} vCPU {m['cpu']}, {m['memory']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f". Client processes, server and Redis share the same {m['cpus']} cores: the client's CPU is the"
        " server's loss, so every figure here is a floor of what a separate client machine would see. "
        f"{report['when']}; {report['settings']['warmup_s']:g} s warm-up and {report['settings']['duration_s']:g} s"
        " measured per phase; latency percentiles over every completed call. Load average (1 / 5 / 15 min) at"
        f" the end: {m.get('load_average_at_end', '?')} (other work on the machine shows here).",
        "",
        "| target | max rate /s (closed loop, in flight) | open loop at ½ max: rate /s, p50 / p99 / p99.9 ms"
        " | one in flight: p50 / p90 / p99 / p99.9 ms | errors | CPU ms per request at max: client / server / Redis |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in report["targets"].items():
        best, op, one = t["max"], t["open_half"], t["one_in_flight"]
        errs = Counter[str]()
        for phase in [*t["closed"], op, one]:
            errs.update(phase["errors"])
        lo, l1 = op["latency_ms"], one["latency_ms"]
        cpu = best["cpu_ms_per_request"]
        lines.append(
            f"| {TARGET_NAMES.get(name, name)} | {fmt(best['achieved_rate_per_s'], 0)} ({best['concurrency']},"
            f" {best['procs']} client proc) | {fmt(op['achieved_rate_per_s'], 0)}: {fmt(lo['p50'])} / {fmt(lo['p99'])}"
            f" / {fmt(lo['p99.9'])} | {fmt(l1['p50'])} / {fmt(l1['p90'])} / {fmt(l1['p99'])} / {fmt(l1['p99.9'])}"
            f" | {', '.join(f'{k} {n}' for k, n in sorted(errs.items())) or '0'} | {fmt(cpu['client'])} /"
            f" {fmt(cpu['server'])} / {fmt(cpu['redis']) if name == 'redis' else '–'} |"
        )
    if report.get("ratios"):
        lines += [
            "",
            "Against the trivial server of the same run: the goals of issue 6 (latency) and issue 23 (throughput,"
            " CPU per call):",
            "",
            "| engine | throughput vs trivial (goal) | open loop at ½ own max: p99 (goal < 5 ms)"
            " | one in flight: p50 vs trivial (goal < 1.5×) | p99 vs trivial |",
            "|---|---|---|---|---|",
        ]
        for name, r in report["ratios"].items():
            goal = THROUGHPUT_GOAL_PCT.get(name, 70.0)
            met = "met" if r["throughput_pct"] >= goal else "not met"
            lines.append(
                f"| {TARGET_NAMES.get(name, name)}"
                f" | {r['throughput_pct']:.0f} % (≥ {goal:.0f} %: {met})"
                f" | {fmt(r['open_half_p99_ms'])} ms {'met' if r['open_half_p99_ms'] < 5 else 'not met'}"
                f" | {r['one_in_flight_p50_x']:.2f}× {'met' if r['one_in_flight_p50_x'] < 1.5 else 'not met'}"
                f" | {r['one_in_flight_p99_x']:.2f}× |"
            )
        pipe = report.get("pipeline")
        if pipe:
            lines += [
                "",
                f"CPU per call at each target's maximum (server process, all threads), and the in-process pipeline"
                f" on the same requests ({pipe['calls']:,} calls of `Pipeline.score`, in-process store, one thread:"
                f" {pipe['cpu_us_per_call']:.0f} µs CPU per call on average, p50 {pipe['wall_p50_us']:.0f} µs wall).",
                f" Goal of issue 23: the engine's CPU per call beyond the trivial server's at most"
                f" {OVERHEAD_GOAL_X}× the pipeline's (the in-process store).",
                "",
                "| target | server CPU µs per call | beyond the trivial server's | as a multiple of the pipeline's"
                " | Redis CPU µs per call |",
                "|---|---|---|---|---|",
            ]
            trivial_cpu = next(iter(report["ratios"].values()))["trivial_cpu_us"]
            lines.append(f"| {TARGET_NAMES['trivial']} | {trivial_cpu:.0f} | – | – | – |")
            for name, r in report["ratios"].items():
                x = r.get("overhead_x")
                verdict = ""
                if name == "memory" and x is not None:
                    verdict = f" ({'met' if x <= OVERHEAD_GOAL_X else 'not met'})"
                lines.append(
                    f"| {TARGET_NAMES.get(name, name)} | {r['server_cpu_us']:.0f}"
                    f" | {r['server_cpu_us'] - r['trivial_cpu_us']:.0f}"
                    f" | {fmt(x)}×{verdict}"
                    f" | {fmt(r['redis_cpu_us'], 0) if name.startswith('redis') else '–'} |"
                )
    lines += [
        "",
        "Every closed-loop point of the sweep:",
        "",
        "| target | client procs | in flight | rate /s | p50 ms | p99 ms | p99.9 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in report["targets"].items():
        for c in t["closed"]:
            lat = c["latency_ms"]
            lines.append(
                f"| {name} | {c['procs']} | {c['concurrency']} | {fmt(c['achieved_rate_per_s'], 0)} | {fmt(lat['p50'])}"
                f" | {fmt(lat['p99'])} | {fmt(lat['p99.9'])} |"
            )
    dec = {n: t["max"]["decisions"] for n, t in report["targets"].items() if n != "trivial"}
    deg = {
        n: sum(p["degraded"] for p in [*t["closed"], t["open_half"], t["one_in_flight"]])
        for n, t in report["targets"].items()
        if n != "trivial"
    }
    if dec:
        lines += ["", "Engine answers at max throughput: " + "; ".join(f"{n}: {d}" for n, d in dec.items())
                  + f". Degraded answers over the whole run: {deg}."]  # fmt: skip
    return "\n".join(lines)


def update_readme(table: str, path: Path) -> None:
    text = path.read_text()
    block = f"{README_BEGIN}\n{table}\n{README_END}"
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


#: Issue 23's goals: throughput at the maximum against the trivial server's, by store.
THROUGHPUT_GOAL_PCT = {"memory": 70.0, "redis": 50.0, "redis-2w": 50.0}
#: Issue 23's goal: the engine's CPU per call beyond the trivial server's, as a multiple of the in-process pipeline's.
OVERHEAD_GOAL_X = 1.5


def ratios(targets: dict[str, Any], pipeline: dict[str, Any] | None = None) -> dict[str, Any]:
    if "trivial" not in targets:
        return {}
    t = targets["trivial"]
    trivial_cpu = 1000 * t["max"]["cpu_ms_per_request"]["server"]
    out = {}
    for name, e in targets.items():
        if name == "trivial":
            continue
        cpu = 1000 * e["max"]["cpu_ms_per_request"]["server"]
        out[name] = {
            "throughput_pct": 100 * e["max"]["achieved_rate_per_s"] / t["max"]["achieved_rate_per_s"],
            "open_half_p99_ms": e["open_half"]["latency_ms"]["p99"],
            "open_half_p99_x": e["open_half"]["latency_ms"]["p99"] / t["open_half"]["latency_ms"]["p99"],
            "one_in_flight_p50_x": e["one_in_flight"]["latency_ms"]["p50"] / t["one_in_flight"]["latency_ms"]["p50"],
            "one_in_flight_p99_x": e["one_in_flight"]["latency_ms"]["p99"] / t["one_in_flight"]["latency_ms"]["p99"],
            "server_cpu_us": cpu,
            "trivial_cpu_us": trivial_cpu,
            "redis_cpu_us": 1000 * e["max"]["cpu_ms_per_request"]["redis"],
        }
        if pipeline:
            out[name]["pipeline_cpu_us"] = pipeline["cpu_us_per_call"]
            out[name]["overhead_x"] = (cpu - trivial_cpu) / pipeline["cpu_us_per_call"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--targets",
        default="trivial,redis,memory,redis-2w",
        help="comma list of trivial, redis, memory, redis-2w (Redis, serve --workers 2, clients on 16 connections)",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per phase (not measured)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument("--concurrency", default="2,8,32,128", help="in-flight counts of the closed-loop sweep")
    parser.add_argument("--procs", type=int, default=1, help="client processes of the sweep and the open loop")
    parser.add_argument(
        "--more-procs", type=int, default=2, help="trivial target: also this many client processes at its best point"
    )
    parser.add_argument("--pool", type=int, default=0, help="unique requests to prepare (default: from the plan)")
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s phases, two sweep points")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loadgen.json"))
    parser.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"), help="'' to leave it alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.duration, args.concurrency, args.more_procs = 1.0, 3.0, "4,16", 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="loadgen-"))
    pool_path = workdir / "pool.pickle"
    # Enough for every engine phase at up to ~4,000/s without reuse (the trivial server does not care);
    # the in-process engine reached 5,700/s at its best point (2026-11-26 17:43), about 30 s to build.
    size = args.pool or int(min(4_000 * (args.warmup + args.duration) * (len(concurrencies) + 2), 500_000))
    t0 = time.monotonic()
    size = build_pool(size, pool_path)
    print(f"request pool: {size:,} unique simulated requests in {time.monotonic() - t0:.1f} s", flush=True)
    pipeline = None
    if set(targets) - {"trivial"}:
        # The pipeline alone, on the same requests, before any server runs (nothing else on the machine's cores).
        pipeline = pipeline_cpu(pool_path, count=max(1, min(20_000, size - 2_000)), warmup=min(2_000, size // 2))
        print(
            f"in-process pipeline: {pipeline['cpu_us_per_call']:.0f} µs CPU per call on average,"
            f" p50 {pipeline['wall_p50_us']:.0f} µs wall ({pipeline['calls']:,} calls)",
            flush=True,
        )
    runner = Runner(pool_path, size, args.warmup, args.duration)
    services: list[Service] = []
    results: dict[str, Any] = {}
    try:
        redis = None
        if "redis" in targets or "redis-2w" in targets:
            redis = start_redis(workdir)
            services.append(redis)
            runner.redis = redis
        for kind in targets:
            server = start_server(kind, workdir, redis)
            services.append(server)
            print(f"{TARGET_NAMES[kind]} on port {server.port}", flush=True)
            try:
                more = args.more_procs if kind == "trivial" else 0  # can one client process saturate?
                sweep = sweep_target(runner, server, concurrencies, args.procs, more)
            finally:
                server.stop()
                services.remove(server)
            results[kind] = {
                "closed": [r.summary() for r in sweep["closed"]],
                "max": sweep["max"].summary(),
                "open_half": sweep["open_half"].summary(),
                "one_in_flight": sweep["one_in_flight"].summary(),
            }
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, Any] = {
        "benchmark": "loadgen: Score over loopback, closed and open loop, against a trivial gRPC server",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "settings": {
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "procs": args.procs,
            "concurrency": concurrencies,
            "pool": size,
            "traffic": "one simulated day (engine.offline.synthetic), moved to the present, every request unique",
            "wall_s": round(time.monotonic() - started, 1),
        },
        "targets": results,
        "pipeline": pipeline,
        "ratios": ratios(results, pipeline),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print()
    print(table)
    if args.readme:
        update_readme(table, Path(args.readme))
    print(
        f"\nwrote {out}"
        + (f" and the table in {args.readme}" if args.readme else "")
        + f" ({report['settings']['wall_s']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
