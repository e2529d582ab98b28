"""The backtest command: its numbers against a small case computed by hand, compare, inputs, reports, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.offline.datasets import PRESETS, DatasetError, load_mapping
from tests.support import ROOT

ENGINE_YAML = """\
version: "bt-test-1"
timezone: UTC
currency:
  base: EUR
  rates:
    USD: 0.5
windows:
  - {name: card_count_1h, entity: card_id, aggregate: count, duration: 1h}
"""

RULES_A = """\
rules:
  - id: big_amount
    condition: "amount >= 100"
    action: review
    reason_code: BIG_AMOUNT
    message: 100 EUR or more.
  - id: card_burst
    condition: "card_count_1h >= 3"
    action: deny
    reason_code: CARD_BURST
    message: 3 or more payments on this card within an hour.
  - id: web_channel
    condition: "channel == 'web'"
    action: review
    reason_code: WEB_PAYMENT
    message: A web payment.
"""

# B: a lower amount threshold, and no web rule.
RULES_B = """\
rules:
  - id: big_amount
    condition: "amount >= 50"
    action: review
    reason_code: BIG_AMOUNT
    message: 50 EUR or more.
  - id: card_burst
    condition: "card_count_1h >= 3"
    action: deny
    reason_code: CARD_BURST
    message: 3 or more payments on this card within an hour.
