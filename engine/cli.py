"""The `risk-engine` command: serve, train, and check rules.

risk-engine serve [--port N] [--rules PATH] [--model PATH] [--redis-url URL] [--decision-log DIR] ...
risk-engine decisions export --since T --until T [--feedback FILE] [--log DIR] --out FILE
risk-engine rules check PATH [--strict]
risk-engine rules test PATH
risk-engine rules fields PATH
risk-engine rules show --digest D [--archive DIR]
risk-engine rules diff A B [--archive DIR]
risk-engine simulate (--out FILE | --target HOST:PORT [--rate N]) [--days N] [--users N] [--seed S]
risk-engine train --data FILE --config FILE [--rules PATH] [--out DIR] [--promote] [--since T] [--until T]
risk-engine backtest --data FILE [--rules PATH] [--model DIR] [--compare PATH] [--compare-model DIR] [--mapping M]
    [--since T] [--until T] [--review-cost X] [--chargeback-factor X] [--false-decline-margin X]
    [--review-capacity N] [--max-decline-rate R] --out DIR
risk-engine audit --log DIR [--rules PATH] [--model DIR] [--feedback FILE] [--out DIR]
  (train, backtest and audit: [--engine local|spark] [--spark-master URL] [--spark-conf KEY=VALUE])
risk-engine models list [--dir DIR] [--json]
risk-engine models promote VERSION [--dir DIR] [--rules PATH] [--force]
risk-engine models challenger (VERSION --mode shadow|split [--share S] | --clear) [--dir DIR] [--rules PATH]
risk-engine console [--db URL] [--port N] [--decision-log DIR] [--rules DIR] [--engine HOST:PORT] (engine.desk)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError, ServeConfig, missing_hint

if TYPE_CHECKING:
    from engine.offline.spark.jobs import SparkOptions
    from engine.rules.ruleset import RuleSet


def _serve(args: argparse.Namespace) -> int:
    from engine.logs import configure
    from engine.model.predictor import ModelInvalid
    from engine.rules.errors import RuleSetInvalid
    from engine.service.server import serve
    from engine.service.workers import supervise

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    try:
        config = ServeConfig.from_env()
        overrides = {
            "host": args.host,
            "port": args.port,
            "rules": path(args.rules),
            "model": path(args.model),
            "redis_url": args.redis_url,
            "redis_budget_ms": args.redis_budget_ms,
            "threads": args.threads,
            "workers": args.workers,
            "reload_interval_s": args.reload_interval,
            "log_format": args.log_format,
            "tls_cert": path(args.tls_cert),
            "tls_key": path(args.tls_key),
            "tls_client_ca": path(args.tls_client_ca),
            "admin_host": args.admin_host,
            "ruleset_archive": None if args.ruleset_archive is None else _archive_flag(args.ruleset_archive),
            "card_data": args.card_data,
            "pseudonym_key_file": path(args.pseudonym_key_file),
            "clear_ids": True if args.clear_ids else None,
            "admin_token_file": path(args.admin_token_file),
            "admin_allow": tuple(args.admin_allow) if args.admin_allow else None,
            "insecure": True if args.insecure else None,
        }
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        ports: dict[str, int | None] = {}
        for flag, name in (("--metrics-port", "metrics_port"), ("--admin-port", "admin_port")):
            value = getattr(args, name)
            if value is not None:
                if value != "off" and not value.isdigit():
                    raise ConfigError(f"{flag} must be a port number or 'off', got {value!r}")
                ports[name] = None if value == "off" else int(value)
        if "metrics_port" in ports:
            config = replace(config, metrics_port=ports["metrics_port"])
        if "admin_port" in ports:
            config = replace(config, admin_port=ports["admin_port"])
        if args.decision_log is not None:
            config = replace(config, decision_log=None if args.decision_log == "off" else Path(args.decision_log))
        configure(config.log_format if config.log_format in ("json", "text") else "text")
        if config.workers > 1 and config.worker_index is None:
            supervise(config)  # N server processes on one port
        else:
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


def _archive_flag(value: str) -> Path:
    from engine.config import ARCHIVE_OFF

    return ARCHIVE_OFF if value.lower() == "off" else Path(value)


def _decisions_export(args: argparse.Namespace) -> int:
    from engine.offline.export import ExportError, export, parse_time

    try:
        summary = export(
            Path(args.log),
            Path(args.out),
            since_ms=parse_time(args.since) if args.since else None,
            until_ms=parse_time(args.until) if args.until else None,
            feedback=Path(args.feedback) if args.feedback else None,
        )
    except ExportError as exc:
        print(f"risk-engine decisions export: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary.path}: {summary.rows:,} transactions, {summary.labeled:,} labeled"
        f" ({summary.duplicates:,} repeated records, the last kept; {summary.bad_lines:,} unreadable lines skipped)"
    )
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from engine.rules.errors import RuleSetInvalid
    from engine.rules.loader import load_ruleset

    try:
        rs = load_ruleset(args.path)
    except RuleSetInvalid as exc:
        for err in exc.errors:
            print(err)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    # A rule no test makes fire has no example: a warning, an error with --strict.
    unexampled = [r for r in rs.rules if r.id in set(rs.without_example)]
    for rule in unexampled:
        kind = "error" if args.strict else "warning"
        print(
            f"{rule.source}: {kind}: rule '{rule.id}' has no example: no rule test makes it fire"
            " (hint: add a test under 'tests:' that it fires for, docs/rules.md \"Rule tests\")"
        )
    if unexampled and args.strict:
        print(f"{len(unexampled)} error(s): rules without an example (--strict)", file=sys.stderr)
        return 1
    shadow = sum(1 for r in rs.rules if r.mode == "shadow")
    rolling = sum(1 for r in rs.rules if r.mode == "active" and r.rollout < 100)
    print(
        f"ok: rule set {rs.version} ({rs.digest}): {len(rs.rules) - shadow} active rules"
        f" ({rolling} rolling out), {shadow} shadow, {len(rs.disabled)} disabled;"
        f" {len(rs.windows.specs)} windows, {len(rs.lists)} lists, {len(rs.tests)} tests passed"
        + (f"; {len(unexampled)} rule(s) without an example" if unexampled else "")
    )
    return 0


def _rules_show(args: argparse.Namespace) -> int:
    from engine.rules.archive import ArchiveError, find, show

    try:
        print(show(find(Path(args.archive), args.digest)), end="")
    except (ArchiveError, OSError, ValueError) as exc:
        print(f"risk-engine rules show: {exc}", file=sys.stderr)
        return 2
    return 0


def _rules_diff(args: argparse.Namespace) -> int:
    from engine.rules.archive import FILES, ArchiveError, RuleTable, diff, find, manifest, read_rules

    def table(which: str) -> RuleTable:
        """A folder (or file) of rules, else a digest in the archive."""
        path = Path(which)
        if path.exists():
            return read_rules(path, str(path))
        found = find(Path(args.archive), which)
        m = manifest(found)
        return read_rules(found / FILES, f"{m['digest']} ({m['version']})")

    try:
        a, b = table(args.a), table(args.b)
    except (ArchiveError, OSError, ValueError) as exc:
        print(f"risk-engine rules diff: {exc}", file=sys.stderr)
        return 2
    lines = diff(a, b)
    print(f"--- {a.label}: version {a.version}, {len(a.rules)} rules")
    print(f"+++ {b.label}: version {b.version}, {len(b.rules)} rules")
    for line in lines:
        print(line)
    if not lines:
        print("no rule added, removed or changed")
    return 1 if lines else 0


def _rules_test(args: argparse.Namespace) -> int:
    from engine.rules.errors import RuleSetInvalid
    from engine.rules.loader import load_ruleset
    from engine.rules.rule_tests import run_rule_tests

    try:
        rs = load_ruleset(args.path, run_tests=False)
    except RuleSetInvalid as exc:
        for err in exc.errors:
            print(err)
        print(f"{len(exc.errors)} error(s): fix these before the tests can run", file=sys.stderr)
        return 1
    outcomes = run_rule_tests(rs)
    failed = 0
    for outcome in outcomes:
        if outcome.failure:
            failed += 1
            print(f"FAIL {outcome.test.where}: {outcome.failure}")
        else:
            decision = outcome.decision.name.lower() if outcome.decision is not None else "?"
            reasons = ", ".join(sorted(outcome.reasons)) or "no reasons"
            shadow = f" shadow [{', '.join(sorted(outcome.shadow))}]" if outcome.shadow else ""
            print(f"ok   {outcome.test.name}: {decision} [{reasons}]{shadow}")
    print(f"{len(outcomes) - failed} passed, {failed} failed", file=sys.stderr)
    if not outcomes:
        print(f"no tests in {args.path}: add a 'tests:' list (docs/rules.md)", file=sys.stderr)
    return 1 if failed else 0


def _rules_fields(args: argparse.Namespace) -> int:
    from engine.enrich import FIELDS
    from engine.rules.errors import RuleSetInvalid
    from engine.rules.loader import load_ruleset
    from engine.rules.ruleset import SCORE

    try:
        rs = load_ruleset(args.path)
    except RuleSetInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    windows = {s.name: s for s in rs.windows.specs}
    derived = {name: text for name, _, text in rs.features}
    for name, kind in rs.catalog.items():
        if name in FIELDS:
            meaning = FIELDS[name][1]
        elif name == SCORE:
            meaning = "the model's fraud probability (NaN when the model could not run)"
        elif name in derived:
            meaning = f"feature: {derived[name]}"
        else:
            s = windows[name]
            of = f"({s.field})" if s.field else ""
            what = "window" if s.label is None else f"label window ({s.label})"
            delay = f", delayed {s.delay_ms // 1000} s" if s.delay_ms else ""
            unit = {
                "first_seen": " (seconds since its oldest event; missing when none)",
                "since_previous": " (seconds since its previous event; missing when none)",
                "is_new": " (1: no other event in the window, else 0)",
            }.get(s.aggregate.value, "")
            meaning = (
                f"{what}: {s.aggregate.value}{of} per {'+'.join(s.entity)} over {s.duration_ms // 1000} s{delay}{unit}"
            )
        print(f"{name:32} {kind:7} {meaning}")
    print(f"{'attributes.KEY':32} {'string':7} a gateway attribute ('' when not sent)")
    for name, named in sorted(rs.lists.items()):
        left = "ip in" if named.kind == "cidr" else f"x ({named.value_type}) in"
        print(f"{'lists.' + name:32} {'list':7} {left} lists.{name}: {len(named):,} {named.kind} values")
    from engine.rules.expr import FUNCTIONS

    for fname, fn in FUNCTIONS.items():
        params = ", ".join(p if p != "*" else "..." for p in fn.params)
        print(f"{fname + '(' + params + ')':32} {fn.returns:7} {fn.doc}")
    return 0


def _spark_options(args: argparse.Namespace, command: str) -> SparkOptions | str | None:
    """The Spark engine's options from --engine, --spark-master and --spark-conf (None: local; str: an error)."""
    if args.engine != "spark":
        if args.spark_master or args.spark_conf:
            return f"risk-engine {command}: --spark-master and --spark-conf need --engine spark"
        return None
    from engine.offline.spark.jobs import SparkOptions
    from engine.offline.spark.session import DEFAULT_MASTER, parse_conf

    try:
        conf = parse_conf(args.spark_conf)
    except ValueError as exc:
        return f"risk-engine {command}: {exc}"
    return SparkOptions(master=args.spark_master or DEFAULT_MASTER, conf=conf)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local (this machine, the default) or spark (Apache Spark: docs/spark.md)",
    )
    p.add_argument("--spark-master", help="with --engine spark: the master URL (default local[*]; spark://HOST:PORT)")
    p.add_argument(
        "--spark-conf",
        action="append",
        metavar="KEY=VALUE",
        help="with --engine spark: a Spark setting, e.g. spark.executor.memory=4g (repeatable)",
    )


