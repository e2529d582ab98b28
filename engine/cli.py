"""The `risk-engine` command: serve, train, and check rules.

risk-engine serve [--port N] [--rules PATH] [--model PATH] [--redis-url URL]
risk-engine rules check PATH
risk-engine rules fields PATH
risk-engine train --data FILE --config FILE [--rules PATH] [--out DIR] [--promote]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from engine.config import ROOT, ConfigError, ServeConfig


def _serve(args: argparse.Namespace) -> int:
    from engine.model.predictor import ModelInvalid
    from engine.rules.errors import RuleSetInvalid
    from engine.service.server import serve

    config = ServeConfig.from_env()
    overrides = {
        "host": args.host,
        "port": args.port,
        "rules": Path(args.rules) if args.rules else None,
        "model": Path(args.model) if args.model else None,
        "redis_url": args.redis_url,
        "redis_budget_ms": args.redis_budget_ms,
        "threads": args.threads,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    try:
        serve(config)
    except ConfigError as exc:
        print(f"risk-engine serve: {exc}", file=sys.stderr)
        return 2
    except RuleSetInvalid as exc:
        print(f"risk-engine serve: the rule set is invalid:\n{exc}", file=sys.stderr)
        return 2
    except ModelInvalid as exc:
        print(f"risk-engine serve: the model cannot be served: {exc}", file=sys.stderr)
        return 2
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from engine.rules.errors import RuleSetInvalid
    from engine.rules.ruleset import load_ruleset

    try:
        rs = load_ruleset(args.path)
    except RuleSetInvalid as exc:
        for err in exc.errors:
            print(err)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    print(f"ok: rule set {rs.version}: {len(rs.rules)} rules, {len(rs.windows.specs)} windows")
    return 0


def _rules_fields(args: argparse.Namespace) -> int:
    from engine.enrich import FIELDS
    from engine.rules.errors import RuleSetInvalid
    from engine.rules.ruleset import SCORE, load_ruleset

    try:
        rs = load_ruleset(args.path)
    except RuleSetInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    windows = {s.name: s for s in rs.windows.specs}
    for name, kind in rs.catalog.items():
        if name in FIELDS:
            meaning = FIELDS[name][1]
        elif name == SCORE:
            meaning = "the model's fraud probability (NaN when the model could not run)"
        else:
            s = windows[name]
            of = f"({s.field})" if s.field else ""
            meaning = f"window: {s.aggregate.value}{of} per {'+'.join(s.entity)} over {s.duration_ms // 1000} s"
        print(f"{name:32} {kind:7} {meaning}")
    print(f"{'attributes.KEY':32} {'string':7} a gateway attribute ('' when not sent)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from engine.offline.datasets import default_data_path
    from engine.offline.train import train

    data = args.data or default_data_path("handbook", "transactions.parquet")
    if data is None:
        print("risk-engine train: --data is required (../shared/data/handbook/ was not found)", file=sys.stderr)
        return 2
    folder = train(data, args.rules, args.config, args.out, promote=args.promote)
    print(f"wrote {folder}")
    print((folder / "metadata.json").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="risk-engine", description="Real-time transaction risk engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC server (defaults from RISK_* and REDIS_URL)")
    p.add_argument("--host", help="address to listen on (RISK_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (RISK_PORT, default 50051; 0 picks a free one)")
    p.add_argument("--rules", help="rules folder (RISK_RULES, default rules/)")
    p.add_argument("--model", help="model folder or registry (RISK_MODEL, default models/)")
    p.add_argument("--redis-url", help="Redis URL (REDIS_URL); empty: the embedded in-process store")
    p.add_argument("--redis-budget-ms", type=float, help="time budget of one Redis call (RISK_REDIS_BUDGET_MS, 50)")
    p.add_argument("--threads", type=int, help="worker threads (RISK_THREADS, 16)")
    p.set_defaults(func=_serve)

    rules = sub.add_parser("rules", help="work with rule sets").add_subparsers(dest="rules_command", required=True)
    p = rules.add_parser("check", help="validate a rule set; errors with file:line:column")
    p.add_argument("path")
    p.set_defaults(func=_rules_check)
    p = rules.add_parser("fields", help="print the catalog of names a rule can read")
    p.add_argument("path", nargs="?", default=str(ROOT / "rules"))
    p.set_defaults(func=_rules_fields)

    p = sub.add_parser("train", help="train a model by replaying labeled history through the pipeline")
    p.add_argument("--data", help="Parquet or CSV file (default ../shared/data/handbook/transactions.parquet)")
    p.add_argument("--config", required=True, help="training config, e.g. models/handbook.train.yaml")
    p.add_argument("--rules", default=str(ROOT / "rules"), help="rule set whose windows give the features")
    p.add_argument("--out", default=str(ROOT / "models"), help="registry folder to write the model into")
    p.add_argument("--promote", action="store_true", help="make it the served model (models/PROMOTED)")
    p.set_defaults(func=_train)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"risk-engine: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