"""

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
DAY = 86_400_000

# id, event time, amount (minor units), currency, card, channel, label (None: unlabeled)
ROWS: list[tuple[str, int, int, str, str, str, float | None]] = [
    ("t01", T0 + 0 * MIN, 1_000, "EUR", "c1", "app", 0),
    ("t02", T0 + 5 * MIN, 15_000, "EUR", "c2", "app", 1),
    ("t03", T0 + 10 * MIN, 2_000, "EUR", "c3", "app", 1),
    ("t04", T0 + 11 * MIN, 2_000, "EUR", "c3", "app", 1),
    ("t05", T0 + 12 * MIN, 3_000, "EUR", "c3", "app", 1),
    ("t06", T0 + 20 * MIN, 20_000, "USD", "c4", "app", 0),  # 200 USD = 100 EUR
    ("t07", T0 + 30 * MIN, 4_000, "EUR", "c5", "web", 0),
    ("t08", T0 + 40 * MIN, 6_000, "EUR", "c6", "web", 1),
    ("t09", T0 + 50 * MIN, 12_000, "EUR", "c3", "app", None),
    ("t10", T0 + DAY + 0 * MIN, 7_000, "EUR", "c7", "app", 0),
    ("t11", T0 + DAY + 5 * MIN, 8_000, "EUR", "c8", "app", 1),
    ("t12", T0 + DAY + 10 * MIN, 20_000, "EUR", "c9", "web", 0),
    ("t13", T0 + DAY + 20 * MIN, 9_000, "ZZZ", "c9", "app", 1),  # rejected: not a currency
]


def native_table(rows: list[tuple[str, int, int, str, str, str, float | None]] = ROWS) -> pa.Table:
    # Written in reverse: the backtest must sort by event time itself.
    return pa.Table.from_pylist(
        [
            {
                "transaction_id": tid,
                "event_time_ms": t,
                "amount_minor": amount,
                "currency": cur,
                "user_id": f"u-{card}",
                "card_id": card,
                "device_id": f"d-{card}",
                "ip": "203.0.113.7",
                "country": "DE",
                "merchant_id": "m1",
                "channel": channel,
                "label": label,
            }
            for tid, t, amount, cur, card, channel, label in reversed(rows)
        ]
    )


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    a = tmp_path / "rules_a"
    b = tmp_path / "rules_b"
    for folder, rules in ((a, RULES_A), (b, RULES_B)):
        folder.mkdir()
        (folder / "engine.yaml").write_text(ENGINE_YAML)
        (folder / "rules.yaml").write_text(rules)
    data = tmp_path / "history.parquet"
    pq.write_table(native_table(), data)
    return {"a": a, "b": b, "data": data, "tmp": tmp_path}


def run(*argv: str) -> int:
    """The CLI on the small hand-made rule sets, which the shipped model does not fit: no model unless given."""
    return main(["backtest", "--quiet", *argv, *(() if "--model" in argv else ("--no-model",))])


def summary_of(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return result


def metrics(hits: int, fraud: int, genuine: int, fraud_minor: int, scored: int = 12) -> dict[str, Any]:
    """The expected metrics of a hit set, from its counts (labeled: 6 frauds of 36,000 minor units, 5 genuine)."""
    return {
        "hits": hits,
        "hit_rate": hits / scored,
        "labeled_hits": fraud + genuine,
        "fraud_hits": fraud,
        "genuine_hits": genuine,
        "fraud_amount": fraud_minor * 0.01,
        "precision": fraud / (fraud + genuine) if fraud + genuine else None,
        "recall": fraud / 6,
        "amount_recall": fraud_minor / 36_000,
        "fpr": genuine / 5,
    }


def test_summary_matches_the_hand_computed_case(case: dict[str, Path]) -> None:
    out = case["tmp"] / "out"
    assert run("--data", str(case["data"]), "--rules", str(case["a"]), "--out", str(out)) == 0
    s = summary_of(out)

    # 13 rows, t13 rejected (currency ZZZ): 12 scored, t09 unlabeled: 11 labeled,
    # frauds t02 t03 t04 t05 t08 t11 (15000+2000+2000+3000+6000+8000 = 36000 minor units),
    # genuine t01 t06 t07 t10 t12.
    pop = s["population"]
    assert (pop["rows"], pop["scored"], pop["rejected"]) == (13, 12, 1)
    assert "t13" in pop["first_errors"][0]
    assert (pop["labeled"], pop["unlabeled"], pop["frauds"], pop["genuine"]) == (11, 1, 6, 5)
    assert pop["fraud_amount"] == 360.0
    assert pop["fraud_rate"] == 6 / 11
    assert (pop["from"], pop["to"]) == ("2026-01-01", "2026-01-02")
    assert pop["duplicate_ids"] == 0

    # Decisions: deny t05 t09 (card_burst: 3rd and 4th on c3 within the hour);
    # review t02 (150), t06 (200 USD = 100 EUR), t12 (200, web), t07 t08 (web);
    # allow t01 t03 t04 t10 t11.
    assert s["decisions"] == {
        "allow": {"count": 5, "rate": 5 / 12},
        "review": {"count": 5, "rate": 5 / 12},
        "deny": {"count": 2, "rate": 2 / 12},
    }
    rules = {r["id"]: r for r in s["rules"]}
    assert list(rules) == ["big_amount", "card_burst", "web_channel"]
    # big_amount: t02 (fraud), t06 t12 (genuine), t09 (unlabeled).
    assert rules["big_amount"]["active"] == metrics(4, 1, 2, 15_000)
    # card_burst: t05 (fraud), t09 (unlabeled).
    assert rules["card_burst"]["active"] == metrics(2, 1, 0, 3_000)
    # web_channel: t08 (fraud), t07 t12 (genuine).
    assert rules["web_channel"]["active"] == metrics(3, 1, 2, 6_000)
    assert rules["web_channel"]["action"] == "review"
    assert rules["web_channel"]["shadow"] == metrics(0, 0, 0, 0)

    # Flagged: t02 t05 t08 (fraud), t06 t07 t12 (genuine), t09; deny: t05, t09.
    assert s["engine"]["flagged"] == metrics(7, 3, 3, 24_000)
    assert s["engine"]["deny"] == metrics(2, 1, 0, 3_000)
    assert s["fraud_amount_caught"] == {
        "flagged": 240.0,
        "flagged_share": 24_000 / 36_000,
        "deny": 30.0,
        "deny_share": 3_000 / 36_000,
    }
    assert s["daily"] == [
        {"day": "2026-01-01", "allow": 3, "review": 4, "deny": 2, "frauds": 5},
        {"day": "2026-01-02", "allow": 2, "review": 1, "deny": 0, "frauds": 1},
    ]
    assert s["ruleset"]["version"] == "bt-test-1"
    assert s["inputs"]["model"] is None
    assert "compare" not in s

    table = pq.read_table(out / "transactions.parquet")
    rows = {r["transaction_id"]: r for r in table.to_pylist()}
    assert table.column("transaction_id").to_pylist() == [r[0] for r in ROWS[:12]]  # event-time order
    assert rows["t09"]["decision"] == "deny"
    assert rows["t09"]["label"] is None
    assert rows["t09"]["reason_codes"] == ["CARD_BURST", "BIG_AMOUNT"]
    assert sorted(rows["t09"]["rule_ids"]) == ["big_amount", "card_burst"]
    assert rows["t06"]["amount"] == 100.0
    assert rows["t05"]["f_card_count_1h"] == 3.0
    assert math.isnan(rows["t01"]["score"])
    assert rows["t01"]["reason_codes"] == [] and rows["t01"]["decision"] == "allow"


def test_compare_lists_exactly_the_changed_transactions(case: dict[str, Path]) -> None:
    out = case["tmp"] / "out"
    argv = ["--data", str(case["data"]), "--rules", str(case["a"]), "--compare", str(case["b"]), "--out", str(out)]
    assert run(*argv) == 0
    s = summary_of(out)
    # B reviews 50 EUR and more and has no web rule: t10 (70) and t11 (80) become review,
    # t07 (40, web) becomes allow; t08 (60, web) stays review through big_amount.
    changes = pq.read_table(out / "changes.parquet").to_pylist()
    assert [(c["transaction_id"], c["decision_a"], c["decision_b"]) for c in changes] == [
        ("t07", "review", "allow"),
        ("t10", "allow", "review"),
        ("t11", "allow", "review"),
    ]
    assert changes[0]["reasons_a"] == ["WEB_PAYMENT"] and changes[0]["reasons_b"] == []
    assert changes[2]["label"] == 1.0 and changes[2]["amount"] == 80.0
    cmp = s["compare"]
    assert cmp["changed"] == 3
    assert cmp["changed_frauds"] == 1
    assert cmp["transitions"] == {"allow -> review": 2, "review -> allow": 1}
    # B flagged: t02 t05 t08 t11 (fraud), t06 t10 t12 (genuine), t09.
    deltas = {row["metric"]: row for row in cmp["metrics"]}
    assert deltas["flagged precision"] == {
        "metric": "flagged precision",
        "a": 3 / 6,
        "b": 4 / 7,
        "delta": 4 / 7 - 3 / 6,
    }
    assert deltas["flagged recall"]["delta"] == 4 / 6 - 3 / 6
    assert deltas["flagged hits"]["delta"] == 1
    assert deltas["allow rate"]["b"] == 4 / 12
    assert cmp["summary_b"]["engine"]["flagged"] == metrics(8, 4, 3, 32_000)
    by_rule = {r["id"]: r for r in cmp["rules"]}
    assert by_rule["web_channel"]["in"] == "a"
    assert by_rule["big_amount"]["hits"] == {"a": 4, "b": 7, "delta": 3}  # B: t02 t06 t08 t09 t10 t11 t12

    md = (out / "summary.md").read_text()
    assert "## Compared with the second rule set" in md
    assert "| allow -> review | 2 |" in md
    assert "Compared with the second rule set" in (out / "report.html").read_text()


def test_csv_with_a_yaml_mapping_gives_the_same_numbers(case: dict[str, Path]) -> None:
    out_native = case["tmp"] / "native"
    assert run("--data", str(case["data"]), "--rules", str(case["a"]), "--out", str(out_native)) == 0

    csv = case["tmp"] / "history.csv"
    lines = ["id,ts,amt,cur,card,chan,is_fraud"]
    for tid, t, amount, cur, card, channel, label in ROWS:
        stamp = pa.scalar(t, pa.timestamp("ms")).as_py().strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{tid},{stamp},{amount / 100:.2f},{cur},{card},{channel},{'' if label is None else label}")
    csv.write_text("\n".join(lines) + "\n")
    mapping = case["tmp"] / "mapping.yaml"
    mapping.write_text(
        "transaction_id: id\nevent_time: ts\namount: amt\namount_in_minor_units: false\n"
        "currency: cur\ncard_id: card\nchannel: chan\nlabel: is_fraud\n"
    )
    out_csv = case["tmp"] / "csv"
    argv = ["--data", str(csv), "--mapping", str(mapping), "--rules", str(case["a"]), "--out", str(out_csv)]
    assert run(*argv) == 0
    a, b = summary_of(out_native), summary_of(out_csv)
    for key in ("population", "decisions", "engine", "fraud_amount_caught", "rules", "daily"):
        assert a[key] == b[key], key


def test_load_mapping() -> None:
    assert load_mapping("handbook") is PRESETS["handbook"]
    m = load_mapping("preset: native\nlabel: is_fraud\n")
    assert m.label == "is_fraud" and m.card_id == "card_id"
    with pytest.raises(DatasetError, match=r"unknown key.*'amount_col'"):
        load_mapping("transaction_id: id\nevent_time: ts\namount_col: amt\namount_in_minor_units: true\n")
    with pytest.raises(DatasetError, match=r"missing required key.*amount"):
        load_mapping("transaction_id: id\nevent_time: ts\namount_in_minor_units: true\n")
    with pytest.raises(DatasetError, match="must be true or false"):
        load_mapping("transaction_id: id\nevent_time: ts\namount: a\namount_in_minor_units: yes please\n")
    with pytest.raises(DatasetError, match="neither a preset"):
        load_mapping("nativ")


def test_reports_hold_the_rule_table_and_svg_charts(case: dict[str, Path]) -> None:
    out = case["tmp"] / "out"
    assert run("--data", str(case["data"]), "--rules", str(case["a"]), "--out", str(out)) == 0
    md = (out / "summary.md").read_text()
    assert "| rule | reason code | action | mode | rollout | hits |" in md
    assert "| big_amount | BIG_AMOUNT | review | active | 100 % | 4 | 33.333 % | 33.33 % | 16.67 % |" in md
    assert "| flagged (review or deny) | 7 |" in md
    assert "| 2026-01-01 | 9 | 3 | 4 | 2 |" in md
    assert "precision" in md and "## Definitions" in md
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 4  # decision mix, review/deny rates, active rules, what each rule adds
    assert "Decisions per day (UTC)" in page and "Active rules: precision and recall" in page
    assert "<td>big_amount</td>" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert "<script" not in page


def test_missing_column_is_a_clear_error(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = case["tmp"] / "nolabel.parquet"
    pq.write_table(native_table().drop_columns(["label", "card_id"]), data)
    code = run("--data", str(data), "--rules", str(case["a"]), "--out", str(case["tmp"] / "out"))
    assert code == 2
    err = capsys.readouterr().err
    assert "risk-engine backtest:" in err
    assert "'card_id' (for card_id)" in err and "'label' (for label)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mapping", "nope"], "neither a preset"),
        (["--data", "/nonexistent.parquet"], "no such file"),
        (["--rules", "/nonexistent-rules"], "rule set is invalid"),
        (["--model", "/nonexistent-model"], "model cannot be used"),
    ],
)
def test_bad_arguments_exit_2(
    case: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = {"--data": str(case["data"]), "--rules": str(case["a"]), "--out": str(case["tmp"] / "out")}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    assert run(*[x for kv in base.items() for x in kv]) == 2
    assert message in capsys.readouterr().err


def test_with_the_trained_model_and_the_shipped_rules(
    trained_registry: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from engine.offline.datasets import read_dataset

    root = ROOT
    out = tmp_path / "out"
    assert main(["backtest", "--data", str(synthetic_data), "--rules", str(root / "rules"), "--model",
                 str(trained_registry), "--out", str(out), "--limit", "3000"]) == 0  # fmt: skip
    s = summary_of(out)
    assert s["inputs"]["model_version"]
    table = pq.read_table(out / "transactions.parquet")
    assert table.num_rows == s["population"]["scored"] == 3000 - s["population"]["rejected"]
    scores = table.column("score").to_pylist()
    assert all(0.0 <= x <= 1.0 for x in scores)
    labels = read_dataset(synthetic_data, PRESETS["native"], limit=3000).labels
    assert labels is not None
    assert s["population"]["frauds"] == int(labels.sum())
    decisions = s["decisions"]
    assert sum(d["count"] for d in decisions.values()) == table.num_rows
    flagged = sum(1 for d in table.column("decision").to_pylist() if d != "allow")
    assert s["engine"]["flagged"]["hits"] == flagged


SHADOW_RULES = """\
rules:
  - id: big_amount
    condition: "amount >= 100"
    action: review
    reason_code: BIG_AMOUNT
    message: 100 EUR or more.
  - id: candidate_60
    condition: "amount >= 60"
    action: deny
    reason_code: CANDIDATE_60
    message: 60 EUR or more.
    mode: shadow
  - id: {web_rule}
    condition: "channel == 'web'"
    action: deny
    reason_code: HALF_WEB
    message: A web payment.
    rollout: 50
