"""The backtest report's charts: inline SVG of the daily decision mix and rates, rules, the threshold curve and
unique catches."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from engine.offline.report_tables import COLORS, pct


def svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{width - 4}" y="14" font-size="12" font-weight="600" text-anchor="end">{html.escape(title)}</text>',
    ]


def legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for label, color in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14:.1f}" y="{y:.1f}" font-size="11">{html.escape(label)}</text>')
        x += 20 + 7 * len(label)
    return out


def nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def y_axis(top: float, left: float, plot_w: float, plot_h: float, vmax: float, fmt: str) -> list[str]:
    out = []
    for k in range(5):
        v = vmax * k / 4
        y = top + plot_h - plot_h * k / 4
        label = f"{v * 100:.2g} %" if fmt == "pct" else f"{v:,.0f}"
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    return out


def x_labels(days: Sequence[str], left: float, step: float, y: float) -> list[str]:
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
    out = svg_open(width, height, "Decisions per day (UTC)")
    vmax = nice_max(max((d["allow"] + d["review"] + d["deny"] for d in daily), default=0))
    out += y_axis(top, left, plot_w, plot_h, vmax, "count")
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
    out += x_labels([d["day"] for d in daily], left, step, height - bottom + 14)
    out += legend([(n, COLORS[n]) for n in ("allow", "review", "deny")], left, 14)
    out.append("</svg>")
    return "\n".join(out)


def daily_rates_svg(daily: Sequence[Mapping[str, Any]], width: int = 860, height: int = 220) -> str:
    """Lines: the review and deny rates per UTC day (the allow share dwarfs them in the mix)."""
    left, top, right, bottom = 60, 24, 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    out = svg_open(width, height, "Review and deny rate per day (UTC)")
    rates: dict[str, list[float]] = {"review": [], "deny": []}
    for d in daily:
        total = d["allow"] + d["review"] + d["deny"]
        for name in rates:
            rates[name].append(d[name] / total if total else 0.0)
    vmax = max([*rates["review"], *rates["deny"], 0.0])
    vmax = nice_max(vmax * 1000) / 1000 if vmax > 0 else 0.01
    out += y_axis(top, left, plot_w, plot_h, vmax, "pct")
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
    out += x_labels([d["day"] for d in daily], left, step, height - bottom + 14)
    out += legend([(f"{n} rate", COLORS[n]) for n in ("review", "deny")], left, 14)
    out.append("</svg>")
    return "\n".join(out)


def rules_svg(rules: Sequence[Mapping[str, Any]], which: str, title: str, width: int = 860) -> str:
    """Horizontal bars: precision and recall of each rule (0-100 %); '-' when undefined."""
    label_w, right, top, row_h = 230, 60, 30, 34
    plot_w = width - label_w - right
    height = top + row_h * max(len(rules), 1) + 20
    out = svg_open(width, height, title)
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
    out += legend([("precision", COLORS["precision"]), ("recall", COLORS["recall"])], label_w, 16)
    out.append("</svg>")
    return "\n".join(out)


def curve_svg(t: Mapping[str, Any], currency: str, width: int = 860, height: int = 260) -> str:
    """Net value against reviews a day, for each review threshold at the recommended deny threshold."""
    curve = sorted(t["curve"], key=lambda row: row["reviews_per_day"])
    left, top, right, bottom = 90, 24, 20, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    deny = t["recommended"]["deny_at"]
    title = f"Net value by review threshold (deny at {'off' if deny is None else f'{deny:.4f}'})"
    out = svg_open(width, height, title)
    if not curve:
        out.append("</svg>")
        return "\n".join(out)
    xs = [row["reviews_per_day"] for row in curve]
    ys = [row["net_value"] for row in curve]
    capacity = t["review_capacity"]
    xmax = nice_max(max([*xs, capacity or 0.0, 1.0]))
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
    out = svg_open(width, height, title)
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
    out += legend([("frauds only this source flags", COLORS["precision"]), ("frauds flagged", "#c9d6ea")], label_w, 32)
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML
