"""Test data and checks for the Spark engine: hostile traffic, a rule set with every window kind, a cluster.

`hostile_traffic` starts from the project's simulator and makes it hard:
one merchant with 40 % of all payments, retries (the same row again, and
the same id at another time, some more than a month later), rows out of
order in the file, labels with their own times (some missing, some before
the transaction), and rows that validation rejects. `RULES` holds windows of
every kind the engine has: exact and bucketed, delayed, filtered, composite
entities, distinct counts, min/max/sum/avg, capped value series, and label
windows (fraud, genuine, any). `handbook_like` writes a small file of the
handbook data set's schema (nanosecond timestamps, integer ids), which the
shipped rules read through their handbook mapping.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.offline.synthetic import DAY_MS, generate

HOUR_MS = 3_600_000
HOT_MERCHANT = "m-hot"

RULES = {
    "engine.yaml": """\
version: "spark-parity-1"
timezone: UTC
allowed_lateness: 5m
label_delay: 3d
max_events_per_series: 40
data_mapping: [native]
currency:
  base: EUR
  rates: {USD: 0.92, CNY: 0.13, HKD: 0.12, JPY: 0.0061, GBP: 1.17, SGD: 0.69}
windows:
  - {name: card_count_10m, entity: card_id, aggregate: count, duration: 10m}
  - {name: card_sum_1d, entity: card_id, aggregate: sum, field: amount, duration: 1d}
  - {name: card_avg_7d, entity: card_id, aggregate: avg, field: amount, duration: 7d}
  - {name: card_min_7d, entity: card_id, aggregate: min, field: amount, duration: 7d}
  - {name: card_max_30d, entity: card_id, aggregate: max, field: amount, duration: 30d}
  - {name: card_avg_14d_before_3d, entity: card_id, aggregate: avg, field: amount, duration: 14d, delay: 3d}
  - {name: card_max_2d_before_1d, entity: card_id, aggregate: max, field: amount, duration: 2d, delay: 1d}
  - {name: card_count_2h_before_1h, entity: card_id, aggregate: count, duration: 2h, delay: 1h}
  - {name: merchant_count_1h, entity: merchant_id, aggregate: count, duration: 1h}
  - {name: merchant_count_7d, entity: merchant_id, aggregate: count, duration: 7d}
  - {name: merchant_count_20d_before_2d, entity: merchant_id, aggregate: count, duration: 20d, delay: 2d}
  - {name: merchant_sum_web_1d, entity: merchant_id, aggregate: sum, field: amount, duration: 1d,
     filter: "channel == 'web'"}
  - {name: merchant_max_web_10d, entity: merchant_id, aggregate: max, field: amount, duration: 10d,
     filter: "channel == 'web'"}
  - {name: merchant_distinct_cards_1d, entity: merchant_id, aggregate: distinct, field: card_id, duration: 1d}
  - {name: merchant_avg_hour_2d, entity: merchant_id, aggregate: avg, field: hour, duration: 2d}
  - {name: card_merchant_count_1d, entity: [card_id, merchant_id], aggregate: count, duration: 1d}
  - {name: device_distinct_users_1d, entity: device_id, aggregate: distinct, field: user_id, duration: 1d}
  - {name: ip_sum_original_1h, entity: ip, aggregate: sum, field: amount_original, duration: 1h}
  - {name: merchant_frauds_known_7d, entity: merchant_id, source: feedback, label: fraud, aggregate: count,
     duration: 7d}
  - {name: merchant_fraud_amount_known_10d, entity: merchant_id, source: feedback, label: fraud, aggregate: sum,
     field: amount, duration: 10d}
  - {name: merchant_labels_known_3d, entity: merchant_id, source: feedback, aggregate: count, duration: 3d}
  - {name: card_genuine_known_30d, entity: card_id, source: feedback, label: genuine, aggregate: count,
     duration: 30d}
  - {name: merchant_frauds_known_7d_before_7d, entity: merchant_id, source: feedback, label: fraud,
     aggregate: count, duration: 7d, delay: 7d}
  - {name: merchant_web_frauds_known_2d, entity: merchant_id, source: feedback, label: fraud, aggregate: count,
     duration: 2d, filter: "channel == 'web'"}
features:
  - {name: merchant_fraud_share_7d, value: "if_missing(merchant_frauds_known_7d / merchant_count_7d, 0)"}
  - {name: amount_to_card_avg_7d, value: "amount / card_avg_7d"}
