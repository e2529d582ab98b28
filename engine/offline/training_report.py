"""The training report of a model: what drives its score, how well its score is calibrated, how it did week by week.

`diagnostics` computes, on the final model's held-out rows (the test period,
else the early-stopping period), what `risk-engine train` stores in the
metadata under `diagnostics`:

- feature importance: LightGBM's total gain per feature (and its share), and
  the mean |SHAP| per feature (log-odds) from the model's own explainer
  (`engine.model.explain`, exact TreeSHAP), on up to `SHAP_ROWS` held-out
  rows drawn with a fixed seed;
- calibration: the held-out rows in ten bins of score of width 0.1 (empty
  ones left out), each bin's rows, mean score and fraud rate (fixed widths,
  not deciles: with a few frauds in a thousand, nine deciles would all sit
  near 0 and say nothing about the scores that decide);
- score distribution: the share of frauds and of genuine transactions in
  twenty score bins of width 0.05;
- per-week metrics: AUC ROC, AP and CP@100 of the final model on each 7-day
  slice of the held-out period (the validation weeks are in `validation`).

`to_markdown` and `to_html` render them (the HTML page is self-contained:
inline SVG, no external resources) after the metrics report of
`engine.offline.train`.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightgbm
import numpy as np

from engine.model.explain import build_explainer

#: Rows whose SHAP values are averaged (about 0.2 ms each with the explainer's tables).
SHAP_ROWS = 2000
CALIBRATION_BINS = 10
SCORE_BINS = 20
DAY_S = 86_400


def diagnostics(
    booster: lightgbm.Booster,
    features: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    scores: np.ndarray,
    days: np.ndarray,
    cards: np.ndarray,
    evaluate: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], Mapping[str, Any]],
    measured_on: str,
) -> dict[str, Any]:
    """The report's numbers on the held-out rows `x` (labels `y`, the model's `scores`, day numbers, cards).

    `evaluate(scores, labels, days, cards)` gives a week's metrics (`engine.offline.train.evaluate_scores`:
    rows, frauds, AUC ROC, AP and the ranking metric that fits the data).
    """
    gain = booster.feature_importance("gain", iteration=booster.best_iteration or None)
    total_gain = float(gain.sum()) or 1.0
    rng = np.random.default_rng(7)
    sample = np.sort(rng.choice(len(x), size=min(SHAP_ROWS, len(x)), replace=False)) if len(x) else np.zeros(0, int)
    explainer = build_explainer(booster)
    shap = np.array([explainer.contributions(x[i])[: len(features)] for i in sample.tolist()])
    mean_shap = np.abs(shap).mean(axis=0) if len(shap) else np.zeros(len(features))
    rows: list[dict[str, Any]] = [
        {
            "feature": name,
            "gain": round(float(gain[j]), 3),
            "gain_share": round(float(gain[j]) / total_gain, 4),
            "mean_abs_shap": round(float(mean_shap[j]), 5),
        }
        for j, name in enumerate(features)
    ]
    importance = sorted(rows, key=lambda row: (-row["gain"], row["feature"]))

    calibration = []
    which = np.minimum((scores * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    for b in range(CALIBRATION_BINS):
        chunk = np.flatnonzero(which == b)
        if len(chunk):
            calibration.append(
                {
                    "rows": len(chunk),
                    "mean_score": round(float(scores[chunk].mean()), 6),
                    "fraud_rate": round(float(y[chunk].mean()), 6),
                    "min_score": round(float(scores[chunk].min()), 6),
                    "max_score": round(float(scores[chunk].max()), 6),
                }
            )

    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    fraud, genuine = scores[y > 0.5], scores[y <= 0.5]
    distribution = {
        "edges": [round(float(e), 4) for e in edges],
        "fraud": [round(float(c), 6) for c in np.histogram(fraud, edges)[0] / max(len(fraud), 1)],
        "genuine": [round(float(c), 6) for c in np.histogram(genuine, edges)[0] / max(len(genuine), 1)],
        "frauds": len(fraud),
        "genuines": len(genuine),
    }

    weeks = []
    if len(days):
        first = int(days.min())
        for start in range(first, int(days.max()) + 1, 7):
            sel = (days >= start) & (days < start + 7)
            labels = y[sel]
            if not sel.any() or labels.min() == labels.max():
                continue  # AUC needs both classes
            weeks.append(
                {
                    "from": _iso(start),
                    "to": _iso(min(start + 6, int(days.max()))),
                    **evaluate(scores[sel], labels, days[sel], cards[sel]),
                }
            )
    return {
        "measured_on": measured_on,
        "rows": len(x),
        "shap_rows": len(sample),
        "explainer": explainer.method,
        "importance": importance,
        "calibration": calibration,
        "score_distribution": distribution,
        "held_out_weeks": weeks,
    }


def rank_value(m: Mapping[str, Any]) -> float:
    """A period's ranking metric: CP@100 where the data has enough cards a day, else P@k (docs/models.md)."""
    return float(m["card_precision_top_100"] if "card_precision_top_100" in m else m["precision_top_k"])


