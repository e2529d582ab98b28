"""The best card precision top-100 any model could reach on the handbook's test weeks.

In the handbook's simulator a compromised terminal's frauds look like its
genuine transactions (same amounts, same cards) until the first of its frauds
becomes known, a week later. Those frauds cannot be told apart by any
feature; this script measures how far that caps CP@100, with the book's
protocol (known compromised cards dropped, detected cards left out of later
days) and the engine's own replay for "a fraud of this terminal is known":

- ceiling, all frauds: a model that ranks every fraudulent card first;
- ceiling, detectable frauds: one that ranks first every fraud except a
  compromised terminal's (scenario 2) while none of its frauds is known yet
  (`merchant_frauds_known_30d == 0`; a compromise lasts 28 days).

    .venv/bin/python scripts/handbook_cp_ceiling.py [--data FILE] [--rules rules/]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine.offline.datasets import default_data_path, load_dataset, mapping_candidates
from engine.offline.model_metrics import DAY_MS, book_test_rows, card_precision_top_k
from engine.offline.replay import label_events, replay
from engine.rules.loader import load_ruleset

WEEKS = ("2018-07-11", "2018-07-18", "2018-07-25", "2018-08-01")
KNOWN = "merchant_frauds_known_30d"


def main() -> int:
    default = default_data_path("handbook", "transactions.parquet")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(default) if default else None, help="the handbook's transactions")
    parser.add_argument("--rules", default="rules", help="a rule set with the label window " + KNOWN)
    parser.add_argument("--weeks", nargs="+", default=list(WEEKS), help="first days of the test weeks")
    parser.add_argument("--delay-days", type=int, default=7)
    args = parser.parse_args()
    if args.data is None:
        print("--data is required (../shared/data/handbook/ was not found)", file=sys.stderr)
        return 2
    ruleset = load_ruleset(args.rules)
    _, dataset = load_dataset(args.data, mapping_candidates(ruleset, None))
    assert dataset.labels is not None
    raw = pq.read_table(Path(args.data), columns=["TRANSACTION_ID", "TX_FRAUD_SCENARIO"]).to_pydict()
    scenario_of = dict(zip(map(str, raw["TRANSACTION_ID"]), raw["TX_FRAUD_SCENARIO"], strict=True))

    n = len(dataset.transactions)
    known = np.zeros(n)
    events = label_events(dataset.transactions, dataset.labels, dataset.label_times_ms, ruleset)
    for i, scored in replay(dataset.transactions, ruleset, None, labels=events):
        known[i] = scored.fields[KNOWN]
    days = np.array([t.event_time_ms for t in dataset.transactions], dtype=np.int64) // DAY_MS
    cards = np.array([t.card_id for t in dataset.transactions], dtype=object)
    y = np.nan_to_num(dataset.labels)
    scenario = np.array([scenario_of[t.transaction_id] for t in dataset.transactions])
    detectable = (y > 0.5) & ~((scenario == 2) & (known == 0))

    print("| test week | fraud cards | ceiling, all frauds | ceiling, detectable frauds |")
    print("|---|---|---|---|")
    ceilings = []
    for week in args.weeks:
        m = book_test_rows(days, cards, y, np.ones(len(days), dtype=bool), week, delay_days=args.delay_days)
        every = card_precision_top_k(days[m], cards[m], y[m], y[m])
        best = card_precision_top_k(days[m], cards[m], detectable[m].astype(float), y[m])
        ceilings.append(best)
        print(f"| {week} | {len(set(cards[m][y[m] > 0.5]))} | {every:.3f} | {best:.3f} |")
    print(f"| mean | | | {np.mean(ceilings):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
