"""`risk-engine rules ...`: check, test, show, diff a rule set and list the fields a rule can read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def archive_flag(value: str) -> Path:
    from engine.config import ARCHIVE_OFF

    return ARCHIVE_OFF if value.lower() == "off" else Path(value)


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
    from engine.rules.functions import FUNCTIONS

    for fname, fn in FUNCTIONS.items():
        params = ", ".join(p if p != "*" else "..." for p in fn.params)
        print(f"{fname + '(' + params + ')':32} {fn.returns:7} {fn.doc}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `rules` commands."""
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
