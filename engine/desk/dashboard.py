"""The leads' dashboard: how big and old the queue is, what the engine decides, how rules and analysts do.

- queue: open and escalated cases, unclaimed ones, the oldest, how many are
  past the SLA;
- decisions per hour over the last 24 hours (from the projector's counts);
- per rule: hits per day over the last 7 days, and precision from the cases
  resolved in the last 30 days that the rule flagged (fraud / resolved);
- analysts: cases resolved in the last 24 hours and 7 days, fraud share,
  median time from claim to resolution;
- labels: median and 90th percentile of the time from decision to
  resolution (the label lag the engine's label windows see), labels pending
  delivery and the oldest of them, labels the engine refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from engine.desk import schema as t
from engine.desk.db import now_ms

_HOUR, _DAY = 3_600_000, 86_400_000


@dataclass
class RuleRow:
    rule_id: str
    hits_per_day: list[int]  # oldest day first, today last
    resolved: int
    fraud: int

    @property
    def precision(self) -> float | None:
        return self.fraud / self.resolved if self.resolved else None


def _quantile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def dashboard(conn: Connection, sla_ms: int) -> dict[str, Any]:
    now = now_ms()
    c = t.cases.c
    active = c.status.in_(t.UNRESOLVED)
    q = conn.execute(
        select(
            func.count(),
            func.sum(case((c.status == t.ESCALATED, 1), else_=0)),
            func.sum(case((c.claimed_by.is_(None), 1), else_=0)),
            func.min(c.decided_at_ms),
            func.sum(case((c.decided_at_ms <= now - sla_ms, 1), else_=0)),
        ).where(active)
    ).one()
    queue = {
        "active": int(q[0] or 0),
        "escalated": int(q[1] or 0),
        "unclaimed": int(q[2] or 0),
        "oldest_age_ms": (now - int(q[3])) if q[3] is not None else None,
        "over_sla": int(q[4] or 0),
    }

    first_hour = now - now % _HOUR - 23 * _HOUR
    per_hour: dict[int, dict[str, int]] = {first_hour + i * _HOUR: {} for i in range(24)}
    for hour, decision, n in conn.execute(
        select(t.decision_hours.c.hour_ms, t.decision_hours.c.decision, t.decision_hours.c.n).where(
            t.decision_hours.c.hour_ms >= first_hour
        )
    ).all():
        if int(hour) in per_hour:
            per_hour[int(hour)][str(decision)] = int(n)

    today = now - now % _DAY
    days = [today - i * _DAY for i in range(6, -1, -1)]
    rules: dict[str, RuleRow] = {}
    for day, rule_id, n in conn.execute(
        select(t.rule_hits.c.day_ms, t.rule_hits.c.rule_id, t.rule_hits.c.n).where(t.rule_hits.c.day_ms >= days[0])
    ).all():
        row = rules.setdefault(str(rule_id), RuleRow(str(rule_id), [0] * 7, 0, 0))
        if int(day) in days:
            row.hits_per_day[days.index(int(day))] += int(n)
    since = now - 30 * _DAY
    for rule_id, resolved, fraud in conn.execute(
        select(
            t.case_reasons.c.rule_id,
            func.count(),
            func.sum(case((c.resolution == t.FRAUD, 1), else_=0)),
        )
        .select_from(t.case_reasons.join(t.cases, c.id == t.case_reasons.c.case_id))
        .where(t.case_reasons.c.rule_id != "", c.status == t.RESOLVED, c.resolved_at_ms >= since)
        .group_by(t.case_reasons.c.rule_id)
    ).all():
        row = rules.setdefault(str(rule_id), RuleRow(str(rule_id), [0] * 7, 0, 0))
        row.resolved, row.fraud = int(resolved), int(fraud or 0)

    analysts = []
    for name, day_n, week_n, fraud_n in conn.execute(
        select(
            c.resolved_by,
            func.sum(case((c.resolved_at_ms >= now - _DAY, 1), else_=0)),
            func.count(),
            func.sum(case((c.resolution == t.FRAUD, 1), else_=0)),
        )
        .where(c.status == t.RESOLVED, c.resolved_at_ms >= now - 7 * _DAY)
        .group_by(c.resolved_by)
        .order_by(func.count().desc())
    ).all():
        analysts.append({"name": name, "day": int(day_n or 0), "week": int(week_n), "fraud": int(fraud_n or 0)})

    lags = [
        int(r[0])
        for r in conn.execute(
            select(c.resolved_at_ms - c.decided_at_ms)
            .where(c.status == t.RESOLVED, c.resolved_at_ms >= now - 7 * _DAY)
            .order_by(c.resolved_at_ms.desc())
            .limit(5000)
        ).all()
    ]
    pending = conn.execute(select(func.count(), func.min(c.resolved_at_ms)).where(c.label_state == "pending")).one()
    failed = conn.execute(select(func.count()).where(and_(c.label_state == "failed"))).scalar_one()
    sent_lags = [
        int(r[0])
        for r in conn.execute(
            select(c.label_sent_at_ms - c.resolved_at_ms)
            .where(c.label_state == "sent", c.resolved_at_ms >= now - 7 * _DAY)
            .order_by(c.resolved_at_ms.desc())
            .limit(5000)
        ).all()
    ]
    labels = {
        "decision_to_label_p50_ms": _quantile(lags, 0.5),
        "decision_to_label_p90_ms": _quantile(lags, 0.9),
        "resolution_to_engine_p50_ms": _quantile(sent_lags, 0.5),
        "pending": int(pending[0] or 0),
        "oldest_pending_ms": (now - int(pending[1])) if pending[1] is not None else None,
        "failed": int(failed or 0),
        "resolved_7d": len(lags),
    }
    return {
        "queue": queue,
        "per_hour": sorted(per_hour.items()),
        "days": days,
        "rules": sorted(rules.values(), key=lambda r: (-sum(r.hits_per_day), r.rule_id)),
        "analysts": analysts,
        "labels": labels,
    }
