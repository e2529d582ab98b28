"""Where the server's CPU goes, per Score call, under load: a profile by instrumentation.

    python benchmarks/call_cost.py                       # in-process store, 32 in flight, 10 s
    python benchmarks/call_cost.py --store redis --concurrency 32 --duration 10

Starts `risk-engine serve` (shipped rules and model) in a process whose Score path is wrapped,
at import, with per-thread CPU clocks (`time.thread_time_ns`): the whole handler, and inside it
the request's conversion, each step of the pipeline, the response's conversion and the metrics.
Drives it with the load generator's closed loop (benchmarks/loadgen.py, unique simulated
requests) and reads, over the measured phase:

- the process's CPU per call, split by thread: Python threads (gRPC's poller and the worker
  threads running handlers) and gRPC's C threads (`event_engine`);
- the handler's own CPU per call and each wrapped part of it.

"gRPC's Python machinery" is then the Python threads' CPU that no handler accounts for: the
poller thread reading events and queueing calls, the worker threads waking for them, the
response's serialization and the call's completion. The wrappers cost CPU themselves (two
clock reads each, about a microsecond): the instrumented process's total is printed beside an
uninstrumented run of the same phase, so that cost shows.

Why not a sampling profiler alone: on this 2-core VM there are no hardware counters for
`perf`, and py-spy's `--native` samples of a 16-thread gRPC server are almost all threads
waiting (futexes); its `--gil` samples (who holds the GIL) are printed as a cross-check when
py-spy is installed (`pip install py-spy`; `--pyspy` to take them).

Writes benchmarks/results/call_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The wrapped parts: (label, module, qualified name). Nested parts are reported under their parent.
PARTS = (
    ("handler", "engine.service.servicer", "RiskEngineServicer.score_bytes"),
    ("request -> Transaction", "engine.service.servicer", "to_transaction"),
    ("pipeline", "engine.pipeline", "Pipeline.score"),
    ("  validation, enrichment, binding", "engine.pipeline", "Pipeline._bind"),
    ("  fingerprint", "engine.transaction", "Transaction.fingerprint"),
    ("  window store", "engine.windows.memory", "MemoryStore.apply"),
    ("  window store", "engine.windows.redis_store", "RedisStore.apply"),
    ("  fallback windows (Redis only)", "engine.windows.fallback", "FallbackWindows.add"),
    ("  windows -> fields, derived features", "engine.windows.spec", "WindowPlan.finish_into"),
    ("  model", "engine.pipeline", "Pipeline._predict_one"),
    ("  drift record", "engine.model.drift", "DriftMonitor.record"),
    ("  rules", "engine.pipeline", "evaluate_rules"),
    ("  explanation (reviews, denies)", "engine.pipeline", "Pipeline._explain"),
    ("  retry record", "engine.windows.memory", "MemoryStore.remember"),
    ("  retry record", "engine.windows.redis_store", "RedisStore.remember"),
    ("ScoreResult -> response", "engine.service.servicer", "to_response"),
    ("metrics", "engine.service.metrics", "Metrics.observe"),
    ("metrics", "engine.service.metrics", "Metrics.observe_steps"),
    ("metrics", "engine.service.metrics", "Metrics.request"),
    ("decision log", "engine.decision_log", "DecisionLog.record"),
    # Off the handler's thread (counted in the Python threads' CPU, reported apart from gRPC's machinery):
    ("retry records: writer thread, JSON and zlib", "engine.windows.records", "RecordWriter.encode"),
    ("retry records: writer thread, SET", "engine.windows.redis_store", "RedisStore._write_records"),
    ("drift: refresh thread", "engine.model.drift", "DriftMonitor.refresh"),
)
#: PARTS that run on threads of their own, not inside the handler.
BACKGROUND = (
    "retry records: writer thread, JSON and zlib",
    "retry records: writer thread, SET",
    "drift: refresh thread",
)


# --- inside the instrumented server --------------------------------------------------------


def _instrument(out: Path) -> None:
    """Wrap PARTS with per-thread CPU clocks; a thread writes the sums to `out` twice a second."""
    import importlib
    import inspect

    tallies: list[dict[str, list[int]]] = []
    local = threading.local()
    clock = time.thread_time_ns

    def tally() -> dict[str, list[int]]:
        try:
            return local.t  # type: ignore[no-any-return]
        except AttributeError:
            local.t = {}
            tallies.append(local.t)
            return local.t  # type: ignore[no-any-return]

    def wrap(label: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                cell = tally().setdefault(label, [0, 0])
                cell[0] += clock() - t0
                cell[1] += 1

        return wrapped

    for label, module_name, qualname in PARTS:
        module = importlib.import_module(module_name)
        owner: Any = module
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        wrapped = wrap(label.strip(), getattr(owner, name))
        if isinstance(inspect.getattr_static(owner, name), staticmethod):
            wrapped = staticmethod(wrapped)
        setattr(owner, name, wrapped)

    def dump() -> None:
        while True:
            time.sleep(0.5)
            total: dict[str, list[int]] = {}
            for t in list(tallies):
                for label, (ns, n) in list(t.items()):
                    cell = total.setdefault(label, [0, 0])
                    cell[0] += ns
                    cell[1] += n
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(total))
            tmp.replace(out)

    threading.Thread(target=dump, name="call-cost-dump", daemon=True).start()


def _serve_instrumented(out: str, argv: list[str]) -> int:
    _instrument(Path(out))
    from engine.cli import main

    sys.argv = ["risk-engine", *argv]
    return main()


# --- the driver --------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads, summed by thread name (digits and '_' stripped)."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip().rstrip("0123456789_") or "?"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return dict(out)


def _is_python(thread_name: str) -> bool:
    """Whether a thread runs Python (named after the interpreter) rather than being one of gRPC's C threads."""
    return thread_name.startswith(("python", "risk-engine", "call_cost"))


