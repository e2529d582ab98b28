"""Offline replay on Spark against the local engine: rows a second, per core, and where the time goes.

    .venv/bin/python benchmarks/spark_replay.py [--data FILE] [--engines local,local2,cluster] [--train]

Runs `risk-engine backtest` on the same file (default: the full handbook data,
../shared/data/handbook/transactions.parquet) with the shipped rules and
model, each engine in its own process:

- `local`: the local engine (two processes: the windows pass and scoring);
- `local2`: `--engine spark --spark-master local[2]` (one JVM, two task slots);
- `cluster`: a standalone cluster this script starts from the PySpark
  install (a master and two one-core workers on this machine) and
  `--spark-master spark://...`.

Each Spark run must give the local engine's per-transaction table and
summary (checked, or the script fails). Spark's event log gives, per step,
the executors' time, CPU time, shuffle bytes and spills: bind (validation,
enrichment, window binding), series (the per-entity replay, after its
shuffle and sort), score (pipeline, model, rules, after the shuffle that
brings answers and transactions together), and the rest (output sort and
write, small aggregations). `--train` also trains the handbook model on
Spark and compares model.txt with the local training's.

Writes benchmarks/results/spark_replay.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.offline.backtest import read_summary  # noqa: E402
from tests.support.redis import free_port  # noqa: E402
from tests.support.spark import same_summaries, same_tables, start_spark_cluster  # noqa: E402

STEPS = ("step1_bind", "step2_series", "step3_score")


def run(args: list[str], log: Path) -> float:
    """Run a command; its wall time in seconds (output in `log`; failure raises)."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return seconds


def event_log_steps(folder: Path) -> dict[str, dict[str, float]]:
    """Per step (STEPS, and 'other'): executor run and CPU seconds, shuffle bytes written and read, bytes spilled."""
    stages: dict[int, str] = {}
    out: dict[str, dict[str, float]] = {}
    for path in folder.iterdir():
        for line in path.open(encoding="utf-8"):
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerStageSubmitted":
                info = event["Stage Info"]
                names = " ".join(r["Name"] for r in info["RDD Info"])
                stages[info["Stage ID"]] = next((s for s in STEPS if s in names), "other")
            elif kind == "SparkListenerTaskEnd":
                m = event.get("Task Metrics") or {}
                step = stages.get(event["Stage ID"], "other")
                row = out.setdefault(
                    step,
                    {
                        "tasks": 0,
                        "run_s": 0,
                        "cpu_s": 0,
                        "shuffle_write_mb": 0,
                        "shuffle_read_mb": 0,
                        "spill_disk_mb": 0,
                    },
                )
                row["tasks"] += 1
                row["run_s"] += m.get("Executor Run Time", 0) / 1000
                row["cpu_s"] += m.get("Executor CPU Time", 0) / 1e9
                write = m.get("Shuffle Write Metrics") or {}
                read = m.get("Shuffle Read Metrics") or {}
                row["shuffle_write_mb"] += write.get("Shuffle Bytes Written", 0) / 1e6
                row["shuffle_read_mb"] += (read.get("Remote Bytes Read", 0) + read.get("Local Bytes Read", 0)) / 1e6
                row["spill_disk_mb"] += m.get("Disk Bytes Spilled", 0) / 1e6
    return {k: {n: round(v, 1) for n, v in row.items()} for k, row in sorted(out.items())}


