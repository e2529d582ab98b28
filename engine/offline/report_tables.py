"""The backtest report's numbers as text: formats, and the rows of each table (markdown and HTML share them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLORS = {"allow": "#8fbf8f", "review": "#e6b450", "deny": "#d0574f", "precision": "#4a78b5", "recall": "#e08a3c"}


# --------------------------------------------------------------------------- formatting


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


def num(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}"


def money(value: float | None, currency: str) -> str:
    return "-" if value is None else f"{value:,.2f} {currency}"


def signed(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:+.2f} pp"
    if kind == "int":
        return f"{int(value):+,}"
    return f"{value:+,.2f}"


def metric_kind(metric: str) -> str:
    if metric.endswith("hits"):
        return "int"
    if metric.endswith("amount caught"):
        return "amount"
    return "pct"


def format_value(value: float | None, kind: str, currency: str) -> str:
    if kind == "pct":
        return pct(value)
    if kind == "int":
        return num(None if value is None else int(value))
    return money(value, currency)


METRIC_COLUMNS = ("hits", "hit rate", "precision", "recall", "amount recall", "FPR", "fraud amount")


def metric_cells(m: Mapping[str, Any], currency: str) -> list[str]:
    return [
        num(m["hits"]),
        pct(m["hit_rate"], 3),
        pct(m["precision"]),
        pct(m["recall"]),
        pct(m["amount_recall"]),
        pct(m["fpr"], 3),
        money(m["fraud_amount"], currency),
    ]


def shadow_rules(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Rules in shadow mode, partly rolled out, or with any shadow hit."""
    return [r for r in summary["rules"] if r["mode"] == "shadow" or r["rollout"] < 100 or r["shadow"]["hits"] > 0]


def active_rules(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in summary["rules"] if r["mode"] not in ("shadow", "disabled") or r["active"]["hits"] > 0]


# --------------------------------------------------------------------------- tables as rows


