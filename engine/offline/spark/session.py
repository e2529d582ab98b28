"""Starting Spark for the offline commands: the session, its settings, and a clear error when it cannot start.

`--spark-master` takes any Spark master URL: `local[*]` (the default: every
core of this machine, no cluster), `local[N]`, or `spark://HOST:PORT` of a
standalone cluster. Executors run this same Python (`PYSPARK_PYTHON`, set to
the interpreter running the command unless the environment sets it) with
the engine installed: on a real cluster, install the same version of
risk-engine on every worker. `--spark-conf KEY=VALUE` passes any Spark
setting (executor memory and cores, shuffle partitions...).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"

#: Settings the engine relies on; `--spark-conf` may override the others, not these.
REQUIRED_CONF = {
    # Event times are UTC epoch milliseconds throughout; Parquet written with millisecond
    # timestamps reads back as the local engine's timestamp[ms, UTC] column.
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MILLIS",
    # Parquet files written by pandas hold nanosecond timestamps, which Spark reads only as
    # integers: `inputs.read_input` turns them back into timestamps before mapping.
    "spark.sql.legacy.parquet.nanosAsLong": "true",
}

DEFAULT_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
    # Python workers forked with the engine imported (engine/offline/spark/daemon.py).
    "spark.python.daemon.module": "engine.offline.spark.daemon",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
    # The engine sizes its shuffles itself (jobs.shuffle_partitions); adaptive execution would
    # re-plan after each of them, one more job per shuffle: half the time of a small job.
    "spark.sql.adaptive.enabled": "false",
}


class SparkUnavailable(RuntimeError):
    """Spark cannot run here (no Java, no pyspark, a master that does not answer): said plainly, no traceback."""


def parse_conf(pairs: list[str] | None) -> dict[str, str]:
    """`KEY=VALUE` strings (the CLI's `--spark-conf`) as a mapping; ValueError names a bad one."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise ValueError(f"--spark-conf {pair!r}: expected spark.KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def java_problem() -> str | None:
    """Why a JVM cannot start here, or None."""
    home = os.environ.get("JAVA_HOME")
    if home and os.path.exists(os.path.join(home, "bin", "java")):
        return None
    if shutil.which("java") is None:
        return (
            "the Spark engine needs Java 17 or later, and `java` is not on PATH (nor JAVA_HOME set): "
            "install a JRE, e.g. apt-get install openjdk-17-jre-headless"
        )
    return None


def start(master: str = DEFAULT_MASTER, conf: Mapping[str, str] | None = None) -> SparkSession:
    """A Spark session on `master` with the engine's settings (an existing one of this process is reused)."""
    problem = java_problem()
    if problem is not None:
        raise SparkUnavailable(problem)
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - pyspark is a dependency of the package
        raise SparkUnavailable(f"pyspark is not installed: {exc}") from None
    conf = dict(conf or {})
    for key in REQUIRED_CONF:
        if key in conf and conf[key] != REQUIRED_CONF[key]:
            raise SparkUnavailable(f"--spark-conf {key} must stay {REQUIRED_CONF[key]} (the engine relies on it)")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName("risk-engine")
    for key, value in {**DEFAULT_CONF, **conf, **REQUIRED_CONF}.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - py4j and the JVM raise many kinds; one message for the CLI
        raise SparkUnavailable(f"Spark did not start on {master}: {str(exc).strip().splitlines()[0]}") from None
    for key, value in REQUIRED_CONF.items():  # runtime settings of a session that was already running
        spark.conf.set(key, value)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def parallelism(spark: SparkSession) -> int:
    """How many tasks the cluster runs at once (its cores)."""
    return max(1, int(spark.sparkContext.defaultParallelism))