def ranking(m: Mapping[str, Any]) -> str:
    """A period's ranking metric as the report writes it: `CP@100 0.300` or `P@52 0.712`."""
    if "card_precision_top_100" in m:
        return f"CP@100 {m['card_precision_top_100']:.3f}"
    return f"P@{m['top_k']} {m['precision_top_k']:.3f}"


def _iso(day: int) -> str:
    return str(np.datetime64(day, "D"))


# --------------------------------------------------------------------------- Markdown


def to_markdown(d: Mapping[str, Any]) -> str:
    """The diagnostics as Markdown sections (appended to the model's report.md)."""
    where = str(d["measured_on"]).replace("_", " ")
    lines = [
        "## Feature importance",
        "",
        f"Total gain of each feature's splits, and mean |SHAP| (log-odds) on {d['shap_rows']:,} rows of the "
        f"{where} period ({d['explainer']} explainer).",
        "",
        "| feature | gain | share of gain | mean abs SHAP |",
        "|---|---|---|---|",
    ]
    for row in d["importance"]:
        lines.append(
            f"| {row['feature']} | {row['gain']:,.0f} | {row['gain_share']:.1%} | {row['mean_abs_shap']:.4f} |"
        )
    lines += [
        "",
        "## Calibration",
        "",
        f"The {d['rows']:,} rows of the {where} period in bins of score of width 0.1 (empty ones left out).",
        "",
        "| scores | rows | mean score | fraud rate |",
        "|---|---|---|---|",
    ]
    for b in d["calibration"]:
        lines.append(
            f"| {b['min_score']:.4f} to {b['max_score']:.4f} | {b['rows']:,} | {b['mean_score']:.4f} "
            f"| {b['fraud_rate']:.4f} |"
        )
    dist = d["score_distribution"]
    lines += [
        "",
        "## Score distribution",
        "",
        f"Share of the {dist['frauds']:,} frauds and of the {dist['genuines']:,} genuine transactions of the "
        f"{where} period per score bin.",
        "",
        "| score | frauds | genuine |",
        "|---|---|---|",
    ]
    edges = dist["edges"]
    for i, (f, g) in enumerate(zip(dist["fraud"], dist["genuine"], strict=True)):
        lines.append(f"| {edges[i]:.2f} to {edges[i + 1]:.2f} | {f:.2%} | {g:.2%} |")
    lines += [
        "",
        "## Per week",
        "",
        f"The final model on each week of the {where} period (the validation weeks are above).",
        "",
        "| week | rows | frauds | AUC ROC | AP | ranking |",
        "|---|---|---|---|---|---|",
    ]
    for w in d["held_out_weeks"]:
        lines.append(
            f"| {w['from']} to {w['to']} | {w['rows']:,} | {w['frauds']:,} | {w['auc_roc']:.3f} "
            f"| {w['average_precision']:.3f} | {ranking(w)} |"
        )
    if not d["held_out_weeks"]:
        lines.append("| none with frauds and genuine transactions | | | | | |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

BLUE, ORANGE, GREEN, GREY = "#4a78b5", "#e08a3c", "#5a9a5a", "#888"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="8" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>'
    )
    return head + "".join(body) + "</svg>"


def _bars(labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], title: str, fmt: str) -> str:
    """Horizontal bars, one group per label, one bar per series (name, color, values scaled to each's max)."""
    row_h, left, width = 16 * len(series) + 6, 220, 860
    height = 40 + row_h * len(labels)
    plot_w = width - left - 90
    body = []
    for k, (name, color, _) in enumerate(series):
        body.append(f'<rect x="{left + k * 160}" y="24" width="10" height="10" fill="{color}"/>')
        body.append(f'<text x="{left + k * 160 + 14}" y="33" font-size="11">{html.escape(name)}</text>')
    for i, label in enumerate(labels):
        y = 40 + i * row_h
        body.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{html.escape(label)}</text>')
        for k, (_, color, values) in enumerate(series):
            top = max(max(values), 1e-12)
            w = plot_w * values[i] / top
            yy = y + k * 16
            body.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="13" fill="{color}"/>')
            body.append(f'<text x="{left + w + 4:.1f}" y="{yy + 11}" font-size="10">{values[i]:{fmt}}</text>')
    return _svg(width, height, title, body)


