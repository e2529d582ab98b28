"""The commands over history: decisions export, feedback import, train, backtest, audit and simulate."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import missing_hint

if TYPE_CHECKING:
    from engine.offline.spark.jobs import SparkOptions


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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands over history, in the order `--help` lists them."""
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


def add_offline_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """train, backtest, audit and simulate."""
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
