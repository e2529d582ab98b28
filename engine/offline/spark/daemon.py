"""Spark's Python daemon (`spark.python.daemon.module`) with the engine already imported.

Spark forks each Python worker from one daemon process per executor. The
stock daemon imports little, so every worker paid for importing the engine
(LightGBM pulls in scikit-learn and SciPy: about three seconds) before its
first batch. This daemon imports the modules that the Spark steps run, then
hands over to the stock one: forked workers start with them loaded. It
loads no data and starts no thread, so forking after it is safe.
"""

from pyspark.daemon import manager

import engine.offline.spark.score
import engine.offline.spark.windows  # noqa: F401

if __name__ == "__main__":
    manager()