def header(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    pop = summary["population"]
    inputs = summary["inputs"]
    model = inputs.get("model")
    rows = [
        ("data", f"{inputs['data']} (mapping {inputs['mapping']})"),
        ("period (UTC)", f"{pop['from']} to {pop['to']}"),
        ("rules", f"{inputs['rules']} (version {summary['ruleset']['version']})"),
        (
            "model",
            f"{inputs['model_version']} ({model})" if model else "none (score NaN, rules on the score skipped)",
        ),
    ]
    if inputs.get("compare_rules"):
        version = summary["compare"]["ruleset_b"]["version"]
        rows.append(("compared with (B)", f"{inputs['compare_rules']} (version {version})"))
    return rows


def population_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    pop = summary["population"]
    cur = pop["base_currency"]
    rows = [
        ["rows", num(pop["rows"])],
        ["scored", num(pop["scored"])],
        ["rejected by validation", num(pop["rejected"])],
        ["labeled", num(pop["labeled"])],
        ["unlabeled (excluded from precision, recall, FPR)", num(pop["unlabeled"])],
        ["frauds", num(pop["frauds"])],
        ["genuine", num(pop["genuine"])],
        ["fraud rate (of labeled)", pct(pop["fraud_rate"], 3)],
        ["amount (all scored)", money(pop["amount"], cur)],
        ["fraud amount", money(pop["fraud_amount"], cur)],
        ["degraded answers", num(pop["degraded"])],
    ]
    if pop.get("duplicate_ids"):
        rows.append(["repeated transaction ids (windows count each id once)", num(pop["duplicate_ids"])])
    return rows


def decision_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    return [[name, num(d["count"]), pct(d["rate"], 3)] for name, d in summary["decisions"].items()]


def engine_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    cur = summary["population"]["base_currency"]
    return [
        ["flagged (review or deny)", *metric_cells(summary["engine"]["flagged"], cur)],
        ["deny", *metric_cells(summary["engine"]["deny"], cur)],
    ]


def rule_rows(rules: Sequence[Mapping[str, Any]], which: str, currency: str) -> list[list[str]]:
    return [
        [r["id"], r["reason_code"], r["action"], r["mode"], f"{r['rollout']:g} %", *metric_cells(r[which], currency)]
        for r in rules
    ]


RULE_COLUMNS = ("rule", "reason code", "action", "mode", "rollout", *METRIC_COLUMNS)


def daily_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for d in summary["daily"]:
        total = d["allow"] + d["review"] + d["deny"]
        rows.append(
            [
                d["day"],
                num(total),
                num(d["allow"]),
                num(d["review"]),
                num(d["deny"]),
                pct(d["review"] / total if total else None),
                pct(d["deny"] / total if total else None),
                num(d["frauds"]),
            ]
        )
    return rows


DAILY_COLUMNS = ("day (UTC)", "scored", "allow", "review", "deny", "review rate", "deny rate", "frauds")


def compare_rows(summary: Mapping[str, Any]) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    cmp = summary["compare"]
    cur = summary["population"]["base_currency"]
    metrics = []
    for row in cmp["metrics"]:
        kind = metric_kind(row["metric"])
        metrics.append(
            [
                row["metric"],
                format_value(row["a"], kind, cur),
                format_value(row["b"], kind, cur),
                signed(row["delta"], kind),
            ]
        )
    transitions = [[k, num(v)] for k, v in cmp["transitions"].items()]
    rules = []
    for r in cmp["rules"]:
        rules.append(
            [
                r["id"],
                r["in"],
                num(r["hits"]["a"]),
                num(r["hits"]["b"]),
                signed(r["hits"]["delta"], "int"),
                pct(r["precision"]["a"]),
                pct(r["precision"]["b"]),
                pct(r["recall"]["a"]),
                pct(r["recall"]["b"]),
                num(r["shadow_hits"]["a"]),
                num(r["shadow_hits"]["b"]),
                pct(r.get("shadow_precision", {}).get("a")),
                pct(r.get("shadow_precision", {}).get("b")),
            ]
        )
    return metrics, transitions, rules


COMPARE_RULE_COLUMNS = (
    "rule",
    "in",
    "hits A",
    "hits B",
    "Δ hits",
    "precision A",
    "precision B",
    "recall A",
    "recall B",
    "shadow hits A",
    "shadow hits B",
    "shadow precision A",
    "shadow precision B",
)


# --------------------------------------------------------------------------- warnings, rule value, money


def not_exercised(items: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(
        f"{i['rule_id']} ({', '.join(i['missing'])}"
        + ("" if i["mode"] == "active" else f"; {i['mode']}")
        + (f"; partly: {i['hits']:,} hits through its other inputs" if i["hits"] else "")
        + ")"
        for i in items
    )


def warning_lines(summary: Mapping[str, Any], other: Mapping[str, Any] | None = None) -> list[str]:
    """The report's warnings, one sentence each (the data's gaps, the model's in-sample rows, the warm-up).

    `other`: rule set A's summary when these are B's; B then lists only what differs from A.
    """
    w = summary.get("warnings")
    if not w:
        return []
    out = []
    lacking = [name for name, count in w["inputs"].items() if count == 0]
    items = w["not_exercised"]
    if other is not None:
        mine = {(i["rule_id"], i["hits"] > 0) for i in other["warnings"]["not_exercised"]}
        items = [i for i in items if (i["rule_id"], i["hits"] > 0) not in mine]
        if items:
            out.append(f"B also: {not_exercised(items)}.")
        return out
    if items:
        out.append(
            f"{len(items)} rule(s) read fields no row of the data has ({', '.join(lacking)}), so this data does"
            f" not exercise them: {not_exercised(items)}."
        )
    elif lacking:
        out.append(f"The data has no {', '.join(lacking)} (no rule reads them).")
    ins = w.get("in_sample")
    if ins and ins["rows"]:
        out.append(
            f"{num(ins['rows'])} rows ({pct(ins['share'], 1)}) lie inside the model's training and"
            f" early-stopping days ({ins['from']} to {ins['until']}, model {ins['model_version']}): its metrics"
            " there are in-sample and optimistic; see the metrics before, inside and after that period."
        )
    warm = w.get("warm_up")
    if warm and warm["rows"]:
        out.append(
            f"Windows warm up for {warm['days']:g} days from the first row ({warm['from']} to"
            f" {warm['until']}, longest window {warm['longest_window']}): {num(warm['rows'])} rows"
            f" ({pct(warm['share'], 1)}) were scored with windows still filling."
        )
    return out


IN_SAMPLE_COLUMNS = (
    "",
    "period",
    "rows",
    "labeled",
    "frauds",
    "flagged precision",
    "flagged recall",
    "deny precision",
    "deny recall",
    "model AUC",
    "model AP",
)


def in_sample_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    ins = (summary.get("warnings") or {}).get("in_sample")
    if not ins:
        return []
    names = {
        "before": f"before {ins['from']}",
        "in_sample": f"{ins['from']} to {ins['until']} (in-sample)",
        "after": f"after {ins['until']} (out-of-sample)",
    }
    rows = []
    for key, m in ins["metrics"].items():
        rows.append(
            [
                key.replace("_", "-"),
                names[key],
                num(m["rows"]),
                num(m["labeled"]),
                num(m["frauds"]),
                pct(m["flagged_precision"]),
                pct(m["flagged_recall"]),
                pct(m["deny_precision"]),
                pct(m["deny_recall"]),
                "-" if m["auc_roc"] is None else f"{m['auc_roc']:.4f}",
                "-" if m["average_precision"] is None else f"{m['average_precision']:.4f}",
            ]
        )
    return rows


RULE_VALUE_COLUMNS = (
    "rule",
    "action",
    "mode",
    "hits",
    "precision",
    "recall",
    "amount recall",
    "unique frauds",
    "unique fraud amount",
    "shadow hits",
    "shadow precision",
    "shadow unique frauds",
)


def silent_rules(value: Mapping[str, Any]) -> list[str]:
    """Rules that neither acted nor fired in shadow."""
    return [r["rule_id"] for r in value["rules"] if not r["hits"] and not r["shadow_hits"]]


def rule_value_rows(summary: Mapping[str, Any], all_rules: bool = True) -> list[list[str]]:
    """Per rule (and the model); without `all_rules`, only those that fired."""
    value = summary.get("rule_value")
    if not value:
        return []
    cur = summary["population"]["base_currency"]
    rows = []
    silent = set() if all_rules else set(silent_rules(value))
    entries = [r for r in value["rules"] if r["rule_id"] not in silent]
    entries += [value["model"]] if value.get("model") else []
    for r in entries:
        if r["mode"] == "model":
            shadow = ["", "", ""]
        else:
            shadow = [num(r["shadow_hits"]), pct(r["shadow_precision"]), num(r["shadow_unique_frauds"])]
        rows.append(
            [
                r["rule_id"],
                r["action"],
                r["mode"],
                num(r["hits"]),
                pct(r["precision"]),
                pct(r["recall"]),
                pct(r["amount_recall"]),
                num(r["unique_frauds"]),
                money(r["unique_fraud_amount"], cur),
                *shadow,
            ]
        )
    return rows


def overlap_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    overlap = (summary.get("rule_value") or {}).get("overlap")
    if not overlap or not overlap["sources"]:
        return [], []
    names = overlap["sources"]
    rows = []
    for i, name in enumerate(names):
        rows.append([name, *(f"{overlap['rows'][i][j]:,} ({overlap['frauds'][i][j]:,})" for j in range(len(names)))])
    return ["rows flagged by both (frauds)", *names], rows


MONEY_ROWS = (
    ("fraud loss avoided", "fraud_loss_avoided", "amount"),
    ("missed fraud loss", "missed_fraud_loss", "amount"),
    ("false-decline cost", "false_decline_cost", "amount"),
    ("review cost", "review_cost", "amount"),
    ("reviews", "reviews", "int"),
    ("reviews per day", "reviews_per_day", "float"),
    ("declines", "declines", "int"),
    ("decline rate", "decline_rate", "pct"),
    ("net value", "net_value", "amount"),
)


def money_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    m = summary.get("money")
    if not m:
        return [], []
    cur = summary["population"]["base_currency"]
    sides = [k for k in ("a", "b", "delta") if k in m]
    columns = ["", *({"a": "A", "b": "B", "delta": "Δ (B - A)"}[k] for k in sides)]
    rows = []
    for label, key, kind in MONEY_ROWS:
        cells = []
        for side in sides:
            v = m[side][key]
            if side == "delta":
                cells.append(signed(v, "pct" if kind == "pct" else ("int" if kind == "int" else "amount")))
            elif kind == "amount":
                cells.append(money(v, cur))
            elif kind == "pct":
                cells.append(pct(v, 3))
            else:
                cells.append(num(v))
        rows.append([label, *cells])
    return columns, rows


def costs_line(summary: Mapping[str, Any]) -> str:
    c = summary["money"]["costs"]
    cur = summary["population"]["base_currency"]
    parts = [
        f"review {c['review']:g} {cur}",
        f"missed fraud: amount x {c['chargeback_factor']:g}",
        f"false decline: {c['false_decline_margin'] * 100:g} % of the amount",
    ]
    if c["review_capacity"] is not None:
        parts.append(f"review capacity {c['review_capacity']:g} a day")
    if c["max_decline_rate"] is not None:
        parts.append(f"decline rate at most {c['max_decline_rate'] * 100:g} %")
    return f"Costs ({c['source']}): " + "; ".join(parts) + "."


THRESHOLD_COLUMNS = ("", "review at", "deny at", "reviews/day", "decline rate", "recall", "net value", "fits")


def threshold_rows(t: Mapping[str, Any], currency: str) -> list[list[str]]:
    def thr(v: float | None) -> str:
        return "off" if v is None else f"{v:.4f}"

    rows = []
    for label, row in (("now", t["current"]), ("recommended", t["recommended"])):
        if row is None:
            rows.append([label, "-", "-", "-", "-", "-", "-", "no pair fits"])
            continue
        rows.append(
            [
                label,
                thr(row["review_at"]),
                thr(row["deny_at"]),
                f"{row['reviews_per_day']:,.1f}",
                pct(row["decline_rate"], 3),
                pct(row["recall"]),
                money(row["net_value"], currency),
                "yes" if row["fits"] else "no",
            ]
        )
    return rows


def threshold_note(t: Mapping[str, Any]) -> str:
    budget = []
    if t["review_capacity"] is not None:
        budget.append(f"at most {t['review_capacity']:g} reviews a day")
    if t["max_decline_rate"] is not None:
        budget.append(f"a decline rate of at most {t['max_decline_rate'] * 100:g} %")
    rep = t.get("reproduces")
    text = (
        f"{t['pairs_tried']:,} pairs of the model's review and deny thresholds tried on these rows"
        + (f", under {' and '.join(budget)}" if budget else " (no review capacity or decline cap given)")
        + "."
    )
    if t.get("queue"):
        q = t["queue"]
        text += (
            f" Expected review queue at the recommended pair: {q['mean_per_day']:,.1f} cases a day on average,"
            f" {q['p95_per_day']:,.1f} on the 95th-percentile day, {q['max_per_day']:,} at most."
        )
    if rep:
        text += (
            f" At the current thresholds the sweep decides {rep['same']:,} of {rep['rows']:,} rows as the replay did."
        )
    return text


CAUSE_COLUMNS = ("cause (+ fires only in B, - only in A)", "changed decisions", "of them frauds")


def cause_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    cmp = summary.get("compare") or {}
    return [[c["cause"], num(c["changed"]), num(c["changed_frauds"])] for c in cmp.get("causes", [])]


def model_compare_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    cm = summary["compare_model"]
    rows = []
    for key, label in (("auc_roc", "AUC ROC"), ("average_precision", "AP"), ("card_precision_top_100", "CP@100")):
        a, b = cm["a"].get(key), cm["b"].get(key)
        rows.append(
            [
                label,
                "-" if a is None else f"{a:.4f}",
                "-" if b is None else f"{b:.4f}",
                "-" if a is None or b is None else f"{b - a:+.4f}",
            ]
        )
    money_b = cm.get("money")
    money_a = (summary.get("money") or {}).get("a")
    if money_a and money_b:
        cur = summary["population"]["base_currency"]
        a, b = money_a["net_value"], money_b["net_value"]
        rows.append(["net value", money(a, cur), money(b, cur), signed(b - a, "amount")])
        a, b = money_a["reviews_per_day"], money_b["reviews_per_day"]
        rows.append(["reviews per day", f"{a:,.1f}", f"{b:,.1f}", f"{b - a:+,.1f}"])
    return rows


def b_view(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """Rule set B's summary (compare mode), shaped like A's for the same tables and charts."""
    b: Mapping[str, Any] = summary["compare"]["summary_b"]
    return b


# --------------------------------------------------------------------------- Markdown


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def rejection_lines(summary: Mapping[str, Any]) -> list[str]:
    """The rejected rows by field and reason (`engine.offline.rejections`); none when nothing was rejected."""
    from engine.offline.rejections import Rejections

    raw = summary.get("rejections")
    return Rejections.from_json(raw).lines() if raw and raw["rejected"] else []