#: `train --data` by default: the handbook data beside the checkout, from the current folder.
DEFAULT_TRAIN_DATA = "../shared/data/handbook/transactions.parquet"


def _train(args: argparse.Namespace) -> int:
    from engine.offline.train import train

    data = args.data or DEFAULT_TRAIN_DATA
    if not Path(data).exists():
        print(f"risk-engine train: --data {data}: does not exist ({missing_hint(data)})", file=sys.stderr)
        return 2
    spark = _spark_options(args, "train")
    if isinstance(spark, str):
        print(spark, file=sys.stderr)
        return 2
    try:
        from engine.offline.period import parse_period

        period = parse_period(args.since, args.until)
        folder = train(
            data,
            args.rules,
            args.config,
            args.out,
            promote=args.promote,
            spark=spark,
            period=period,
            max_rejected=args.max_rejected,
        )
    except ValueError as exc:
        print(f"risk-engine train: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    metadata = (folder / "metadata.json").read_text()
    print(metadata)
    _print_rejections(json.loads(metadata)["training_data"]["rejections"])
    for warning in json.loads(metadata).get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _print_rejections(rejections: dict[str, Any]) -> None:
    """The rejected rows' summary on stderr, when there are any (under the threshold: the command goes on)."""
    from engine.offline.rejections import Rejections

    if rejections["rejected"]:
        print("\n".join(Rejections.from_json(rejections).lines()), file=sys.stderr)


def _max_rejected(text: str) -> float:
    from engine.offline.rejections import parse_share

    try:
        return parse_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_max_rejected(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-rejected",
        type=_max_rejected,
        default="1%",
        metavar="SHARE",
        help="fail when more than this share of the rows is rejected by validation (default 1%%; e.g. 5%% or 0.05)",
    )


def _backtest(args: argparse.Namespace) -> int:
    from engine.model.predictor import ModelInvalid
    from engine.offline.backtest import backtest
    from engine.offline.datasets import DatasetError
    from engine.rules.errors import RuleSetInvalid

    spark = _spark_options(args, "backtest")
    if isinstance(spark, str):
        print(spark, file=sys.stderr)
        return 2
    try:
        from engine.offline.backtest import Options
        from engine.offline.period import parse_period

        costs = {key: getattr(args, key) for key in COST_FLAGS if getattr(args, key) is not None}
        if "review_cost" in costs:
            costs["review"] = costs.pop("review_cost")
        options = Options(parse_period(args.since, args.until), costs, args.compare_model)
        result = backtest(
            args.data,
            args.rules,
            args.out,
            model=None if args.no_model else args.model,
            compare=args.compare,
            mapping=args.mapping,
            limit=args.limit,
            progress=not args.quiet,
            spark=spark,
            options=options,
            max_rejected=args.max_rejected,
        )
    except DatasetError as exc:
        print(f"risk-engine backtest: {exc}", file=sys.stderr)
        return 2
    except RuleSetInvalid as exc:
        print(f"risk-engine backtest: the rule set is invalid:\n{exc}", file=sys.stderr)
        return 2
    except ModelInvalid as exc:
        print(
            f"risk-engine backtest: the model cannot be used: {exc}\n"
            "  (pass --model DIR for another model, or --no-model to backtest the rules alone)",
            file=sys.stderr,
        )
        return 2
    for path in result.files:
        print(f"wrote {path}")
    if "rejections" in result.summary:
        _print_rejections(result.summary["rejections"])
    return 0


#: The backtest's cost flags (attribute names), over the rule set's `costs:` section.
COST_FLAGS = ("review_cost", "chargeback_factor", "false_decline_margin", "review_capacity", "max_decline_rate")


def _period_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="only rows from this event time (inclusive): 2018-07-01, 2018-07-01T12:00:00Z, ms")
    p.add_argument("--until", help="only rows before this event time (exclusive), same forms")


