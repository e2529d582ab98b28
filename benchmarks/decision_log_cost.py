"""What writing the decision log before the answer costs a call: `DecisionLog.record` on real results.

    python benchmarks/decision_log_cost.py            # 20,000 records, shipped rules and model

Scores simulated traffic through the serving pipeline (shipped rules and model, in-process store),
then times `record` (encode one JSON line, one write(2) under the lock) for each result, into a
temporary folder on the machine's disk. Prints the per-record time (p50, p90, p99, mean) and the
bytes per record. The call pays this on its own thread; the fsync (once a second) runs on another.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.decision_log import DecisionLog, files  # noqa: E402
from engine.offline.synthetic import generate  # noqa: E402
from engine.pipeline import Pipeline  # noqa: E402
from engine.reload import load_serving  # noqa: E402
from engine.service.convert import to_transaction  # noqa: E402
from engine.service.traffic import to_request  # noqa: E402
from engine.validation import Limits  # noqa: E402
from engine.windows.memory import MemoryStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args(argv)
    ruleset, model, _ = load_serving(ROOT / "rules", ROOT / "models")
    pipeline = Pipeline(ruleset, model, MemoryStore(), check_clock=False)
    rows = generate(days=3, users=max(args.records // 4, 200))[: args.records]
    scored = []
    for row in rows:
        txn = to_transaction(to_request(row), Limits())
        scored.append((txn, pipeline.score(txn).result))
    times = []
    with tempfile.TemporaryDirectory() as folder:
        dlog = DecisionLog(Path(folder))
        for txn, result in scored:
            t0 = time.perf_counter_ns()
            dlog.record(txn, result)
            times.append((time.perf_counter_ns() - t0) / 1000)
        dlog.close()
        size = sum(f.stat().st_size for f in files(Path(folder)))
    times.sort()
    q = statistics.quantiles(times, n=100)
    print(
        f"DecisionLog.record over {len(times):,} results: p50 {q[49]:.1f} µs, p90 {q[89]:.1f} µs,"
        f" p99 {q[98]:.1f} µs, mean {statistics.fmean(times):.1f} µs; {size / len(times):.0f} bytes per record"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
