"""Instructions Redis executes per script call on the pipeline_steps.py stream: a CPU figure a busy box cannot skew.

    python benchmarks/redis_instructions.py [--days 30] [--sample 2000] [--users 4000]

Scores the stream of `benchmarks/pipeline_steps.py` (simulated traffic moved to the present,
shipped rules and model) on a plain redis-server but for its last `--sample` transactions;
saves Redis (SAVE), starts the same data again in a redis-server under valgrind's callgrind,
collecting only inside `evalGenericCommand` (EVALSHA and EVAL: the script and every command it
calls, not networking or the retry records' SETs), and scores the sample there. Prints
instructions per script call (Ir: the same on a busy box as on a quiet one) and the commands
the script made per call (INFO commandstats). Writes benchmarks/results/redis_instructions.json.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited ({proc.returncode})")
        try:
            if redis.Redis(port=port, socket_timeout=5).ping():
                return
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            time.sleep(0.5)
    raise SystemExit("redis-server did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--keep", help="copy callgrind's output here (callgrind_annotate reads it)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "redis_instructions.json"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("redis_instructions: needs valgrind (apt-get install valgrind)")

    import redis

    from benchmarks.pipeline_steps import simulated_transactions
    from engine.model.predictor import load_model
    from engine.pipeline import Pipeline
    from engine.rules.loader import load_ruleset
    from engine.windows.redis_store import RedisStore
    from tests.support.redis import free_port

    transactions = simulated_transactions(args.days, args.users)
    ruleset = load_ruleset(ROOT / "rules")
    model = load_model(ROOT / "models", ruleset)
    head, sample = transactions[: -args.sample], transactions[-args.sample :]
    exe = shutil.which("redis-server")
    assert exe is not None
    now = [0.0]

    def score(url: str, txns: list) -> None:  # type: ignore[type-arg]
        store = RedisStore(url, prefix="bench-ir", budget_s=60.0, connect_budget_s=60.0, write_behind=False)
        pipeline = Pipeline(ruleset, model, store, clock=lambda: now[0])
        for txn in txns:
            now[0] = txn.event_time_ms / 1000 + 1.0
            pipeline.score(txn)
        store.close()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        base = [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(work)]
        proc = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(port, proc, 10)
            score(f"redis://127.0.0.1:{port}/0", head)
            client = redis.Redis(port=port, socket_timeout=900)
            client.save()
            used = client.info("memory")["used_memory"]
            client.close()
        finally:
            proc.terminate()
            proc.wait()
        out_file = work / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--toggle-collect=evalGenericCommand",
            f"--callgrind-out-file={out_file}",
            *base,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(port, proc, 600)
            client = redis.Redis(port=port, socket_timeout=900)
            client.config_resetstat()
            started = time.monotonic()
            score(f"redis://127.0.0.1:{port}/0", sample)
            took = time.monotonic() - started
            stats = client.info("commandstats")
            client.close()
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=600)
        scripts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
        text = out_file.read_text(errors="replace")
        found = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
        assert found, err.decode()[-2000:]
        ir = int(found.group(1))
        if args.keep:
            shutil.copy(out_file, args.keep)
    inner = {
        k.removeprefix("cmdstat_"): round(v["calls"] / max(1, scripts), 2)
        for k, v in stats.items()
        if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_config|resetstat", "cmdstat_info")
    }
    result = {
        "days": args.days,
        "sample_transactions": len(sample),
        "script_calls": scripts,
        "instructions_per_script_call": round(ir / max(1, scripts)),
        "redis_calls_per_script_call": inner,
        "redis_calls_total_per_script_call": round(sum(v for k, v in inner.items() if k != "set") + 1, 1),
        "used_memory_before_sample": used,
        "valgrind_seconds": round(took, 1),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/redis_instructions.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
