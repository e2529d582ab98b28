"""Analyst reports of a backtest summary: Markdown, a self-contained HTML page, JSON.

The HTML page has no external resources: the charts are inline SVG drawn
here (decision mix per day, review and deny rates per day, per-rule
precision and recall), so it can be mailed or archived as one file. The
JSON is the summary itself (`engine.offline.metrics.summarize`), for tools.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
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


def _kind(metric: str) -> str:
    if metric.endswith("hits"):
        return "int"
    if metric.endswith("amount caught"):
        return "amount"
    return "pct"


def _fmt(value: float | None, kind: str, currency: str) -> str:
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


def _header(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
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


def _population_rows(summary: Mapping[str, Any]) -> list[list[str]]:
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


def _decision_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    return [[name, num(d["count"]), pct(d["rate"], 3)] for name, d in summary["decisions"].items()]


def _engine_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    cur = summary["population"]["base_currency"]
    return [
        ["flagged (review or deny)", *metric_cells(summary["engine"]["flagged"], cur)],
        ["deny", *metric_cells(summary["engine"]["deny"], cur)],
    ]


def _rule_rows(rules: Sequence[Mapping[str, Any]], which: str, currency: str) -> list[list[str]]:
    return [
        [r["id"], r["reason_code"], r["action"], r["mode"], f"{r['rollout']:g} %", *metric_cells(r[which], currency)]
        for r in rules
    ]


RULE_COLUMNS = ("rule", "reason code", "action", "mode", "rollout", *METRIC_COLUMNS)


def _daily_rows(summary: Mapping[str, Any]) -> list[list[str]]:
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


def _compare_rows(summary: Mapping[str, Any]) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    cmp = summary["compare"]
    cur = summary["population"]["base_currency"]
    metrics = []
    for row in cmp["metrics"]:
        kind = _kind(row["metric"])
        metrics.append(
            [row["metric"], _fmt(row["a"], kind, cur), _fmt(row["b"], kind, cur), signed(row["delta"], kind)]
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


def _not_exercised(items: Sequence[Mapping[str, Any]]) -> str:
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
            out.append(f"B also: {_not_exercised(items)}.")
        return out
    if items:
        out.append(
            f"{len(items)} rule(s) read fields no row of the data has ({', '.join(lacking)}), so this data does"
            f" not exercise them: {_not_exercised(items)}."
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


def _in_sample_rows(summary: Mapping[str, Any]) -> list[list[str]]:
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


def _silent(value: Mapping[str, Any]) -> list[str]:
    """Rules that neither acted nor fired in shadow."""
    return [r["rule_id"] for r in value["rules"] if not r["hits"] and not r["shadow_hits"]]


def _rule_value_rows(summary: Mapping[str, Any], all_rules: bool = True) -> list[list[str]]:
    """Per rule (and the model); without `all_rules`, only those that fired."""
    value = summary.get("rule_value")
    if not value:
        return []
    cur = summary["population"]["base_currency"]
    rows = []
    silent = set() if all_rules else set(_silent(value))
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


def _overlap_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
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


def _money_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
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


def _threshold_rows(t: Mapping[str, Any], currency: str) -> list[list[str]]:
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


def _cause_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    cmp = summary.get("compare") or {}
    return [[c["cause"], num(c["changed"]), num(c["changed_frauds"])] for c in cmp.get("causes", [])]


def _model_compare_rows(summary: Mapping[str, Any]) -> list[list[str]]:
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


def _b_view(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """Rule set B's summary (compare mode), shaped like A's for the same tables and charts."""
    b: Mapping[str, Any] = summary["compare"]["summary_b"]
    return b


# --------------------------------------------------------------------------- Markdown


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(summary: Mapping[str, Any]) -> str:
    cur = summary["population"]["base_currency"]
    parts = ["# Backtest report", ""]
    parts += [f"- **{k}**: {v}" for k, v in _header(summary)]
    parts += ["", "Charts: `report.html`. Per-transaction results: `transactions.parquet`.", ""]
    warnings = warning_lines(summary) + (warning_lines(_b_view(summary), summary) if summary.get("compare") else [])
    if warnings:
        parts += ["## Warnings", ""] + [f"- {line}" for line in warnings] + [""]
        if _in_sample_rows(summary):
            parts += [_md_table(IN_SAMPLE_COLUMNS, _in_sample_rows(summary)), ""]
    if summary.get("money"):
        columns, rows = _money_rows(summary)
        parts += ["## Money", "", costs_line(summary), "", _md_table(columns, rows), ""]
    if summary.get("thresholds"):
        t = summary["thresholds"]
        parts += ["## Model thresholds under the review budget", "", threshold_note(t), ""]
        parts += [_md_table(THRESHOLD_COLUMNS, _threshold_rows(t, cur)), ""]
    if summary.get("rule_value"):
        parts += ["## What each rule adds", "", _md_table(RULE_VALUE_COLUMNS, _rule_value_rows(summary)), ""]
        if summary.get("compare"):
            parts += ["B:", "", _md_table(RULE_VALUE_COLUMNS, _rule_value_rows(_b_view(summary))), ""]
        columns, rows = _overlap_rows(summary)
        if rows:
            parts += ["Overlap of the rules and the model:", "", _md_table(columns, rows), ""]
    parts += ["## Population", "", _md_table(("", "value"), _population_rows(summary)), ""]
    if summary["population"]["first_errors"]:
        parts += ["First rejected rows:", ""] + [f"- `{e}`" for e in summary["population"]["first_errors"]] + [""]
    parts += ["## Decisions", "", _md_table(("decision", "count", "rate"), _decision_rows(summary)), ""]
    parts += ["## The engine's decisions against the labels", ""]
    parts += [_md_table(("", *METRIC_COLUMNS), _engine_rows(summary)), ""]
    parts += ["## Active rules", "", _md_table(RULE_COLUMNS, _rule_rows(active_rules(summary), "active", cur)), ""]
    shadow = shadow_rules(summary)
    parts += ["## Shadow rules", ""]
    if shadow:
        parts += [
            "Hits while in shadow (not acted on).",
            "",
            _md_table(RULE_COLUMNS, _rule_rows(shadow, "shadow", cur)),
        ]
    else:
        parts += ["No rule in shadow mode or partial rollout, and no shadow hits."]
    parts += [""]
    if summary.get("compare"):
        cmp = summary["compare"]
        metrics, transitions, rules = _compare_rows(summary)
        parts += ["## Compared with the second rule set (B - A)", ""]
        changed_frauds = cmp["changed_frauds"]
        parts += [
            f"{num(cmp['changed'])} transactions change decision"
            + (f" ({num(changed_frauds)} of them labeled fraud)" if changed_frauds is not None else "")
            + ": `changes.parquet`.",
            "",
        ]
        if transitions:
            parts += [_md_table(("A -> B", "transactions"), transitions), ""]
        parts += [_md_table(("metric", "A", "B", "Δ"), metrics), ""]
        parts += ["Per rule (active hits, then shadow hits):", "", _md_table(COMPARE_RULE_COLUMNS, rules), ""]
        if _cause_rows(summary):
            parts += ["What caused the changed decisions:", "", _md_table(CAUSE_COLUMNS, _cause_rows(summary)), ""]
    if summary.get("compare_model"):
        cm = summary["compare_model"]
        parts += [f"## Models side by side: {cm['a']['version']} (A) and {cm['b']['version']} (B)", ""]
        parts += [f"{num(cm['changed'])} decisions change: {cm['transitions']}.", ""]
        parts += [_md_table(("metric", "A", "B", "Δ"), _model_compare_rows(summary)), ""]
    parts += ["## Decision mix per day", "", _md_table(DAILY_COLUMNS, _daily_rows(summary)), ""]
    parts += ["## Definitions", ""]
    parts += [f"- **{k}**: {v}" for k, v in summary["definitions"].items()]
    timing = summary.get("timing") or {}
    if timing:
        parts += ["", "Timing: " + ", ".join(f"{k.removesuffix('_s')} {v:g} s" for k, v in timing.items()) + "."]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- SVG charts


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{width - 4}" y="14" font-size="12" font-weight="600" text-anchor="end">{html.escape(title)}</text>',
    ]


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for label, color in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14:.1f}" y="{y:.1f}" font-size="11">{html.escape(label)}</text>')
        x += 20 + 7 * len(label)
    return out


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def _y_axis(top: float, left: float, plot_w: float, plot_h: float, vmax: float, fmt: str) -> list[str]:
    out = []
    for k in range(5):
        v = vmax * k / 4
        y = top + plot_h - plot_h * k / 4
        label = f"{v * 100:.2g} %" if fmt == "pct" else f"{v:,.0f}"
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    return out


def _x_labels(days: Sequence[str], left: float, step: float, y: float) -> list[str]:
    out = []
    every = max(1, len(days) // 8)
    for k, day in enumerate(days):
        if k % every == 0:
            x = left + step * (k + 0.5)
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" text-anchor="middle">{day}</text>')
    return out


def daily_mix_svg(daily: Sequence[Mapping[str, Any]], width: int = 860, height: int = 260) -> str:
    """Stacked bars: allow, review and deny decisions per UTC day."""
    left, top, right, bottom = 60, 24, 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    out = _svg_open(width, height, "Decisions per day (UTC)")
    vmax = _nice_max(max((d["allow"] + d["review"] + d["deny"] for d in daily), default=0))
    out += _y_axis(top, left, plot_w, plot_h, vmax, "count")
    step = plot_w / max(len(daily), 1)
    bar = max(step * 0.85, 0.5)
    for k, d in enumerate(daily):
        y = top + plot_h
        for name in ("allow", "review", "deny"):
            h = plot_h * d[name] / vmax
            if h <= 0:
                continue
            y -= h
            out.append(
                f'<rect x="{left + step * k + (step - bar) / 2:.2f}" y="{y:.2f}" width="{bar:.2f}" '
                f'height="{h:.2f}" fill="{COLORS[name]}"><title>{d["day"]} {name}: {d[name]:,}</title></rect>'
            )
    out += _x_labels([d["day"] for d in daily], left, step, height - bottom + 14)
    out += _legend([(n, COLORS[n]) for n in ("allow", "review", "deny")], left, 14)
    out.append("</svg>")
    return "\n".join(out)


def daily_rates_svg(daily: Sequence[Mapping[str, Any]], width: int = 860, height: int = 220) -> str:
    """Lines: the review and deny rates per UTC day (the allow share dwarfs them in the mix)."""
    left, top, right, bottom = 60, 24, 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    out = _svg_open(width, height, "Review and deny rate per day (UTC)")
    rates: dict[str, list[float]] = {"review": [], "deny": []}
    for d in daily:
        total = d["allow"] + d["review"] + d["deny"]
        for name in rates:
            rates[name].append(d[name] / total if total else 0.0)
    vmax = max([*rates["review"], *rates["deny"], 0.0])
    vmax = _nice_max(vmax * 1000) / 1000 if vmax > 0 else 0.01
    out += _y_axis(top, left, plot_w, plot_h, vmax, "pct")
    step = plot_w / max(len(daily), 1)
    for name, values in rates.items():
        points = " ".join(
            f"{left + step * (k + 0.5):.2f},{top + plot_h - plot_h * v / vmax:.2f}" for k, v in enumerate(values)
        )
        if len(values) == 1:
            x, y = points.split(",")
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{COLORS[name]}"/>')
        elif values:
            out.append(f'<polyline points="{points}" fill="none" stroke="{COLORS[name]}" stroke-width="1.8"/>')
    out += _x_labels([d["day"] for d in daily], left, step, height - bottom + 14)
    out += _legend([(f"{n} rate", COLORS[n]) for n in ("review", "deny")], left, 14)
    out.append("</svg>")
    return "\n".join(out)


def rules_svg(rules: Sequence[Mapping[str, Any]], which: str, title: str, width: int = 860) -> str:
    """Horizontal bars: precision and recall of each rule (0-100 %); '-' when undefined."""
    label_w, right, top, row_h = 230, 60, 30, 34
    plot_w = width - label_w - right
    height = top + row_h * max(len(rules), 1) + 20
    out = _svg_open(width, height, title)
    for k in range(5):
        x = label_w + plot_w * k / 4
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 16}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 4}" font-size="10" text-anchor="middle">{k * 25} %</text>')
    for i, r in enumerate(rules):
        y = top + row_h * i
        m = r[which]
        out.append(
            f'<text x="{label_w - 6}" y="{y + 17}" font-size="11" text-anchor="end">{html.escape(r["id"])}</text>'
        )
        for j, key in enumerate(("precision", "recall")):
            value = m[key]
            by = y + 2 + j * 14
            w = plot_w * (value or 0.0)
            out.append(
                f'<rect x="{label_w}" y="{by}" width="{w:.2f}" height="12" fill="{COLORS[key]}">'
                f"<title>{html.escape(r['id'])} {key}: {pct(value)}</title></rect>"
            )
            out.append(f'<text x="{label_w + w + 4:.2f}" y="{by + 10}" font-size="10">{pct(value, 1)}</text>')
    out += _legend([("precision", COLORS["precision"]), ("recall", COLORS["recall"])], label_w, 16)
    out.append("</svg>")
    return "\n".join(out)


def curve_svg(t: Mapping[str, Any], currency: str, width: int = 860, height: int = 260) -> str:
    """Net value against reviews a day, for each review threshold at the recommended deny threshold."""
    curve = sorted(t["curve"], key=lambda row: row["reviews_per_day"])
    left, top, right, bottom = 90, 24, 20, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    deny = t["recommended"]["deny_at"]
    title = f"Net value by review threshold (deny at {'off' if deny is None else f'{deny:.4f}'})"
    out = _svg_open(width, height, title)
    if not curve:
        out.append("</svg>")
        return "\n".join(out)
    xs = [row["reviews_per_day"] for row in curve]
    ys = [row["net_value"] for row in curve]
    capacity = t["review_capacity"]
    xmax = _nice_max(max([*xs, capacity or 0.0, 1.0]))
    ymin, ymax = min([*ys, 0.0]), max([*ys, 0.0])
    span = (ymax - ymin) or 1.0

    def px(x: float) -> float:
        return left + plot_w * x / xmax

    def py(y: float) -> float:
        return top + plot_h - plot_h * (y - ymin) / span

    for k in range(5):
        v = ymin + span * k / 4
        out.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + plot_w}" y2="{py(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{py(v) + 4:.1f}" font-size="10" text-anchor="end">{v:,.0f}</text>')
    for k in range(5):
        v = xmax * k / 4
        out.append(
            f'<text x="{px(v):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{v:,.0f}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">'
        f"reviews a day ({html.escape(currency)} net value on the left)</text>"
    )
    if capacity is not None:
        out.append(
            f'<line x1="{px(capacity):.1f}" y1="{top}" x2="{px(capacity):.1f}" y2="{top + plot_h}" '
            'stroke="#d0574f" stroke-dasharray="4 3"/>'
            f'<text x="{px(capacity) + 4:.1f}" y="{top + 12}" font-size="10" fill="#d0574f">review capacity</text>'
        )
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
    out.append(f'<polyline points="{points}" fill="none" stroke="{COLORS["precision"]}" stroke-width="1.8"/>')
    best = t["recommended"]
    for row in curve:
        mine = row["review_at"] == best["review_at"]
        out.append(
            f'<circle cx="{px(row["reviews_per_day"]):.1f}" cy="{py(row["net_value"]):.1f}" r="{5 if mine else 2.5}" '
            f'fill="{COLORS["deny"] if mine else COLORS["precision"]}"><title>review at {row["review_at"]:.4f}: '
            f"{row['reviews_per_day']:,.1f} a day, net {row['net_value']:,.2f}</title></circle>"
        )
    out.append("</svg>")
    return "\n".join(out)


def unique_svg(summary: Mapping[str, Any], title: str, width: int = 860) -> str:
    """Bars: each flagging source's frauds caught, and the part no other source catches."""
    value = summary["rule_value"]
    entries = [r for r in value["rules"] if r["unique_frauds"] is not None and r["hits"]]
    if value.get("model"):
        entries.append(value["model"])
    label_w, right, top, row_h = 230, 80, 40, 24
    plot_w = width - label_w - right
    height = top + row_h * max(len(entries), 1) + 10
    out = _svg_open(width, height, title)
    vmax = max([r["fraud_hits"] for r in entries] + [1])
    for i, r in enumerate(entries):
        y = top + row_h * i
        w_all = plot_w * r["fraud_hits"] / vmax
        w_unique = plot_w * r["unique_frauds"] / vmax
        out.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="11" text-anchor="end">{html.escape(r["rule_id"])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w_all:.2f}" height="14" fill="#c9d6ea">'
            f"<title>{html.escape(r['rule_id'])}: {r['fraud_hits']:,} frauds flagged</title></rect>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w_unique:.2f}" height="14" fill="{COLORS["precision"]}">'
            f"<title>{html.escape(r['rule_id'])}: {r['unique_frauds']:,} frauds only it flags</title></rect>"
            f'<text x="{label_w + w_all + 4:.2f}" y="{y + 14}" font-size="10">'
            f"{r['unique_frauds']:,} of {r['fraud_hits']:,}</text>"
        )
    out += _legend([("frauds only this source flags", COLORS["precision"]), ("frauds flagged", "#c9d6ea")], label_w, 32)
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            ('<td class="num">' if k >= numeric_from else "<td>") + f"{html.escape(str(c))}</td>"
            for k, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; } dt { font-weight: 600; }