""",
    "rules.yaml": """\
rules:
  - id: card_burst
    condition: "card_count_10m >= 3"
    action: review
    reason_code: CARD_BURST
    message: 3 or more payments on this card in 10 minutes.
  - id: merchant_known_fraud
    condition: "merchant_fraud_share_7d > 0.02 and merchant_labels_known_3d >= 1"
    action: review
    reason_code: MERCHANT_FRAUD
    message: The merchant's known fraud share is high.
  - id: above_card_max
    condition: "card_count_2h_before_1h == 0 and amount > 2 * card_avg_7d and card_min_7d > 0"
    action: deny
    reason_code: ABOVE_USUAL
    message: Far above the card's largest payment.
  - id: shared_device
    condition: "device_distinct_users_1d >= 2"
    action: review
    reason_code: SHARED_DEVICE
    message: The device paid for two users.
    mode: shadow
  - id: busy_merchant_web
    condition: "merchant_sum_web_1d > 2000 or merchant_max_web_10d > 900"
    action: review
    reason_code: WEB_VOLUME
    message: Much web volume.
    rollout: 50
  - id: known_genuine
    condition: "card_genuine_known_30d >= 5 and card_merchant_count_1d <= 2"
    action: allow
    reason_code: KNOWN_GENUINE
    message: A card with a genuine history.
""",
}


def write_rules(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in RULES.items():
        (folder / name).write_text(text)
    return folder


def hostile_traffic(path: Path, days: int = 28, users: int = 120, seed: int = 11) -> Path:
    """The simulator's traffic made hard for a replay (see the module docstring); written as Parquet."""
    rng = random.Random(seed)
    rows = generate(days=days, users=users, merchants=30, seed=seed, check_geo=False)
    for row in rows:
        if rng.random() < 0.4:
            row["merchant_id"] = HOT_MERCHANT
    extra: list[dict[str, Any]] = []
    for row in rows:
        r = rng.random()
        if r < 0.02:  # a retry: the same request again
            extra.append(dict(row))
        elif r < 0.025:  # the same id at another time (minutes, or more than a month, later)
            later = rng.choice([rng.randint(1, 600) * 1000, rng.randint(31, 40) * DAY_MS])
            extra.append({**row, "event_time_ms": row["event_time_ms"] + later})
        elif r < 0.0275:  # rejected by validation: an unknown currency
            row["currency"] = "ZZZ"
        elif r < 0.03:  # rejected by validation: a negative amount
            row["amount_minor"] = -row["amount_minor"]
    rows += extra
    rng.shuffle(rows)  # out of order in the file (replay sorts by event time, ties in file order)
    for row in rows:
        row.pop("scenario", None)
        label = row.get("label")
        if label is None or rng.random() < 0.05:
            row["label_time_ms"] = None  # known label_delay after the transaction
        elif rng.random() < 0.01:
            row["label_time_ms"] = row["event_time_ms"] - HOUR_MS  # before the transaction: refused
        else:
            row["label_time_ms"] = row["event_time_ms"] + rng.randint(1, 20 * 24) * HOUR_MS
        if rng.random() < 0.1:
            row["label"] = None  # unlabeled
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path, row_group_size=2_000)
    return path


#: The native mapping plus the label time column of `hostile_traffic`.
MAPPING_YAML = "preset: native\nlabel_time: label_time_ms\n"


