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
import logging
import sys
from pathlib import Path

from engine.cli import history, models, rules, serve
from engine.config import ConfigError, missing_hint

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

    serve.add_parser(sub)
    history.add_parsers(sub)
    rules.add_parser(sub)
    history.add_offline_parsers(sub)
    models.add_parser(sub)

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