svg.chart { display: block; margin: 0.6em 0; font-family: inherit; }
details { margin: 0.6em 0; } .note { color: #666; font-size: 0.9em; }
.warnings { background: #fff6e0; border: 1px solid #e6b450; border-radius: 4px; padding: 0.4em 1em; }
.warnings h2 { border: none; margin-top: 0.4em; } .warnings li { margin: 0.2em 0; }
.pair { display: flex; gap: 16px; } .pair > div { flex: 1; min-width: 0; } .pair h3 { margin: 0.4em 0 0; }
"""


def to_html(summary: Mapping[str, Any]) -> str:
    cur = summary["population"]["base_currency"]
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Backtest report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Backtest report</h1>",
        "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _header(summary)) + "</dl>",
    ]
    compare = summary.get("compare")
    warnings = warning_lines(summary) + (warning_lines(_b_view(summary), summary) if compare else [])
    if warnings:
        parts += [
            '<section class="warnings"><h2>Warnings</h2><ul>',
            *(f"<li>{e(line)}</li>" for line in warnings),
            "</ul>",
        ]
        if _in_sample_rows(summary):
            parts += [
                "<p>The engine and the model before, inside and after the model's training period:</p>",
                _html_table(IN_SAMPLE_COLUMNS, _in_sample_rows(summary), numeric_from=2),
            ]
        parts.append("</section>")
    if summary.get("money"):
        columns, rows = _money_rows(summary)
        parts += ["<h2>Money</h2>", f'<p class="note">{e(costs_line(summary))}</p>', _html_table(columns, rows)]
    if summary.get("thresholds"):
        t = summary["thresholds"]
        parts += [
            "<h2>Model thresholds under the review budget</h2>",
            f"<p>{e(threshold_note(t))}</p>",
            _html_table(THRESHOLD_COLUMNS, _threshold_rows(t, cur)),
        ]
        if t["recommended"] is not None:
            parts.append(curve_svg(t, cur))
    if summary.get("rule_value"):
        parts += [
            "<h2>What each rule adds</h2>",
            '<p class="note">Unique frauds: labeled frauds this source flags (review or deny) and no other active'
            " rule or model threshold does. Shadow: hits while in shadow; the frauds among them nothing active"
            " flags are what acting on the rule would add.</p>",
        ]
        if compare:
            parts.append("<h3>A</h3>")
        parts += [
            _html_table(RULE_VALUE_COLUMNS, _rule_value_rows(summary, all_rules=False), numeric_from=3),
            _silent_note(summary),
            unique_svg(
                summary,
                "A: frauds each source flags, and those only it flags"
                if compare
                else "Frauds each source flags, and those only it flags",
            ),
        ]
        if compare:
            parts += [
                "<h3>B</h3>",
                _html_table(RULE_VALUE_COLUMNS, _rule_value_rows(_b_view(summary), all_rules=False), numeric_from=3),
                _silent_note(_b_view(summary)),
                unique_svg(_b_view(summary), "B: frauds each source flags, and those only it flags"),
            ]
        for label, side in (("A", summary), ("B", _b_view(summary) if compare else None)):
            columns, rows = _overlap_rows(side) if side is not None else ([], [])
            if rows:
                parts += [
                    f"<details><summary>Overlap of the rules and the model ({label})</summary>",
                    _html_table(columns, rows),
                    "</details>",
                ]
    parts += [
        "<h2>Population</h2>",
        _html_table(("", "value"), _population_rows(summary)),
    ]
    if summary["population"]["first_errors"]:
        parts.append(
            "<p>First rejected rows:</p><ul>"
            + "".join(f"<li><code>{e(x)}</code></li>" for x in summary["population"]["first_errors"])
            + "</ul>"
        )
    parts += [
        "<h2>Decisions</h2>",
        _html_table(("decision", "count", "rate"), _decision_rows(summary)),
        "<h2>Decision mix over time</h2>",
        *(
            _side_by_side(
                [daily_mix_svg(summary["daily"], 540), daily_rates_svg(summary["daily"], 540)],
                [daily_mix_svg(_b_view(summary)["daily"], 540), daily_rates_svg(_b_view(summary)["daily"], 540)],
            )
            if compare
            else [daily_mix_svg(summary["daily"]), daily_rates_svg(summary["daily"])]
        ),
        "<details><summary>Per day</summary>",
        _html_table(DAILY_COLUMNS, _daily_rows(summary)),
        "</details>",
        "<h2>The engine's decisions against the labels</h2>",
        _html_table(("", *METRIC_COLUMNS), _engine_rows(summary)),
        "<h2>Active rules</h2>",
    ]
    active = active_rules(summary)
    parts += [_html_table(RULE_COLUMNS, _rule_rows(active, "active", cur), numeric_from=4)]
    if compare:
        active_b = active_rules(_b_view(summary))
        parts += _side_by_side(
            [rules_svg(active, "active", "A: active rules, precision and recall", 540)],
            [rules_svg(active_b, "active", "B: active rules, precision and recall", 540)],
        )
    else:
        parts.append(rules_svg(active, "active", "Active rules: precision and recall"))
    parts.append("<h2>Shadow rules</h2>")
    shadow = shadow_rules(summary)
    shadow_b = shadow_rules(_b_view(summary)) if compare else []
    if shadow or shadow_b:
        parts += [
            '<p class="note">Hits while in shadow (not acted on).</p>',
            _html_table(RULE_COLUMNS, _rule_rows(shadow, "shadow", cur), numeric_from=4),
        ]
        if compare:
            parts += [
                "<p>B:</p>",
                _html_table(RULE_COLUMNS, _rule_rows(shadow_b, "shadow", cur), numeric_from=4),
                *_side_by_side(
                    [rules_svg(shadow, "shadow", "A: shadow rules, precision and recall", 540)],
                    [rules_svg(shadow_b, "shadow", "B: shadow rules, precision and recall", 540)],
                ),
            ]
        else:
            parts.append(rules_svg(shadow, "shadow", "Shadow rules: precision and recall"))
    else:
        parts.append('<p class="note">No rule in shadow mode or partial rollout, and no shadow hits.</p>')
    if summary.get("compare"):
        cmp = summary["compare"]
        metrics, transitions, rules = _compare_rows(summary)
        changed_frauds = cmp["changed_frauds"]
        parts += [
            "<h2>Compared with the second rule set (B - A)</h2>",
            f"<p>{num(cmp['changed'])} transactions change decision"
            + (f" ({num(changed_frauds)} of them labeled fraud)" if changed_frauds is not None else "")
            + ": <code>changes.parquet</code>.</p>",
        ]
        if transitions:
            parts.append(_html_table(("A → B", "transactions"), transitions))
        parts += [
            _html_table(("metric", "A", "B", "Δ"), metrics),
            "<p>Per rule (active hits, then shadow hits):</p>",
            _html_table(COMPARE_RULE_COLUMNS, rules, numeric_from=2),
        ]
        if _cause_rows(summary):
            parts += [
                "<p>What caused the changed decisions (a decision may have several causes;"
                " <code>caused_by</code> in <code>changes.parquet</code> gives them per transaction):</p>",
                _html_table(CAUSE_COLUMNS, _cause_rows(summary)),
            ]
    if summary.get("compare_model"):
        cm = summary["compare_model"]
        parts += [
            f"<h2>Models side by side: {e(str(cm['a']['version']))} (A) and {e(str(cm['b']['version']))} (B)</h2>",
            f"<p>The same rows and rules scored by both models; {num(cm['changed'])} decisions change"
            + (f" ({num(cm['changed_frauds'])} of them frauds)" if cm.get("changed_frauds") is not None else "")
            + ".</p>",
            _html_table(("metric", "A", "B", "Δ"), _model_compare_rows(summary)),
        ]
        if cm["transitions"]:
            parts.append(_html_table(("A → B", "transactions"), [[k, num(v)] for k, v in cm["transitions"].items()]))
    parts += [
        "<h2>Definitions</h2>",
        "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in summary["definitions"].items()) + "</dl>",
    ]
    timing = summary.get("timing") or {}
    if timing:
        parts.append(
            '<p class="note">Timing: '
            + e(", ".join(f"{k.removesuffix('_s')} {v:g} s" for k, v in timing.items()))
            + ".</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _silent_note(summary: Mapping[str, Any]) -> str:
    silent = _silent(summary["rule_value"])
    if not silent:
        return ""
    return f'<p class="note">No hits, active or shadow ({len(silent)} rules): {html.escape(", ".join(silent))}.</p>'


def _side_by_side(left: Sequence[str], right: Sequence[str]) -> list[str]:
    """A's charts beside B's."""
    return [
        '<div class="pair"><div><h3>A</h3>',
        *left,
        "</div><div><h3>B</h3>",
        *right,
        "</div></div>",
    ]


def to_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2, allow_nan=False) + "\n"


def write_reports(summary: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Write report.json (and the same as summary.json), summary.md and report.html into `out`; return their paths."""
    out = Path(out)
    files = [out / "report.json", out / "summary.json", out / "summary.md", out / "report.html"]
    text = to_json(summary)
    files[0].write_text(text)
    files[1].write_text(text)
    files[2].write_text(to_markdown(summary))
    files[3].write_text(to_html(summary))
    return files
