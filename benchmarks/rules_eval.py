"""Cost of evaluating a rule set on one transaction: the shipped rules, and a generated set of 50 rules.

    python benchmarks/rules_eval.py [--transactions 5000] [--rounds 5]

The field maps are real ones: synthetic gateway traffic (engine.offline.synthetic)
replayed through the pipeline with the in-process window store, so every
window, geo and list field holds what live traffic would give. The timed
step is `engine.rules.evaluate.evaluate_rules` (the function the pipeline
calls), per transaction, single-threaded. The 50-rule set mixes what analysts
write: comparisons on amounts and windows, named and CIDR lists, `is
missing`, string functions, a shadow rule and a rollout. Writes
benchmarks/results/rules_eval.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.offline.datasets import PRESETS, table_to_dataset  # noqa: E402
from engine.offline.replay import replay  # noqa: E402
from engine.offline.synthetic import generate  # noqa: E402
from engine.rules.evaluate import evaluate_rules  # noqa: E402
from engine.rules.loader import load_ruleset  # noqa: E402
from engine.rules.ruleset import RuleSet  # noqa: E402

FIFTY_RULE_TEMPLATES = [
    "card_count_10m >= {k} and amount < {small}",
    "device_distinct_cards_1d >= {k}",
    "ip_distinct_cards_1h >= {k} and not ip_is_private",
    "amount >= {big} and (country in lists.high_risk_countries or ip_country in lists.high_risk_countries)",
    "ip_country_mismatch and amount >= {mid}",
    "merchant_category in lists.high_risk_merchant_categories and amount >= {mid}",
    "card_id in lists.blocked_cards or device_id in lists.blocked_devices",
    "ip in lists.blocked_ip_ranges",
    "user_distinct_devices_1d >= 3 and amount > {k} * card_avg_amount_30d and card_count_30d >= 3",
    "channel == 'web' and device_id is missing and amount >= {mid}",
    "is_night and channel in ['web', 'mini_program'] and amount >= {mid}",
    "starts_with(card_id, 'card-{k}') and card_sum_amount_1d > {big}",
    "abs(amount - if_missing(card_avg_amount_7d, 0)) > {big}",
    "max(card_count_1d, merchant_count_1d / 100) > {k} * 10",
    "in_cidr(ip, '10.0.0.0/8', '192.168.0.0/16') and channel == 'app' and amount > {big}",
    "merchant_distinct_cards_1d > {k} * 50 and amount >= {mid}",
    "user_sum_amount_1d > {big} * 3 and hour >= 22",
    "length(device_id) < 4 and has_device",
    "currency != 'EUR' and amount >= {big}",
    "score >= 0.{k} and card_count_10m >= 2",
]


def fifty_rule_set(folder: Path) -> Path:
    """A copy of the shipped rules whose rules.yaml holds 50 generated rules."""
    target = folder / "rules50"
    shutil.copytree(ROOT / "rules", target)
    (target / "tests.yaml").unlink()  # the shipped examples test the shipped rules
    lines = ["rules:"]
    for i in range(50):
        template = FIFTY_RULE_TEMPLATES[i % len(FIFTY_RULE_TEMPLATES)]
        k = 2 + i // len(FIFTY_RULE_TEMPLATES)
        cond = template.format(k=k, small=5 + k, mid=200 + 50 * k, big=1000 * k)
        mode = "\n    mode: shadow" if i == 7 else ("\n    rollout: 30" if i == 8 else "")
        lines.append(
            f'  - id: rule_{i:02d}\n    condition: "{cond}"\n    action: review\n'
            f"    reason_code: R{i:02d}\n    message: generated rule {i}{mode}"
        )
    (target / "rules.yaml").write_text("\n".join(lines) + "\n")
    return target


def field_maps(ruleset: RuleSet, count: int) -> list[tuple[str, dict]]:
    rows = generate(days=20, users=400, merchants=60)[:count]
    dataset = table_to_dataset(pa.Table.from_pylist(rows), PRESETS["native"])
    out = []
    for _, scored in replay(dataset.transactions, ruleset, None):
        fields = scored.fields
        fields["score"] = 0.3
        out.append((scored.result.transaction_id, fields))
    return out


def measure(ruleset: RuleSet, maps: list[tuple[str, dict]], rounds: int) -> dict[str, float]:
    per_txn_us = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for tid, fields in maps:
            evaluate_rules(ruleset, fields, tid, True, True)
        per_txn_us.append((time.perf_counter_ns() - started) / len(maps) / 1000)
    samples = []
    for tid, fields in maps[:2000]:
        t0 = time.perf_counter_ns()
        evaluate_rules(ruleset, fields, tid, True, True)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return {
        "rules": len(ruleset.rules),
        "mean_us": round(min(per_txn_us), 2),
        "p50_us": round(samples[len(samples) // 2], 2),
        "p99_us": round(samples[int(len(samples) * 0.99)], 2),
        "mean_us_all_rounds": round(statistics.mean(per_txn_us), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shipped = load_ruleset(ROOT / "rules")
        fifty = load_ruleset(fifty_rule_set(Path(tmp)))
        maps = field_maps(shipped, args.transactions)
        results = {
            "shipped": measure(shipped, maps, args.rounds),
            "fifty": measure(fifty, maps, args.rounds),
        }
    report = {
        "benchmark": "rules_eval",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "transactions": len(maps),
        "results": results,
        "command": "python benchmarks/rules_eval.py",
    }
    out = ROOT / "benchmarks" / "results" / "rules_eval.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(
            f"{name:8} {r['rules']:3d} rules: mean {r['mean_us']:.2f} µs  p50 {r['p50_us']:.2f}  p99 {r['p99_us']:.2f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
