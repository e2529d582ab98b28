"""Replay throughput: labeled history through the scoring pipeline, in transactions per second.

    python benchmarks/replay_throughput.py [--data FILE] [--mapping handbook|native] [--rows N]
                                           [--rules rules/] [--model models/] [--no-model] [--profile]
                                           [--one-process] [--no-labels]

Reads N rows (default: all) of a data file (default: the handbook data in
../shared/data/handbook/ when present, else a synthetic file written by
engine.offline.synthetic), then replays them with `engine.offline.replay.replay`
(the serving pipeline, in-process store, no clock check, no records; the data's
labels fed back as backtests and training do; the windows pass forked to a
second process when replay would do so) with the shipped rules and the
promoted model. Reports the time to read the file, the
time to replay it and the replay rate, plus a digest of every decision and
score so that two runs (say, before and after a change) can be compared for
identical results. Writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import platform
import pstats
import resource
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model.predictor import load_model  # noqa: E402
from engine.offline.datasets import PRESETS, default_data_path, read_dataset  # noqa: E402
from engine.offline.replay import ReplayStats, label_events, parallel_by_default, replay  # noqa: E402
from engine.offline.synthetic import generate, write_parquet  # noqa: E402
from engine.rules.loader import load_ruleset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Parquet or CSV file (default: the handbook data, else synthetic)")
    parser.add_argument("--mapping", help="column mapping preset (default: handbook for the handbook file)")
    parser.add_argument("--rows", type=int, help="replay only the first N rows of the file")
    parser.add_argument("--rules", default=str(ROOT / "rules"))
    parser.add_argument("--model", default=str(ROOT / "models"), help="model folder or registry")
    parser.add_argument("--no-model", action="store_true", help="features only, as training replays")
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of the replay")
    parser.add_argument(
        "--one-process", action="store_true", help="no forked windows pass (RISK_REPLAY_PROCESSES=1 does the same)"
    )
    parser.add_argument("--no-labels", action="store_true", help="do not feed the data's labels back, as backtests do")
    parser.add_argument(
        "--check-features", action="store_true", help="fold every feature value into the digest too (slower)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay.json"))
    args = parser.parse_args()

    if args.data:
        data = Path(args.data)
        mapping = args.mapping or "native"
    elif (handbook := default_data_path("handbook", "transactions.parquet")) is not None:
        data, mapping = handbook, args.mapping or "handbook"
    else:
        data = Path(tempfile.mkdtemp()) / "synthetic.parquet"
        write_parquet(generate(days=30, users=5_000, merchants=300), data)
        mapping = args.mapping or "native"

    ruleset = load_ruleset(args.rules)
    model = None if args.no_model else load_model(args.model, ruleset)

    started = time.perf_counter()
    dataset = read_dataset(data, PRESETS[mapping], limit=args.rows)
    read_s = time.perf_counter() - started
    n = len(dataset.transactions)

    decisions: Counter[str] = Counter()
    digest = hashlib.sha256()
    stats = ReplayStats()
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    cpu_started = time.process_time()
    if profiler is not None:
        profiler.enable()
    labels = (
        [] if args.no_labels else label_events(dataset.transactions, dataset.labels, dataset.label_times_ms, ruleset)
    )
    parallel = False if args.one_process else parallel_by_default(n)
    children_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i, scored in replay(dataset.transactions, ruleset, model, stats, labels=labels, parallel=parallel):
        result = scored.result
        decisions[result.decision.name.lower()] += 1
        digest.update(struct.pack("<qid", i, int(result.decision), result.score))
        for r in result.reasons:
            digest.update(r.code.encode())
        if args.check_features:
            digest.update(struct.pack(f"<{len(result.features)}d", *result.features.values()))
            digest.update(repr(sorted(result.shadow)).encode() + repr(result.reasons).encode())
    if profiler is not None:
        profiler.disable()
    replay_s = time.perf_counter() - started
    replay_cpu_s = time.process_time() - cpu_started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the windows pass, reaped when replay ended
    windows_pass_cpu_s = after.ru_utime + after.ru_stime - children_cpu.ru_utime - children_cpu.ru_stime

    out = {
        "data": str(data),
        "mapping": mapping,
        "rows": n,
        "scored": stats.scored,
        "rejected": stats.rejected,
        "model": model.version if model is not None else None,
        "read_seconds": round(read_s, 2),
        "replay_seconds": round(replay_s, 2),
        "replay_tx_per_s": round(stats.scored / replay_s) if replay_s else 0,
        # CPU time of this process: steadier than wall time on a shared machine.
        "replay_cpu_seconds": round(replay_cpu_s, 2),
        "replay_tx_per_cpu_s": round(stats.scored / replay_cpu_s) if replay_cpu_s else 0,
        "processes": 2 if parallel else 1,
        "windows_pass_cpu_seconds": round(windows_pass_cpu_s, 2),
        "labels_fed": stats.labels,
        "end_to_end_tx_per_s": round(stats.scored / (read_s + replay_s)) if read_s + replay_s else 0,
        "decisions": dict(sorted(decisions.items())),
        "results_sha256": digest.hexdigest(),
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "profiled": bool(profiler),
        "features_in_digest": args.check_features,
    }
    print(json.dumps(out, indent=2))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