def _plot(
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]],
    title: str,
    x_max: float,
    y_max: float,
    x_label: str,
    y_label: str,
    width: int = 420,
    height: int = 300,
    step: bool = False,
) -> str:
    """Lines (or steps) of (x, y) points on axes from 0 to x_max and 0 to y_max."""
    left, top, right, bottom = 50, 40, 15, 40
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + pw * x / (x_max or 1)

    def py(y: float) -> float:
        return top + ph * (1 - y / (y_max or 1))

    body = [
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="{GREY}"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="{GREY}"/>',
        f'<text x="{left + pw / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{top + ph / 2}" font-size="11" transform="rotate(-90 12 {top + ph / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        body.append(
            f'<text x="{left - 4}" y="{py(y_max * frac) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{y_max * frac:.3g}</text>"
        )
        body.append(
            f'<text x="{px(x_max * frac):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">'
            f"{x_max * frac:.3g}</text>"
        )
    for k, (name, color, points) in enumerate(series):
        coords = []
        for x, y in points:
            coords.append(f"{px(x):.1f},{py(min(y, y_max)):.1f}")
        kind = "polyline"
        body.append(f'<{kind} fill="none" stroke="{color}" stroke-width="2" points="{" ".join(coords)}"/>')
        if not step:
            body += [f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.5" fill="{color}"/>' for c in coords]
        body.append(f'<rect x="{left + 10 + k * 130}" y="24" width="10" height="10" fill="{color}"/>')
        body.append(f'<text x="{left + 24 + k * 130}" y="33" font-size="11">{html.escape(name)}</text>')
    return _svg(width, height, title, body)


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(metadata: Mapping[str, Any], markdown_head: str) -> str:
    """The training report as one self-contained page: the summary, then the charts and their tables."""
    d = metadata["diagnostics"]
    imp = d["importance"]
    names = [r["feature"] for r in imp]
    charts = [
        _bars(
            names,
            [
                ("share of gain", BLUE, [r["gain_share"] for r in imp]),
                ("mean |SHAP| (log-odds)", ORANGE, [r["mean_abs_shap"] for r in imp]),
            ],
            "Feature importance",
            ".3f",
        )
    ]
    cal = d["calibration"]
    top = 1.0
    charts.append(
        _plot(
            [
                ("fraud rate", BLUE, [(b["mean_score"], b["fraud_rate"]) for b in cal]),
                ("perfect", GREY, [(0.0, 0.0), (top, top)]),
            ],
            "Calibration (bins of 0.1 of score)",
            top,
            top,
            "mean score",
            "fraud rate",
        )
    )
    dist = d["score_distribution"]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(dist["edges"])]
    charts.append(
        _plot(
            [
                ("frauds", ORANGE, list(zip(mids, dist["fraud"], strict=True))),
                ("genuine", BLUE, list(zip(mids, dist["genuine"], strict=True))),
            ],
            "Score distribution (share per bin)",
            1.0,
            1.0,
            "score",
            "share of the class",
        )
    )
    weeks = (metadata.get("validation") or {}).get("weeks") or []
    week_rows = [(f"validation {w['test'][0]}", w) for w in weeks] + [
        (f"final model {w['from']}", w) for w in d["held_out_weeks"]
    ]
    if week_rows:
        n = len(week_rows)
        charts.append(
            _plot(
                [
                    (label, color, [(i, w[key]) for i, (_, w) in enumerate(week_rows)])
                    for label, color, key in (
                        ("AUC ROC", BLUE, "auc_roc"),
                        ("AP", ORANGE, "average_precision"),
                    )
                ]
                + [("ranking (CP@100 or P@k)", GREEN, [(i, rank_value(w)) for i, (_, w) in enumerate(week_rows)])],
                "Per week: " + ", ".join(label for label, _ in week_rows),
                max(n - 1, 1),
                1.0,
                "week (in the order listed)",
                "metric",
                width=860,
            )
        )
    tables = _table(
        ["week", "rows", "frauds", "AUC ROC", "AP", "ranking"],
        [
            [
                label,
                f"{w['rows']:,}",
                f"{w['frauds']:,}",
                f"{w['auc_roc']:.3f}",
                f"{w['average_precision']:.3f}",
                ranking(w),
            ]
            for label, w in week_rows
        ],
    )
    importance = _table(
        ["feature", "gain", "share of gain", "mean |SHAP|"],
        [[r["feature"], f"{r['gain']:,.0f}", f"{r['gain_share']:.1%}", f"{r['mean_abs_shap']:.4f}"] for r in imp],
    )
    version = html.escape(str(metadata["version"]))
    style = (
        "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "svg{display:block;margin:1em 0}.pair{display:flex;gap:10px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Model {version}</title>"
        f"<style>{style}</style></head><body><h1>Model {version}</h1>"
        f"{charts[0]}<div class='pair'>{charts[1]}{charts[2]}</div>{''.join(charts[3:])}"
        f"<h2>Per week</h2>{tables}<h2>Feature importance</h2>{importance}"
        f"<h2>Summary (report.md)</h2><pre>{html.escape(markdown_head)}</pre></body></html>\n"
    )
