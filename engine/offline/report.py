"""Analyst reports of a backtest summary: Markdown, a self-contained HTML page, JSON.

The HTML page has no external resources: the charts are inline SVG
(`report_charts`: decision mix and rates per day, per-rule precision and
recall, the threshold curve, unique catches), so it can be mailed or
archived as one file; the tables' rows are `report_tables`'. The JSON is the
summary itself (`engine.offline.metrics.summarize`), for tools.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.offline.report_charts import (
    curve_svg,
    daily_mix_svg,
    daily_rates_svg,
    rules_svg,
    unique_svg,
)
from engine.offline.report_tables import (
    CAUSE_COLUMNS,
    COMPARE_RULE_COLUMNS,
    DAILY_COLUMNS,
    IN_SAMPLE_COLUMNS,
    METRIC_COLUMNS,
    RULE_COLUMNS,
    RULE_VALUE_COLUMNS,
    THRESHOLD_COLUMNS,
    active_rules,
    b_view,
    cause_rows,
    compare_rows,
    costs_line,
    daily_rows,
    decision_rows,
    engine_rows,
    header,
    in_sample_rows,
    md_table,
    model_compare_rows,
    money_rows,
    num,
    overlap_rows,
    population_rows,
    rejection_lines,
    rule_rows,
    rule_value_rows,
    shadow_rules,
    silent_rules,
    threshold_note,
    threshold_rows,
    warning_lines,
)


def to_markdown(summary: Mapping[str, Any]) -> str:
    cur = summary["population"]["base_currency"]
    parts = ["# Backtest report", ""]
    parts += [f"- **{k}**: {v}" for k, v in header(summary)]
    parts += ["", "Charts: `report.html`. Per-transaction results: `transactions.parquet`.", ""]
    warnings = warning_lines(summary) + (warning_lines(b_view(summary), summary) if summary.get("compare") else [])
    if warnings:
        parts += ["## Warnings", ""] + [f"- {line}" for line in warnings] + [""]
        if in_sample_rows(summary):
            parts += [md_table(IN_SAMPLE_COLUMNS, in_sample_rows(summary)), ""]
    if summary.get("money"):
        columns, rows = money_rows(summary)
        parts += ["## Money", "", costs_line(summary), "", md_table(columns, rows), ""]
    if summary.get("thresholds"):
        t = summary["thresholds"]
        parts += ["## Model thresholds under the review budget", "", threshold_note(t), ""]
        parts += [md_table(THRESHOLD_COLUMNS, threshold_rows(t, cur)), ""]
    if summary.get("rule_value"):
        parts += ["## What each rule adds", "", md_table(RULE_VALUE_COLUMNS, rule_value_rows(summary)), ""]
        if summary.get("compare"):
            parts += ["B:", "", md_table(RULE_VALUE_COLUMNS, rule_value_rows(b_view(summary))), ""]
        columns, rows = overlap_rows(summary)
        if rows:
            parts += ["Overlap of the rules and the model:", "", md_table(columns, rows), ""]
    parts += ["## Population", "", md_table(("", "value"), population_rows(summary)), ""]
    if rejection_lines(summary):
        head, *by_reason = rejection_lines(summary)
        parts += [f"**{head}**", ""] + [f"- {line.strip()}" for line in by_reason] + [""]
    elif summary["population"]["first_errors"]:
        parts += ["First rejected rows:", ""] + [f"- `{e}`" for e in summary["population"]["first_errors"]] + [""]
    parts += ["## Decisions", "", md_table(("decision", "count", "rate"), decision_rows(summary)), ""]
    parts += ["## The engine's decisions against the labels", ""]
    parts += [md_table(("", *METRIC_COLUMNS), engine_rows(summary)), ""]
    parts += ["## Active rules", "", md_table(RULE_COLUMNS, rule_rows(active_rules(summary), "active", cur)), ""]
    shadow = shadow_rules(summary)
    parts += ["## Shadow rules", ""]
    if shadow:
        parts += [
            "Hits while in shadow (not acted on).",
            "",
            md_table(RULE_COLUMNS, rule_rows(shadow, "shadow", cur)),
        ]
    else:
        parts += ["No rule in shadow mode or partial rollout, and no shadow hits."]
    parts += [""]
    if summary.get("compare"):
        cmp = summary["compare"]
        metrics, transitions, rules = compare_rows(summary)
        parts += ["## Compared with the second rule set (B - A)", ""]
        changed_frauds = cmp["changed_frauds"]
        parts += [
            f"{num(cmp['changed'])} transactions change decision"
            + (f" ({num(changed_frauds)} of them labeled fraud)" if changed_frauds is not None else "")
            + ": `changes.parquet`.",
            "",
        ]
        if transitions:
            parts += [md_table(("A -> B", "transactions"), transitions), ""]
        parts += [md_table(("metric", "A", "B", "Δ"), metrics), ""]
        parts += ["Per rule (active hits, then shadow hits):", "", md_table(COMPARE_RULE_COLUMNS, rules), ""]
        if cause_rows(summary):
            parts += ["What caused the changed decisions:", "", md_table(CAUSE_COLUMNS, cause_rows(summary)), ""]
    if summary.get("compare_model"):
        cm = summary["compare_model"]
        parts += [f"## Models side by side: {cm['a']['version']} (A) and {cm['b']['version']} (B)", ""]
        parts += [f"{num(cm['changed'])} decisions change: {cm['transitions']}.", ""]
        parts += [md_table(("metric", "A", "B", "Δ"), model_compare_rows(summary)), ""]
    parts += ["## Decision mix per day", "", md_table(DAILY_COLUMNS, daily_rows(summary)), ""]
    parts += ["## Definitions", ""]
    parts += [f"- **{k}**: {v}" for k, v in summary["definitions"].items()]
    timing = summary.get("timing") or {}
    if timing:
        parts += ["", "Timing: " + ", ".join(f"{k.removesuffix('_s')} {v:g} s" for k, v in timing.items()) + "."]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- SVG charts


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
        "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in header(summary)) + "</dl>",
    ]
    compare = summary.get("compare")
    warnings = warning_lines(summary) + (warning_lines(b_view(summary), summary) if compare else [])
    if warnings:
        parts += [
            '<section class="warnings"><h2>Warnings</h2><ul>',
            *(f"<li>{e(line)}</li>" for line in warnings),
            "</ul>",
        ]
        if in_sample_rows(summary):
            parts += [
                "<p>The engine and the model before, inside and after the model's training period:</p>",
                _html_table(IN_SAMPLE_COLUMNS, in_sample_rows(summary), numeric_from=2),
            ]
        parts.append("</section>")
    if summary.get("money"):
        columns, rows = money_rows(summary)
        parts += ["<h2>Money</h2>", f'<p class="note">{e(costs_line(summary))}</p>', _html_table(columns, rows)]
    if summary.get("thresholds"):
        t = summary["thresholds"]
        parts += [
            "<h2>Model thresholds under the review budget</h2>",
            f"<p>{e(threshold_note(t))}</p>",
            _html_table(THRESHOLD_COLUMNS, threshold_rows(t, cur)),
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
            _html_table(RULE_VALUE_COLUMNS, rule_value_rows(summary, all_rules=False), numeric_from=3),
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
                _html_table(RULE_VALUE_COLUMNS, rule_value_rows(b_view(summary), all_rules=False), numeric_from=3),
                _silent_note(b_view(summary)),
                unique_svg(b_view(summary), "B: frauds each source flags, and those only it flags"),
            ]
        for label, side in (("A", summary), ("B", b_view(summary) if compare else None)):
            columns, rows = overlap_rows(side) if side is not None else ([], [])
            if rows:
                parts += [
                    f"<details><summary>Overlap of the rules and the model ({label})</summary>",
                    _html_table(columns, rows),
                    "</details>",
                ]
    parts += [
        "<h2>Population</h2>",
        _html_table(("", "value"), population_rows(summary)),
    ]
    if rejection_lines(summary):
        head, *by_reason = rejection_lines(summary)
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
        _html_table(("decision", "count", "rate"), decision_rows(summary)),
        "<h2>Decision mix over time</h2>",
        *(
            _side_by_side(
                [daily_mix_svg(summary["daily"], 540), daily_rates_svg(summary["daily"], 540)],
                [daily_mix_svg(b_view(summary)["daily"], 540), daily_rates_svg(b_view(summary)["daily"], 540)],
            )
            if compare
            else [daily_mix_svg(summary["daily"]), daily_rates_svg(summary["daily"])]
        ),
        "<details><summary>Per day</summary>",
        _html_table(DAILY_COLUMNS, daily_rows(summary)),
        "</details>",
        "<h2>The engine's decisions against the labels</h2>",
        _html_table(("", *METRIC_COLUMNS), engine_rows(summary)),
        "<h2>Active rules</h2>",
    ]
    active = active_rules(summary)
    parts += [_html_table(RULE_COLUMNS, rule_rows(active, "active", cur), numeric_from=4)]
    if compare:
        active_b = active_rules(b_view(summary))
        parts += _side_by_side(
            [rules_svg(active, "active", "A: active rules, precision and recall", 540)],
            [rules_svg(active_b, "active", "B: active rules, precision and recall", 540)],
        )
    else:
        parts.append(rules_svg(active, "active", "Active rules: precision and recall"))
    parts.append("<h2>Shadow rules</h2>")
    shadow = shadow_rules(summary)
    shadow_b = shadow_rules(b_view(summary)) if compare else []
    if shadow or shadow_b:
        parts += [
            '<p class="note">Hits while in shadow (not acted on).</p>',
            _html_table(RULE_COLUMNS, rule_rows(shadow, "shadow", cur), numeric_from=4),
        ]
        if compare:
            parts += [
                "<p>B:</p>",
                _html_table(RULE_COLUMNS, rule_rows(shadow_b, "shadow", cur), numeric_from=4),
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
        metrics, transitions, rules = compare_rows(summary)
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
        if cause_rows(summary):
            parts += [
                "<p>What caused the changed decisions (a decision may have several causes;"
                " <code>caused_by</code> in <code>changes.parquet</code> gives them per transaction):</p>",
                _html_table(CAUSE_COLUMNS, cause_rows(summary)),
            ]
    if summary.get("compare_model"):
        cm = summary["compare_model"]
        parts += [
            f"<h2>Models side by side: {e(str(cm['a']['version']))} (A) and {e(str(cm['b']['version']))} (B)</h2>",
            f"<p>The same rows and rules scored by both models; {num(cm['changed'])} decisions change"
            + (f" ({num(cm['changed_frauds'])} of them frauds)" if cm.get("changed_frauds") is not None else "")
            + ".</p>",
            _html_table(("metric", "A", "B", "Δ"), model_compare_rows(summary)),
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
    silent = silent_rules(summary["rule_value"])
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