def spark_args(master: str, events: Path, extra: list[str]) -> list[str]:
    conf = {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": events.as_uri(),
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
    }
    args = ["--engine", "spark", "--spark-master", master]
    for key, value in conf.items():
        args += ["--spark-conf", f"{key}={value}"]
    for item in extra:
        args += ["--spark-conf", item]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "handbook" / "transactions.parquet"))
    parser.add_argument("--rules", default=str(ROOT / "rules"))
    parser.add_argument("--model", default=str(ROOT / "models"))
    parser.add_argument("--engines", default="local,local2,cluster")
    parser.add_argument("--train", action="store_true", help="also train on Spark and compare with a local training")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spark_replay.json"))
    parser.add_argument("--keep", help="keep the outputs in this folder (default: a temporary one)")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"{data}: no such file (pass --data)")
    engines = args.engines.split(",")
    work = Path(args.keep or tempfile.mkdtemp(prefix="spark-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "engine.cli"]
    base = ["backtest", "--data", str(data), "--rules", args.rules, "--model", args.model, "--quiet"]
    results: dict[str, Any] = {
        "data": str(data),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_before": os.getloadavg(),
        "runs": {},
    }
    cluster = None
    try:
        for engine in engines:
            out = work / engine
            events = work / f"events-{engine}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(events, ignore_errors=True)
            events.mkdir()
            if engine == "local":
                command = [*cli, *base, "--out", str(out)]
                cores = 2
            elif engine == "local2":
                command = [*cli, *base, "--out", str(out), *spark_args("local[2]", events, ["spark.driver.memory=4g"])]
                cores = 2
            elif engine == "cluster":
                cluster = start_spark_cluster(work / "cluster", free_port(), workers=2, worker_memory="3g")
                extra = ["spark.executor.memory=2g", "spark.driver.memory=2g"]
                command = [*cli, *base, "--out", str(out), *spark_args(cluster.master_url, events, extra)]
                cores = 2
            else:
                raise SystemExit(f"unknown engine {engine!r}")
            print(f"{engine}: {' '.join(command[2:])}", flush=True)
            wall = run(command, work / f"{engine}.log")
            summary = read_summary(out)
            rows = summary["population"]["rows"]
            replay_s = summary["timing"]["replay_s"]
            entry: dict[str, Any] = {
                "wall_s": round(wall, 1),
                "replay_s": replay_s,
                "rows": rows,
                "rows_per_s_wall": round(rows / wall),
                "rows_per_s_replay": round(rows / replay_s),
                "rows_per_s_per_core_replay": round(rows / replay_s / cores),
                "cores": cores,
            }
            if engine != "local":
                same_tables(work / "local" / "transactions.parquet", out / "transactions.parquet")
                same_summaries(read_summary(work / "local"), summary)
                entry["identical_to_local"] = True
                entry["steps"] = event_log_steps(events)
            results["runs"][engine] = entry
            print(f"  {json.dumps(entry)}", flush=True)
            if cluster is not None and engine == "cluster":
                cluster.stop()
                cluster = None
        if args.train:
            results["train"] = train_both(cli, data, args.rules, work)
    finally:
        if cluster is not None:
            cluster.stop()
    results["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def train_both(cli: list[str], data: Path, rules: str, work: Path) -> dict[str, Any]:
    """`risk-engine train` locally and on Spark local[2] with the handbook config: the same model.txt?"""
    config = str(ROOT / "models" / "handbook.train.yaml")
    out: dict[str, Any] = {}
    folders = {}
    for engine, extra in (
        ("local", []),
        ("local2", ["--engine", "spark", "--spark-master", "local[2]", "--spark-conf", "spark.driver.memory=4g"]),
    ):
        target = work / f"train-{engine}"
        shutil.rmtree(target, ignore_errors=True)
        wall = run(
            [*cli, "train", "--data", str(data), "--rules", rules, "--config", config, "--out", str(target), *extra],
            work / f"train-{engine}.log",
        )
        (folder,) = [p for p in target.iterdir() if p.is_dir()]
        folders[engine] = folder
        out[engine] = {"wall_s": round(wall, 1), "version": folder.name}
    a, b = ((folders[e] / "model.txt").read_bytes() for e in ("local", "local2"))
    out["model_txt_identical"] = a == b
    shipped = ROOT / "models" / folders["local"].name / "model.txt"
    out["same_as_shipped_model"] = shipped.is_file() and shipped.read_bytes() == a
    if a != b:
        raise SystemExit("train --engine spark gave another model.txt than the local engine")
    return out


if __name__ == "__main__":
    main()