def handbook_like(path: Path, rows: int = 6_000, days: int = 45, seed: int = 5) -> Path:
    """A small file of the handbook data set's schema and shape (nanosecond timestamps, as pandas writes)."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2018-04-01T00:00:00", "ns")
    seconds = np.sort(rng.integers(0, days * 86_400, rows))
    customers = rng.integers(0, 300, rows)
    terminals = rng.integers(0, 500, rows)
    amounts = np.round(rng.gamma(2.0, 30.0, rows), 2)
    fraud = (rng.random(rows) < 0.02).astype(np.int64)
    amounts[fraud == 1] *= 3
    frame = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(rows, dtype=np.int64),
            "TX_DATETIME": start + seconds.astype("timedelta64[s]"),
            "CUSTOMER_ID": customers.astype(np.int64),
            "TERMINAL_ID": terminals.astype(np.int64),
            "TX_AMOUNT": amounts,
            "TX_TIME_SECONDS": seconds.astype(np.int64),
            "TX_TIME_DAYS": (seconds // 86_400).astype(np.int64),
            "TX_FRAUD": fraud,
            "TX_FRAUD_SCENARIO": fraud,
        }
    )
    frame.to_parquet(path, index=False)
    assert pq.read_schema(path).field("TX_DATETIME").type == pa.timestamp("ns")
    return path


def same_tables(local: Path, spark: Path) -> int:
    """Assert the two per-transaction tables hold the same rows, columns, types and values; return the rows."""
    a, b = pq.read_table(local), pq.read_table(spark)
    assert a.schema.equals(b.schema), (a.schema, b.schema)
    pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas(), check_exact=True)
    return a.num_rows


#: The analysis the local engine adds to a backtest's summary and the Spark engine does not make (docs/spark.md):
#: what each rule adds, the warnings, the money view, the threshold sweep and the rejections by field and reason
#: (Spark counts the rejected rows in `population` and stops over the threshold with its first errors).
LOCAL_ONLY = frozenset({"rule_value", "warnings", "money", "thresholds", "rejections"})


def same_summaries(local: dict[str, Any], spark: dict[str, Any]) -> None:
    """Equal summaries, but for what says how long it took and the analysis only the local engine makes."""
    drop = ("timing", "replay_rate_per_s")
    assert LOCAL_ONLY <= local.keys() and not LOCAL_ONLY & spark.keys(), (sorted(local), sorted(spark))
    a = {k: v for k, v in local.items() if k not in drop and k not in LOCAL_ONLY}
    b = {k: v for k, v in spark.items() if k not in drop}
    assert a == b, {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


# -- a standalone Spark cluster from the PySpark install --------------------------------------------


@dataclass
class SparkCluster:
    master_url: str
    processes: list[subprocess.Popen[bytes]]
    logs: Path

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def spark_class() -> Path:
    """pyspark's own launcher of Spark's JVM classes (the pip package ships bin/ and jars/)."""
    import pyspark

    launcher = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not launcher.is_file():
        raise RuntimeError(f"{launcher} is missing: the pyspark install has no launcher")
    return launcher


def start_spark_cluster(workdir: Path, port: int, workers: int = 2, worker_memory: str = "1g") -> SparkCluster:
    """A standalone master and `workers` one-core workers on 127.0.0.1, started from the PySpark install."""
    if shutil.which("java") is None:
        raise RuntimeError(
            "java is not on PATH: the Spark tests need a Java runtime (apt-get install default-jre-headless)"
        )
    launcher = spark_class()
    env = {**os.environ, "SPARK_HOME": str(launcher.parent.parent), "PYSPARK_PYTHON": sys.executable}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []

    def launch(name: str, *args: str) -> None:
        out = open(logs / f"{name}.log", "wb")  # the child keeps it open
        processes.append(subprocess.Popen([str(launcher), *args], env=env, stdout=out, stderr=subprocess.STDOUT))

    url = f"spark://127.0.0.1:{port}"
    cluster = SparkCluster(url, processes, logs)
    try:
        launch(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            "0",
        )
        _wait_for(logs / "master.log", "I have been elected leader", processes[0], 90)
        for k in range(workers):
            worker_dir = workdir / f"worker{k}"
            worker_dir.mkdir(exist_ok=True)
            launch(
                f"worker{k}",
                "org.apache.spark.deploy.worker.Worker",
                url,
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                worker_memory,
                "--work-dir",
                str(worker_dir),
                "--webui-port",
                "0",
            )
        for k in range(workers):
            _wait_for(logs / f"worker{k}.log", "Successfully registered with master", processes[1 + k], 90)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[1]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.2)
    raise RuntimeError(
        f"{proc.args[1]} did not say {text!r} within {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


def spilled_bytes(event_logs: Path) -> tuple[int, int]:
    """(memory, disk) bytes spilled by every task of the Spark applications whose event logs are in the folder."""
    import json

    memory = disk = 0
    for path in event_logs.iterdir():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if '"SparkListenerTaskEnd"' not in line:
                    continue
                metrics = json.loads(line).get("Task Metrics") or {}
                memory += int(metrics.get("Memory Bytes Spilled", 0))
                disk += int(metrics.get("Disk Bytes Spilled", 0))
    return memory, disk


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`risk-engine ARGS` in a child process (its own JVM), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
