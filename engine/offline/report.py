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
)


# --------------------------------------------------------------------------- Markdown


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def _rejection_lines(summary: Mapping[str, Any]) -> list[str]:
    """The rejected rows by field and reason (`engine.offline.rejections`); none when nothing was rejected."""
    from engine.offline.rejections import Rejections

    raw = summary.get("rejections")
    return Rejections.from_json(raw).lines() if raw and raw["rejected"] else []


def to_markdown(summary: Mapping[str, Any]) -> str:
    cur = summary["population"]["base_currency"]
    parts = ["# Backtest report", ""]
    parts += [f"- **{k}**: {v}" for k, v in _header(summary)]
    parts += ["", "Charts: `report.html`. Per-transaction results: `transactions.parquet`.", ""]
    parts += ["## Population", "", _md_table(("", "value"), _population_rows(summary)), ""]
    if _rejection_lines(summary):
        head, *by_reason = _rejection_lines(summary)
        parts += [f"**{head}**", ""] + [f"- {line.strip()}" for line in by_reason] + [""]
    elif summary["population"]["first_errors"]:
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
        "<h2>Population</h2>",
        _html_table(("", "value"), _population_rows(summary)),
    ]
    if _rejection_lines(summary):
        head, *by_reason = _rejection_lines(summary)
        parts.append(
            f"<p><strong>{e(head)}</strong></p><ul>" + "".join(f"<li>{e(x.strip())}</li>" for x in by_reason) + "</ul>"
        )
    elif summary["population"]["first_errors"]:
        parts.append(
            "<p>First rejected rows:</p><ul>"
            + "".join(f"<li><code>{e(x)}</code></li>" for x in summary["population"]["first_errors"])
            + "</ul>"
        )
    parts += [
        "<h2>Decisions</h2>",
        _html_table(("decision", "count", "rate"), _decision_rows(summary)),
        "<h2>Decision mix over time</h2>",
        daily_mix_svg(summary["daily"]),
        daily_rates_svg(summary["daily"]),
        "<details><summary>Per day</summary>",
        _html_table(DAILY_COLUMNS, _daily_rows(summary)),
        "</details>",
        "<h2>The engine's decisions against the labels</h2>",
        _html_table(("", *METRIC_COLUMNS), _engine_rows(summary)),
        "<h2>Active rules</h2>",
    ]
    active = active_rules(summary)
    parts += [
        _html_table(RULE_COLUMNS, _rule_rows(active, "active", cur), numeric_from=4),
        rules_svg(active, "active", "Active rules: precision and recall"),
        "<h2>Shadow rules</h2>",
    ]
    shadow = shadow_rules(summary)
    if shadow:
        parts += [
            '<p class="note">Hits while in shadow (not acted on).</p>',
            _html_table(RULE_COLUMNS, _rule_rows(shadow, "shadow", cur), numeric_from=4),
            rules_svg(shadow, "shadow", "Shadow rules: precision and recall"),
        ]
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


def to_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2, allow_nan=False) + "\n"


def write_reports(summary: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Write summary.json, summary.md and report.html into `out`; return their paths."""
    out = Path(out)
    files = [out / "summary.json", out / "summary.md", out / "report.html"]
    files[0].write_text(to_json(summary))
    files[1].write_text(to_markdown(summary))
    files[2].write_text(to_html(summary))
    return files
