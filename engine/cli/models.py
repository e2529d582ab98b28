"""`risk-engine models ...`: the model registry (engine.model.registry): list, promote, challenger."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.rules.ruleset import RuleSet


def _metric(values: dict[str, object], key: str) -> str:
    value = values.get(key)
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _models_list(args: argparse.Namespace) -> int:

    from engine.model.registry import RegistryError, list_models

    try:
        entries = list_models(Path(args.dir))
    except RegistryError as exc:
        print(f"risk-engine models list: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no models in {args.dir} (train one: risk-engine train --out {args.dir})")
        return 0
    header = ("VERSION", "STATUS", "CREATED", "TRAINING DATA", "TEST AUC", "TEST AP", "VAL AP", "THRESHOLDS")
    rows = []
    for e in entries:
        test = e.metrics.get("test")
        test = test if isinstance(test, dict) else {}
        status = "promoted" if e.promoted else f"challenger ({e.challenger})" if e.challenger else ""
        span = f"{e.data_from[:10]} .. {e.data_to[:10]}" if e.data_from or e.data_to else "-"
        t = e.thresholds
        review, deny = (t.get(k) if t.get(k) is not None else "-" for k in ("review_at", "deny_at"))
        thresholds = f"review {review}, deny {deny}" if t else "-"
        rows.append(
            (
                e.version,
                status or ("unreadable" if e.problem else ""),
                e.created[:16].replace("T", " "),
                span,
                _metric(test, "auc_roc"),
                _metric(test, "average_precision"),
                "-" if e.validation_ap is None else f"{e.validation_ap:.4f}",
                thresholds,
            )
        )
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _load_rules_for(command: str, rules: str) -> RuleSet | str:
    """The rule set to check a model against, or a one-line error (returned as a str)."""
    from engine.rules.errors import RuleSetInvalid
    from engine.rules.loader import load_ruleset

    try:
        return load_ruleset(rules)
    except RuleSetInvalid as exc:
        first = str(exc.errors[0]) if exc.errors else str(exc)
        return f"risk-engine models {command}: the rule set {rules} is invalid ({len(exc.errors)} error(s)): {first}"


def _models_promote(args: argparse.Namespace) -> int:
    from engine.model.predictor import ModelInvalid
    from engine.model.registry import CandidateWorse, RegistryError, compare_with_champion, promote
    from engine.rules.ruleset import RuleSet

    ruleset = _load_rules_for("promote", args.rules)
    if not isinstance(ruleset, RuleSet):
        print(ruleset, file=sys.stderr)
        return 2
    try:
        comparison = compare_with_champion(Path(args.dir), args.version)
        model = promote(Path(args.dir), args.version, ruleset, refuse_worse=not args.force)
    except CandidateWorse as exc:
        print(exc.comparison.render())
        print(f"risk-engine models promote: refused, PROMOTED unchanged: {exc} (--force promotes it anyway)",
              file=sys.stderr)  # fmt: skip
        return 2
    except RegistryError as exc:
        print(f"risk-engine models promote: {exc}", file=sys.stderr)
        return 2
    except ModelInvalid as exc:
        print(f"risk-engine models promote: refused, PROMOTED unchanged: {exc}", file=sys.stderr)
        return 2
    if comparison is not None:
        print(comparison.render())
    forced = " (--force: despite a worse validation)" if comparison is not None and comparison.worse else ""
    print(f"promoted {model.version} in {args.dir}{forced} (a running server reloads it within its reload interval)")
    return 0


def _models_challenger(args: argparse.Namespace) -> int:
    from engine.model.predictor import ModelInvalid
    from engine.model.registry import RegistryError, clear_challenger, set_challenger
    from engine.rules.ruleset import RuleSet

    name = "risk-engine models challenger"
    if args.clear:
        if args.version or args.mode or args.share is not None:
            print(f"{name}: --clear takes no VERSION, --mode or --share", file=sys.stderr)
            return 2
        cleared = clear_challenger(Path(args.dir))
        print(f"challenger cleared in {args.dir}" if cleared else f"no challenger in {args.dir}")
        return 0
    if not args.version or not args.mode:
        print(f"{name}: give VERSION and --mode shadow|split, or --clear", file=sys.stderr)
        return 2
    share = args.share
    if args.mode == "split" and share is None:
        share = 0.1
    ruleset = _load_rules_for("challenger", args.rules)
    if not isinstance(ruleset, RuleSet):
        print(ruleset, file=sys.stderr)
        return 2
    try:
        config = set_challenger(Path(args.dir), args.version, args.mode, share, ruleset)
    except RegistryError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except ModelInvalid as exc:
        print(f"{name}: refused, CHALLENGER unchanged: {exc}", file=sys.stderr)
        return 2
    print(f"challenger {config.version} ({config.describe()}) in {args.dir}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="the model registry: list, promote, challenger").add_subparsers(
        dest="models_command", required=True
    )
    registry = "models"
    rules = "rules"
    p = models.add_parser("list", help="the models of a registry, which one is promoted and which one challenges")
    p.add_argument("--dir", default=registry, help="registry folder (default models/)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_models_list)
    p = models.add_parser("promote", help="serve VERSION: checked against the rule set, then PROMOTED is replaced")
    p.add_argument("version")
    p.add_argument("--dir", default=registry, help="registry folder (default models/)")
    p.add_argument("--rules", default=rules, help="rule set the model must serve with (default rules/)")
    p.add_argument("--force", action="store_true", help="promote even when its validation AP is below the champion's")
    p.set_defaults(func=_models_promote)
    p = models.add_parser("challenger", help="run a second model beside the promoted one (shadow or split)")
    p.add_argument("version", nargs="?", help="the challenger model's version")
    p.add_argument("--mode", choices=("shadow", "split"), help="shadow: scored and recorded; split: decides a share")
    p.add_argument("--share", type=float, help="split: share of transactions it decides, 0 to 1 (default 0.1)")
    p.add_argument("--clear", action="store_true", help="stop the challenger")
    p.add_argument("--dir", default=registry, help="registry folder (default models/)")
    p.add_argument("--rules", default=rules, help="rule set the model must serve with (default rules/)")
    p.set_defaults(func=_models_challenger)
