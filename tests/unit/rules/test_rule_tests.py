"""Rule tests an analyst can rely on: pinned rollout buckets, shadow hits in failures, every rule with an example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.rules import RuleSetInvalid, load_ruleset
from tests.support import ROOT

RULES = """version: "rt1"
windows:
  - {name: ip_count_10m, entity: ip, aggregate: count, duration: 10m}
rules:
  - id: ip_burst
    condition: "ip_count_10m >= 20"
    action: review
    reason_code: IP_BURST
    message: Many payments from this IP.
    rollout: 20
  - id: big
    condition: "amount >= 1000"
    action: review
    reason_code: BIG
    message: Big.
    mode: shadow
  - id: huge
    condition: "amount >= 50000"
    action: deny
    reason_code: HUGE
    message: Huge.
tests:
  - name: inside the share
    transaction: {amount: 20, ip: 81.2.69.160}
    windows: {ip_count_10m: 20}
    rollout: in
    expect: {decision: review, reasons: [IP_BURST], shadow: []}
  - name: outside the share
    transaction: {amount: 20, ip: 81.2.69.160}
    windows: {ip_count_10m: 20}
    rollout: out
    expect: {decision: allow, reasons: [], shadow: [ip_burst]}
  - name: a big amount is counted in shadow
    transaction: {amount: 2000}
    expect: {decision: allow, shadow: [big]}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "r.yaml").write_text(text)
    return tmp_path


def check(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "rules", "check", str(path), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_rollout_in_and_out_pin_every_rolling_out_rule(tmp_path: Path) -> None:
    rs = load_ruleset(write(tmp_path, RULES))  # both tests pass, whatever their ids' buckets
    assert [t.rollout for t in rs.tests] == [True, False, None]


def test_a_failure_lists_the_shadow_rules_that_fired(tmp_path: Path) -> None:
    text = RULES.replace(
        "    rollout: out\n    expect: {decision: allow, reasons: [], shadow: [ip_burst]}",
        "    rollout: out\n    expect: {decision: review, reasons: [IP_BURST]}",
    )
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(write(tmp_path, text))
    (err,) = exc.value.errors
    assert err.message == (
        "test 'outside the share' failed: expected review, got allow; expected reasons [IP_BURST], got [none]"
        " (shadow rules that fired: ip_burst)"
    )


def test_a_bad_rollout_pin_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(write(tmp_path, RULES.replace("rollout: in\n", "rollout: half\n")))
    (err,) = exc.value.errors
    assert (err.line, err.column) == (26, 14)
    assert "'rollout' must be 'in' (rolling-out rules act) or 'out' (they are in shadow)" in err.message


def test_rules_without_an_example_are_a_warning_and_an_error_with_strict(tmp_path: Path) -> None:
    path = write(tmp_path, RULES)
    assert load_ruleset(path).without_example == ("huge",)
    proc = check(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = f"{path / 'r.yaml'}:17:9: warning: rule 'huge' has no example: no rule test makes it fire"
    assert warning in proc.stdout and "1 rule(s) without an example" in proc.stdout
    strict = check(path, "--strict")
    assert strict.returncode == 1
    assert f"{path / 'r.yaml'}:17:9: error: rule 'huge' has no example" in strict.stdout
    assert "1 error(s): rules without an example (--strict)" in strict.stderr
    # An example makes it pass, even in shadow or acting on a share (any test that makes it fire).
    with_example = RULES + "  - name: huge\n    transaction: {amount: 60000}\n    expect: {decision: deny}\n"
    assert check(write(tmp_path, with_example), "--strict").returncode == 0