def _read(path: Path) -> dict[str, list[int]]:
    for _ in range(50):
        try:
            return {k: list(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError):
            time.sleep(0.1)
    return {}


def gil_profile(pid: int, seconds: float, out: Path) -> dict[str, float] | None:
    """py-spy's `--gil` samples of the server for `seconds`: share of samples per innermost engine/gRPC frame."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    raw = out.with_suffix(".pyspy.txt")
    subprocess.run(
        [spy, "record", "--pid", str(pid), "--gil", "--rate", "250", "--format", "raw", "-o", str(raw),
         "--duration", str(int(seconds)), "--nonblocking"],
        capture_output=True,
        check=False,
    )  # fmt: skip
    if not raw.exists():
        return None
    where: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if re.search(r"\.py:\d+\)$", f)]
        label = "other"
        for frame in reversed(frames):
            m = re.match(r"(\S+) \((.+?\.py):\d+\)$", frame)
            if m and ("engine/" in m.group(2) or "grpc/" in m.group(2)):
                label = f"{m.group(1)} ({m.group(2).split('site-packages/')[-1]})"
                break
        where[label] += int(count)
    total = sum(where.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in where.most_common(25)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.loadgen import Runner, Service, build_pool, free_port, start_redis, start_server

    workdir = Path(tempfile.mkdtemp(prefix="call-cost-"))
    pool = workdir / "pool.pickle"
    size = build_pool(int(5_000 * (args.duration + args.warmup) * 3), pool)
    redis = start_redis(workdir) if args.store == "redis" else None
    report: dict[str, Any] = {"store": args.store, "concurrency": args.concurrency}
    try:
        runner = Runner(pool, size, args.warmup, args.duration, redis=redis)
        # The same phase without instrumentation: what the wrappers cost shows against it.
        plain = start_server(args.store, workdir, redis)
        try:
            phase = runner.phase(plain, "closed", 1, args.concurrency)
            report["uninstrumented"] = {
                "rate_per_s": round(phase.rate, 1),
                "server_cpu_us_per_call": round(1e6 * phase.server_cpu_s / phase.sent_total, 1),
            }
        finally:
            plain.stop()
        port = free_port()
        out = workdir / "tally.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-instrumented", str(out), "serve",
               "--port", str(port), "--rules", str(ROOT / "rules"), "--model", str(ROOT / "models")]  # fmt: skip
        if redis is not None:
            cmd += ["--redis-url", f"redis://127.0.0.1:{redis.port}/0"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RISK_METRICS_PORT": "off", "RISK_ADMIN_PORT": "off",
               "RISK_RELOAD_INTERVAL_S": "0"}  # fmt: skip
        env.pop("REDIS_URL", None)
        server = Service(f"instrumented-{args.store}", cmd, port, workdir / "server.log", env)
        server.wait_serving()
        try:
            runner.cursor = 0
            runner.phase(server, "closed", 1, args.concurrency)  # warm: first calls, caches, the store's state
            time.sleep(1.0)
            t0, c0 = _read(out), thread_cpu(server.proc.pid)
            spy: dict[str, Any] = {}
            if args.pyspy:
                timer = threading.Timer(
                    2.5 + args.warmup,
                    lambda: spy.update(gil=gil_profile(server.proc.pid, args.duration, workdir / "spy")),
                )
                timer.start()
            phase = runner.phase(server, "closed", 1, args.concurrency)
            if args.pyspy:
                timer.join()
            time.sleep(1.0)
            t1, c1 = _read(out), thread_cpu(server.proc.pid)
        finally:
            server.stop()
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    calls = t1["handler"][1] - t0["handler"][1]
    per_call = {label: (t1[label][0] - t0.get(label, [0, 0])[0]) / calls / 1000 for label in t1}
    threads = {name: 1e6 * (c1[name] - c0.get(name, 0.0)) / calls for name in c1}
    python_threads = sum(v for k, v in threads.items() if _is_python(k))
    report.update(
        {
            "calls": calls,
            "rate_per_s": round(phase.rate, 1),
            "server_cpu_us_per_call": round(sum(threads.values()), 1),
            "threads_us_per_call": {k: round(v, 1) for k, v in sorted(threads.items()) if v > 0.05},
            "grpc_python_us_per_call": round(
                python_threads - per_call["handler"] - sum(per_call.get(b, 0.0) for b in BACKGROUND), 1
            ),
            "parts_us_per_call": {label.strip(): round(per_call.get(label.strip(), 0.0), 1) for label, *_ in PARTS},
            "pyspy_gil_share_pct": spy.get("gil"),
        }
    )
    return report


def table(report: dict[str, Any]) -> str:
    total = report["server_cpu_us_per_call"]
    parts = report["parts_us_per_call"]
    rows = [
        f"Store: {report['store']}; closed loop, {report['concurrency']} in flight; {report['calls']:,} calls at"
        f" {report['rate_per_s']:,.0f}/s (uninstrumented: {report['uninstrumented']['rate_per_s']:,.0f}/s,"
        f" {report['uninstrumented']['server_cpu_us_per_call']:.0f} µs CPU per call).",
        "",
        "| where | µs CPU per call | share |",
        "|---|---|---|",
    ]
    threads = report["threads_us_per_call"]
    native = sum(v for k, v in threads.items() if not _is_python(k))
    rows.append(f"| server process, all threads | {total:.1f} | 100 % |")
    rows.append(f"| gRPC's C threads (event_engine, timers) | {native:.1f} | {100 * native / total:.0f} % |")
    rows.append(
        f"| gRPC's Python machinery (poller, worker wake-ups, serialization, completion) |"
        f" {report['grpc_python_us_per_call']:.1f} | {100 * report['grpc_python_us_per_call'] / total:.0f} % |"
    )
    for label in BACKGROUND:
        us = parts.get(label, 0.0)
        if us:
            rows.append(f"| {label} | {us:.1f} | {100 * us / total:.0f} % |")
    rows.append(f"| the handler (worker thread) | {parts['handler']:.1f} | {100 * parts['handler'] / total:.0f} % |")
    seen = set()
    inner = 0.0
    for label, *_ in PARTS[1:]:
        key = label.strip()
        if key in seen or key in BACKGROUND:
            continue
        seen.add(key)
        us = parts.get(key, 0.0)
        if label.startswith("  ") or us == 0.0:
            if us:
                rows.append(f"| &nbsp;&nbsp;&nbsp;&nbsp;{key} | {us:.1f} | {100 * us / total:.0f} % |")
            continue
        inner += us
        rows.append(f"| &nbsp;&nbsp;{key} | {us:.1f} | {100 * us / total:.0f} % |")
    rest = parts["handler"] - inner
    rows.append(
        f"| &nbsp;&nbsp;the rest of the handler (parse, admission, status, wrappers) | {rest:.1f} |"
        f" {100 * rest / total:.0f} % |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-instrumented"]:
        return _serve_instrumented(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--pyspy", action="store_true", help="also py-spy --gil samples of the measured phase")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "call_cost.json"))
    args = parser.parse_args(argv)
    report = run(args)
    report["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["load_average"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(table(report))
    if report.get("pyspy_gil_share_pct"):
        print("\npy-spy --gil, share of samples by innermost engine or gRPC frame:")
        for where, pct in report["pyspy_gil_share_pct"].items():
            print(f"  {pct:5.1f} %  {where}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} (load average {report['load_average']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