def _cost_options(p: argparse.ArgumentParser) -> None:
    def number(low: float, high: float | None) -> Callable[[str], float]:
        def parse(text: str) -> float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
            if not math.isfinite(value) or value < low or (high is not None and value > high):
                raise argparse.ArgumentTypeError(
                    f"must be from {low:g} to {high:g}" if high is not None else f"must be {low:g} or more"
                )
            return value

        return parse

    p.add_argument("--review-cost", type=number(0, None), help="cost of one review (default: costs: in the rules, 5)")
    p.add_argument(
        "--chargeback-factor", type=number(0, None), help="a missed fraud costs its amount times this (default 1)"
    )
    p.add_argument(
        "--false-decline-margin",
        type=number(0, 1),
        help="share of a declined genuine payment's amount lost (default 0.1)",
    )
    p.add_argument("--review-capacity", type=number(0, None), help="reviews a day the team can work (default: none)")
    p.add_argument(
        "--max-decline-rate", type=number(0, 1), help="largest share of transactions declined (default: none)"
    )


def _audit(args: argparse.Namespace) -> int:
    from engine.model.predictor import ModelInvalid
    from engine.offline.audit import AuditError, audit, render
    from engine.rules.errors import RuleSetInvalid

    spark = _spark_options(args, "audit")
    if isinstance(spark, str):
        print(spark, file=sys.stderr)
        return 2
    if args.examples < 0:
        print("risk-engine audit: --examples must be 0 or more", file=sys.stderr)
        return 2
    try:
        result = audit(
            args.log,
            args.rules,
            model=None if args.no_model else args.model,
            out=args.out,
            feedback=args.feedback,
            examples=args.examples,
            spark=spark,
        )
    except AuditError as exc:
        print(f"risk-engine audit: {exc}", file=sys.stderr)
        return 2
    except RuleSetInvalid as exc:
        print(f"risk-engine audit: the rule set is invalid:\n{exc}", file=sys.stderr)
        return 2
    except ModelInvalid as exc:
        print(f"risk-engine audit: the model cannot be used: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render(result))
    return 0 if result.clean else 1


def _simulate(args: argparse.Namespace) -> int:
    from engine.offline.synthetic import generate, shift_to_present, write_parquet
    from engine.service.traffic import stream

    if args.days < 1 or args.users < 1:
        print("risk-engine simulate: --days and --users must be at least 1", file=sys.stderr)
        return 2
    if (args.out is None) == (args.target is None):
        print("risk-engine simulate: give --out FILE or --target HOST:PORT", file=sys.stderr)
        return 2
    merchants = args.merchants or max(args.users // 5, 1)
    rows = generate(days=args.days, users=args.users, merchants=merchants, seed=args.seed)
    frauds = sum(1 for r in rows if r["label"])
    if args.out is not None:
        path = write_parquet(rows, args.out)
        print(f"wrote {path}: {len(rows):,} transactions, {frauds:,} labeled fraud (mapping: native)")
        return 0
    live = shift_to_present(rows)
    if args.count is not None:
        live = live[: args.count]
    print(f"streaming {len(live):,} transactions (the last simulated day) to {args.target} at {args.rate:g}/s")
    try:
        stats = stream(live, args.target, args.rate, duration_s=args.duration)
    except KeyboardInterrupt:
        return 130
    lat = sorted(stats.latencies_ms)
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    print(f"sent {stats.sent:,}: decisions {stats.decisions}, errors {stats.errors or 'none'}; "
          f"latency p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # fmt: skip
    return 1 if stats.errors else 0


def _feedback_import(args: argparse.Namespace) -> int:
    import grpc

    from engine.offline.datasets import DatasetError
    from engine.rules.settings import parse_duration
    from engine.service.feedback_client import read_feedback, send_feedback

    delay = None
    if args.label_delay is not None:
        delay = parse_duration(args.label_delay)
        if delay is None:
            print(
                f"risk-engine feedback import: --label-delay {args.label_delay!r} is not a duration like 7d",
                file=sys.stderr,
            )
            return 2
    try:
        items, unlabeled = read_feedback(args.data, args.mapping, delay)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"risk-engine feedback import: {exc}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(args.target) as channel:
        report = send_feedback(channel, items, timeout_s=args.timeout)
    refused = sum(report.refused.values())
    print(
        f"sent {report.sent:,} labels to {args.target}: {report.recorded:,} recorded, "
        f"{report.duplicates:,} already recorded, {refused:,} refused {dict(report.refused) or ''}; "
        f"{unlabeled:,} unlabeled rows skipped"
    )
    for line in report.first_errors:
        print(f"  {line}", file=sys.stderr)
    return 1 if refused else 0


# -- models: the registry (engine.model.registry) ----------------------------


def _metric(values: dict[str, object], key: str) -> str:
    value = values.get(key)
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _models_list(args: argparse.Namespace) -> int:
    import json

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


def _add_models_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


#: Path options checked before a command runs, with the default each takes when not given (None: always
#: given). An explicit path that does not exist gets the command's own error (a missing rule set, model or
#: registry); serve checks its own paths, with RISK_RULES and RISK_MODEL.
_INPUT_PATHS = (("dir", "--dir", "models"), ("rules", "--rules", "rules"), ("model", "--model", "models"),
                ("config", "--config", None))  # fmt: skip


def _missing_path(args: argparse.Namespace) -> str:
    """A one-line error for an input path that does not exist ('' when all do).

    Every default is relative to the current folder (rules/, models/), never
    the install's own, so a copy of the project uses its own rules and models.
    """
    if args.command in ("serve", "console"):
        return ""
    command = " ".join(str(c) for c in (args.command, getattr(args, f"{args.command}_command", None)) if c)
    for dest, flag, default in _INPUT_PATHS:
        value = getattr(args, dest, None)
        if not isinstance(value, str) or (dest == "model" and getattr(args, "no_model", False)):
            continue
        if (default is not None and value != default) or Path(value).exists():
            continue
        where = " (the default)" if value == default else ""
        return f"risk-engine {command}: {flag} {value}{where}: does not exist ({missing_hint(value)})"
    if args.command == "rules" and args.rules_command == "fields" and not Path(args.path).exists():
        return f"risk-engine rules fields: {args.path}: does not exist ({missing_hint(args.path)})"
    return ""


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
    p.add_argument(
        "--workers", type=int, help="server processes sharing the port, more than 1 needs Redis (RISK_WORKERS, 1)"
    )
    p.add_argument("--metrics-port", help="Prometheus /metrics port, or 'off' (RISK_METRICS_PORT, 9464)")
    p.add_argument(
        "--reload-interval",
        type=float,
        help="seconds between checks of the rules folder, 0: off (RISK_RELOAD_INTERVAL_S, 1)",
    )
    p.add_argument("--log-format", choices=("json", "text"), help="log lines (RISK_LOG_FORMAT, json)")
    p.add_argument("--decision-log", help="folder of the decision log, or 'off' (RISK_DECISION_LOG, off)")
    p.add_argument(
        "--ruleset-archive",
        help="folder keeping every rule set loaded, by digest, or 'off'"
        " (RISK_RULESET_ARCHIVE; default: rulesets/ in the decision log's folder)",
    )
    p.add_argument("--tls-cert", help="server certificate chain, PEM: turns TLS on (RISK_TLS_CERT)")
    p.add_argument("--tls-key", help="server private key, PEM (RISK_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="CA bundle for client certificates: mutual TLS (RISK_TLS_CLIENT_CA)")
    p.add_argument("--admin-host", help="admin service address (RISK_ADMIN_HOST, 127.0.0.1)")
    p.add_argument("--admin-port", help="admin service port, or 'off' (RISK_ADMIN_PORT, 50052)")
    p.add_argument(
        "--admin-token-file",
        help="file holding the bearer token admin calls must send (RISK_ADMIN_TOKEN_FILE; default: generated"
        " beside the data)",
    )
    p.add_argument(
        "--admin-allow",
        action="append",
        help="a client certificate identity (common name or SAN) allowed to call admin; repeatable"
        " (RISK_ADMIN_ALLOW, comma-separated)",
    )
    p.add_argument(
        "--card-data",
        choices=("refuse", "mask"),
        help="a card number or CVV/PIN/track data in a request: refuse it, or mask it (RISK_CARD_DATA, refuse)",
    )
    p.add_argument(
        "--pseudonym-key-file",
        help="secret of the keyed hash of ids (RISK_PSEUDONYM_KEY_FILE, or RISK_PSEUDONYM_KEY; default: generated"
        " beside the data)",
    )
    p.add_argument(
        "--clear-ids", action="store_true", help="keep ids in clear in Redis and the decision log (RISK_CLEAR_IDS)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plaintext scoring port beyond loopback (RISK_INSECURE; otherwise it needs TLS)",
    )
    p.set_defaults(func=_serve)

    decisions = sub.add_parser("decisions", help="the decision log").add_subparsers(
        dest="decisions_command", required=True
    )
    p = decisions.add_parser("export", help="decisions (joined with labels) as a training-ready Parquet file")
    p.add_argument("--log", default="decisions", help="decision log folder (default decisions/)")
    p.add_argument("--since", help="event time from (inclusive): 2026-01-31, 2026-01-31T12:00:00Z or epoch ms")
    p.add_argument("--until", help="event time until (exclusive), same forms")
    p.add_argument("--feedback", help="labels: CSV or Parquet with transaction_id,label[,label_time]")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.set_defaults(func=_decisions_export)

    feedback = sub.add_parser("feedback", help="label feedback (outcomes known after the fact)").add_subparsers(
        dest="feedback_command", required=True
    )
    p = feedback.add_parser("import", help="send the labels of a file to a running server (the Feedback rpc)")
    p.add_argument("--data", required=True, help="Parquet or CSV of labeled transactions")
    p.add_argument("--target", default="127.0.0.1:50051", help="server address (default 127.0.0.1:50051)")
    p.add_argument("--mapping", default="native", help="column mapping: a preset (native, handbook) or a YAML file")
    p.add_argument(
        "--label-delay",
        help="without a label time column: labels known this long after the transaction (e.g. 7d; default: now)",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per call (default 2)")
    p.set_defaults(func=_feedback_import)

    rules = sub.add_parser("rules", help="work with rule sets").add_subparsers(dest="rules_command", required=True)
    p = rules.add_parser("check", help="validate a rule set; errors with file:line:column")
    p.add_argument("path")
    p.add_argument("--strict", action="store_true", help="a rule without an example in the rule tests is an error")
    p.set_defaults(func=_rules_check)
    archive = "decisions/rulesets"
    p = rules.add_parser("show", help="print a rule set the server archived, by its digest")
    p.add_argument("--digest", required=True, help="the digest (ScoreResponse.ruleset_digest), or a prefix")
    p.add_argument("--archive", default=archive, help=f"the rule set archive (RISK_RULESET_ARCHIVE; default {archive})")
    p.set_defaults(func=_rules_show)
    p = rules.add_parser(
        "diff", help="rules added, removed and changed between two sets (digests in the archive, or folders)"
    )
    p.add_argument("a", help="the earlier set: a digest or a rules folder")
    p.add_argument("b", help="the later set: a digest or a rules folder")
    p.add_argument("--archive", default=archive, help=f"the rule set archive (default {archive})")
    p.set_defaults(func=_rules_diff)
    p = rules.add_parser("test", help="run the rule tests written beside the rules")
    p.add_argument("path")
    p.set_defaults(func=_rules_test)
    p = rules.add_parser("fields", help="print the catalog of names a rule can read")
    p.add_argument("path", nargs="?", default="rules")
    p.set_defaults(func=_rules_fields)

    p = sub.add_parser("train", help="train a model by replaying labeled history through the pipeline")
    p.add_argument("--data", help="Parquet or CSV file (default ../shared/data/handbook/transactions.parquet)")
    p.add_argument("--config", required=True, help="training config, e.g. models/handbook.train.yaml")
    p.add_argument("--rules", default="rules", help="rule set whose windows give the features")
    p.add_argument("--out", default="models", help="registry folder to write the model into")
    p.add_argument("--promote", action="store_true", help="make it the served model (models/PROMOTED)")
    _period_options(p)
    _add_max_rejected(p)
    _add_engine_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("backtest", help="replay labeled history through the pipeline and report the decisions")
    p.add_argument("--data", required=True, help="Parquet or CSV file of labeled transactions")
    p.add_argument("--rules", default="rules", help="rule set to backtest (default rules/)")
    p.add_argument(
        "--model",
        default="models",
        help="model folder or registry (default: the promoted model of models/)",
    )
    p.add_argument("--no-model", action="store_true", help="backtest the rules alone (score NaN)")
    p.add_argument("--compare", metavar="PATH", help="a second rule set: list the changed decisions and metric deltas")
    p.add_argument(
        "--compare-model",
        metavar="DIR",
        help="a second model: the same rows scored by both (AUC, AP, CP@100, changed decisions)",
    )
    p.add_argument(
        "--mapping",
        default=None,
        help="column mapping: a preset (native, handbook) or a YAML file "
        "(default: the rule set's data_mapping, else native)",
    )
    p.add_argument("--out", required=True, help="folder for transactions.parquet, summary.{json,md}, report.html")
    p.add_argument("--limit", type=int, help="replay only the first N rows of the file (of the period)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _period_options(p)
    _cost_options(p)
    _add_max_rejected(p)
    _add_engine_options(p)
    p.set_defaults(func=_backtest)

    p = sub.add_parser(
        "audit",
        help="replay a decision log and report where served and recomputed answers differ (exit 1 when they do)",
    )
    p.add_argument("--log", required=True, help="the decision log folder a server wrote (--decision-log)")
    p.add_argument("--rules", default="rules", help="rule set to replay with (default rules/)")
    p.add_argument("--model", default="models", help="model folder or registry (default models/)")
    p.add_argument("--no-model", action="store_true", help="replay without a model (scores NaN)")
    p.add_argument("--feedback", help="labels the server got: CSV or Parquet with transaction_id,label[,label_time]")
    p.add_argument("--out", help="folder for audit.json and the replay's backtest outputs (default: none kept)")
    p.add_argument("--examples", type=int, default=5, help="examples per differing item (default 5)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_engine_options(p)
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "simulate", help="labeled, gateway-shaped synthetic transactions: write Parquet or stream to a server"
    )
    p.add_argument("--out", help="Parquet file to write (native mapping, plus merchant_category and scenario)")
    p.add_argument("--target", metavar="HOST:PORT", help="stream the last simulated day to this server instead")
    p.add_argument("--rate", type=float, default=50.0, help="with --target: transactions per second (default 50)")
    p.add_argument("--duration", type=float, help="with --target: stop after this many seconds")
    p.add_argument("--count", type=int, help="with --target: send at most this many transactions")
    p.add_argument("--days", type=int, default=30, help="days of traffic (default 30)")
    p.add_argument("--users", type=int, default=300, help="number of users (default 300)")
    p.add_argument("--merchants", type=int, help="number of merchants (default users / 5)")
    p.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives the same file")
    p.set_defaults(func=_simulate)

    _add_models_commands(sub)

    from engine.desk.console import add_parser as add_console_parser

    add_console_parser(sub)

    args = parser.parse_args(argv)
    missing = _missing_path(args)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"risk-engine: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