"""


def test_shadow_and_rollout_hits_are_measured_apart(case: dict[str, Path]) -> None:
    from engine.rollout import rollout_bucket

    web = {"t07": (0, 4_000), "t08": (1, 6_000), "t12": (0, 20_000)}  # label, amount of the web payments
    # A rule id whose 50 % rollout splits the web payments (whatever the hash), so both parts are exercised.
    half_web = next(
        rid for rid in (f"web_{k}" for k in range(100)) if 0 < sum(rollout_bucket(rid, t) < 5_000 for t in web) < 3
    )
    rules = case["tmp"] / "rules_shadow"
    rules.mkdir()
    (rules / "engine.yaml").write_text(ENGINE_YAML)
    (rules / "rules.yaml").write_text(SHADOW_RULES.replace("{web_rule}", half_web))
    out = case["tmp"] / "out"
    assert run("--data", str(case["data"]), "--rules", str(rules), "--out", str(out)) == 0
    s = summary_of(out)
    by_id = {r["id"]: r for r in s["rules"]}

    # The shadow rule fires on t02 t08 t11 (fraud, 15000 + 6000 + 8000), t06 t10 t12 (genuine), t09,
    # and never acts: no decision of its own.
    candidate = by_id["candidate_60"]
    assert (candidate["mode"], candidate["rollout"]) == ("shadow", 100.0)
    assert candidate["shadow"] == metrics(7, 3, 3, 29_000)
    assert candidate["active"] == metrics(0, 0, 0, 0)
    # Decisions are those of big_amount and the acting half of half_web alone.
    acting = {t for t in web if rollout_bucket(half_web, t) < 5_000}
    shadow = set(web) - acting

    def expected(ids: set[str]) -> dict[str, Any]:
        fraud = sum(web[t][0] for t in ids)
        return metrics(len(ids), fraud, len(ids) - fraud, sum(web[t][1] for t in ids if web[t][0]))

    assert by_id[half_web]["rollout"] == 50.0
    assert by_id[half_web]["active"] == expected(acting)
    assert by_id[half_web]["shadow"] == expected(shadow)
    assert s["decisions"]["deny"]["count"] == len(acting)

    table = {r["transaction_id"]: r for r in pq.read_table(out / "transactions.parquet").to_pylist()}
    assert {t for t, r in table.items() if half_web in r["shadow_rule_ids"]} == shadow
    assert {t for t, r in table.items() if half_web in r["rule_ids"]} == acting
    assert table["t10"]["shadow_rule_ids"] == ["candidate_60"] and table["t10"]["decision"] == "allow"

    md = (out / "summary.md").read_text()
    assert "| candidate_60 | CANDIDATE_60 | deny | shadow | 100 % | 7 |" in md
    page = (out / "report.html").read_text()
    assert "Shadow rules: precision and recall" in page
    assert page.count("<svg") == 5  # and the frauds each rule flags, and those only it flags


def test_progress_lines_off_a_terminal() -> None:
    import io

    from engine.offline.backtest import Progress

    stream = io.StringIO()
    progress = Progress("replay", stream)
    progress(0, 10)
    progress(5, 10)  # within 10 s of the last line: not written
    progress(10, 10)
    progress(10, 10)  # finished: nothing more
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  replay [") and "0/10" in lines[0]
    assert "10/10" in lines[1] and "done in" in lines[1] and "#" * 30 in lines[1]


def test_the_default_model_is_the_promoted_one(synthetic_data: Path, tmp_path: Path) -> None:
    """Like the server, a backtest scores with the promoted model of models/ unless told otherwise."""

    out = tmp_path / "out"
    assert main(["backtest", "--quiet", "--data", str(synthetic_data), "--limit", "300", "--out", str(out)]) == 0
    promoted = (ROOT / "models" / "PROMOTED").read_text().strip()
    assert summary_of(out)["inputs"]["model_version"] == promoted
    assert (
        main(["backtest", "--quiet", "--data", str(synthetic_data), "--limit", "300", "--out", str(out), "--no-model"])
        == 0
    )
    assert summary_of(out)["inputs"]["model_version"] in ("", None)
