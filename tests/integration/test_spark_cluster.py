"""The Spark engine on a real standalone cluster (a master and two workers started from the PySpark install).

`risk-engine backtest --engine spark --spark-master spark://...` in its own
process, on executors of 512 MB (the least Spark accepts) whose memory for
shuffles and sorts is cut to a few megabytes: the job must spill to disk
rather than fail, and still give the local engine's table and summary. The
application's event log says how much it spilled and on how many executors
it ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.offline.backtest import backtest, read_summary
from tests.support.spark import (
    MAPPING_YAML,
    SparkCluster,
    cli,
    hostile_traffic,
    same_summaries,
    same_tables,
    spilled_bytes,
    write_rules,
)

pytestmark = pytest.mark.spark


# Three JVMs of the cluster and one of the driver, on a box whose two cores other work shares:
# minutes when it is busy (a hang still fails).
@pytest.mark.timeout(900)
def test_backtest_on_a_two_worker_cluster_with_small_executors_spills_and_matches_local(
    spark_cluster: SparkCluster, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules")
    data = hostile_traffic(tmp_path / "traffic.parquet")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING_YAML)
    events = tmp_path / "events"
    events.mkdir()
    local = backtest(data, rules, tmp_path / "local", mapping=mapping, progress=False)
    conf = {
        "spark.executor.memory": "512m",
        "spark.memory.fraction": "0.02",  # about 4 MB for an executor's shuffles, sorts and caches
        "spark.sql.shuffle.partitions": "2",  # so that each task's share is well over that
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": events.as_uri(),
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
    }
    run = cli(
        "backtest",
        "--engine",
        "spark",
        "--spark-master",
        spark_cluster.master_url,
        *[x for key, value in conf.items() for x in ("--spark-conf", f"{key}={value}")],
        "--data",
        str(data),
        "--rules",
        str(rules),
        "--mapping",
        str(mapping),
        "--no-model",
        "--quiet",
        "--out",
        str(tmp_path / "spark"),
    )
    assert run.returncode == 0, _errors(run.stderr)
    rows = same_tables(tmp_path / "local" / "transactions.parquet", tmp_path / "spark" / "transactions.parquet")
    same_summaries(local.summary, read_summary(tmp_path / "spark"))
    assert rows == local.summary["population"]["scored"] > 7_000

    memory, disk = spilled_bytes(events)
    assert disk > 0 and memory > 0, (memory, disk)
    executors = set()
    for path in events.iterdir():
        for line in path.read_text().splitlines():
            if '"SparkListenerExecutorAdded"' in line:
                executors.add(json.loads(line)["Executor ID"])
    assert len(executors) == 2  # one on each worker


def _errors(stderr: str) -> str:
    """The lines of a failed run that say what went wrong (not the stack frames)."""
    keep = [line for line in stderr.splitlines() if ("ERROR" in line or "Error" in line or "Exception" in line)]
    return "\n".join(keep[:40]) or stderr[-3000:]
