"""Cases: the queue, the case page's data, and every action on a case, each with its audit entry.

Two analysts can never decide the same case. Every action is one database
transaction that first locks the case row (`SELECT ... FOR UPDATE` in
PostgreSQL; SQLite transactions take the write lock at BEGIN) and then
changes it with an `UPDATE ... WHERE` that restates the condition
(`claimed_by IS NULL` to claim, `claimed_by = me` to resolve or escalate,
`status <> 'resolved'` always) and `RETURNING` the row, so the condition and
the change are one step; the audit entry is written in the same
transaction. "Claim the next case" takes the oldest open, unclaimed case
with `FOR UPDATE SKIP LOCKED`, so analysts asking together each get a
different case without waiting on one another.

Rules: an analyst claims open cases; a lead also claims escalated ones and
assigns (or takes back) any unresolved case. Only the claimant resolves or
escalates (escalating hands the case to the leads, unclaimed). Resolution
is final (the engine keeps the first label of a transaction). Bulk resolve
takes the selected cases that are unclaimed or claimed by the one resolving
and leaves the others, saying which.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.sql import ColumnElement, Select

from engine.desk import schema as t
from engine.desk.audit import audit_write
from engine.desk.auth import User
from engine.desk.db import is_postgres, now_ms
from engine.desk.pan import mask_pans

PAGE_SIZE = 50
#: The queue counts matches up to this many ("10,000+" beyond): an exact count of a big queue costs more than it tells.
COUNT_CAP = 10_000
HISTORY_ROWS = 15
MAX_NOTE = 4000
SORTS = {"age": t.cases.c.decided_at_ms, "score": t.cases.c.score, "amount": t.cases.c.amount_base}


class Refused(Exception):
    """An action that is not allowed in the case's current state; the message says why, in plain words."""


@dataclass
class QueueFilter:
    status: str = "active"  # active (open + escalated) | open | escalated | resolved | all
    reason: str = ""
    rule: str = ""
    min_amount: float | None = None
    max_amount: float | None = None
    currency: str = ""
    country: str = ""  # card or IP country
    min_age_min: float | None = None
    max_age_min: float | None = None
    assignee: str = ""  # "" any | "me" | "none" | a user name
    kind: str = ""
    sort: str = "age"  # age | score | amount
    order: str = ""  # asc | desc ("" = the sort's natural order: oldest, highest score, largest amount first)
    page: int = 1

    @classmethod
    def parse(cls, params: dict[str, str]) -> tuple[QueueFilter, list[str]]:
        """A filter from query parameters, with an error per unusable one (which is then ignored)."""
        f, errors = cls(), []

        def number(name: str) -> float | None:
            raw = params.get(name, "").strip()
            if not raw:
                return None
            try:
                value = float(raw)
            except ValueError:
                errors.append(f"{name}: {raw[:40]!r} is not a number")
                return None
            if not math.isfinite(value) or value < 0:
                errors.append(f"{name}: must be a number of 0 or more")
                return None
            return value

        status = params.get("status", "active")
        if status in ("active", "open", "escalated", "resolved", "all"):
            f.status = status
        else:
            errors.append(f"status: {status[:40]!r} is not one of active, open, escalated, resolved, all")
        f.reason = params.get("reason", "").strip()[:64]
        f.rule = params.get("rule", "").strip()[:128]
        f.min_amount, f.max_amount = number("min_amount"), number("max_amount")
        f.currency = params.get("currency", "").strip().upper()[:3]
        f.country = params.get("country", "").strip().upper()[:2]
        f.min_age_min, f.max_age_min = number("min_age"), number("max_age")
        f.assignee = params.get("assignee", "").strip()[:64]
        kind = params.get("kind", "")
        if kind in ("", t.REVIEW, t.ALLOW_SAMPLE, t.DENY_SAMPLE):
            f.kind = kind
        sort = params.get("sort", "age")
        if sort in SORTS:
            f.sort = sort
        else:
            errors.append(f"sort: {sort[:40]!r} is not one of age, score, amount")
        order = params.get("order", "")
        f.order = order if order in ("asc", "desc") else ""
        try:
            f.page = max(1, min(int(params.get("page", "1")), 1000))
        except ValueError:
            f.page = 1
        return f, errors

    def where(self, user: User, now: int) -> list[ColumnElement[bool]]:
        c = t.cases.c
        out: list[ColumnElement[bool]] = []
        if self.status == "active":
            out.append(c.status.in_(t.UNRESOLVED))
        elif self.status != "all":
            out.append(c.status == self.status)
        if self.reason:
            out.append(c.reason_codes.contains(f" {self.reason.upper()} ", autoescape=True))
        if self.rule:
            out.append(c.rule_ids.contains(f" {self.rule} ", autoescape=True))
        if self.min_amount is not None:
            out.append(c.amount_base >= self.min_amount)
        if self.max_amount is not None:
            out.append(c.amount_base <= self.max_amount)
        if self.currency:
            out.append(c.currency == self.currency)
        if self.country:
            out.append(or_(c.country == self.country, c.ip_country == self.country))
        if self.min_age_min is not None:
            out.append(c.decided_at_ms <= now - int(self.min_age_min * 60_000))
        if self.max_age_min is not None:
            out.append(c.decided_at_ms >= now - int(self.max_age_min * 60_000))
        if self.assignee == "me":
            out.append(c.claimed_by == user.name)
        elif self.assignee == "none":
            out.append(c.claimed_by.is_(None))
        elif self.assignee:
            out.append(c.claimed_by == self.assignee)
        if self.kind:
            out.append(c.kind == self.kind)
        return out

    def order_by(self) -> list[Any]:
        """The sort, in an order an index holds: (age, id) both ways; (score or amount high first, id) both ways."""
        column, cid = SORTS[self.sort], t.cases.c.id
        natural = "asc" if self.sort == "age" else "desc"
        direction = self.order or natural
        if self.sort == "age":
            return [column.asc(), cid.asc()] if direction == "asc" else [column.desc(), cid.desc()]
        # Unknown first when high first: a case the model could not score (score NULL) is looked at early.
        if direction == "desc":
            return [column.desc().nulls_first(), cid.asc()]
        return [column.asc().nulls_last(), cid.desc()]

    def query(self, keep: dict[str, str] | None = None) -> dict[str, str]:
        """The filter as query parameters (for links that keep it), without the page unless asked."""
        out = {
            "status": self.status,
            "reason": self.reason,
            "rule": self.rule,
            "min_amount": "" if self.min_amount is None else f"{self.min_amount:g}",
            "max_amount": "" if self.max_amount is None else f"{self.max_amount:g}",
            "currency": self.currency,
            "country": self.country,
            "min_age": "" if self.min_age_min is None else f"{self.min_age_min:g}",
            "max_age": "" if self.max_age_min is None else f"{self.max_age_min:g}",
            "assignee": self.assignee,
            "kind": self.kind,
            "sort": self.sort,
            "order": self.order,
        }
        out = {k: v for k, v in out.items() if v}
        out.update(keep or {})
        return out


QUEUE_COLUMNS = (
    t.cases.c.id,
    t.cases.c.transaction_id,
    t.cases.c.kind,
    t.cases.c.status,
    t.cases.c.decided_at_ms,
    t.cases.c.decision,
    t.cases.c.score,
    t.cases.c.amount_minor,
    t.cases.c.currency,
    t.cases.c.amount_base,
    t.cases.c.country,
    t.cases.c.ip_country,
    t.cases.c.merchant_id,
    t.cases.c.claimed_by,
    t.cases.c.resolution,
)


@dataclass
class QueuePage:
    rows: list[Row[Any]]
    reasons: dict[int, list[str]]
    total: int
    capped: bool
    page: int
    pages_known: int


def queue(conn: Connection, f: QueueFilter, user: User) -> QueuePage:
    now = now_ms()
    conditions = f.where(user, now)
    base: Select[Any] = select(*QUEUE_COLUMNS).where(and_(True, *conditions))
    rows = list(conn.execute(base.order_by(*f.order_by()).limit(PAGE_SIZE).offset((f.page - 1) * PAGE_SIZE)).all())
    counted = select(t.cases.c.id).where(and_(True, *conditions)).limit(COUNT_CAP + 1).subquery()
    total = int(conn.execute(select(func.count()).select_from(counted)).scalar_one())
    reasons: dict[int, list[str]] = {}
    if rows:
        for case_id, code in conn.execute(
            select(t.case_reasons.c.case_id, t.case_reasons.c.code).where(
                t.case_reasons.c.case_id.in_([r.id for r in rows])
            )
        ).all():
            reasons.setdefault(int(case_id), []).append(str(code))
    return QueuePage(
        rows, reasons, min(total, COUNT_CAP), total > COUNT_CAP, f.page, (min(total, COUNT_CAP) - 1) // PAGE_SIZE + 1
    )


@dataclass
class HistoryRow:
    transaction_id: str
    decided_at_ms: int
    decision: str
    score: float | None
    amount_minor: int
    currency: str
    reasons: str
    case_id: int | None
    case_status: str | None
    case_resolution: str | None


@dataclass
class CaseView:
    case: Row[Any]
    record: dict[str, Any]
    notes: list[Row[Any]]
    audit: list[Row[Any]]
    history: dict[str, list[HistoryRow]] = field(default_factory=dict)
    list_entries: list[Row[Any]] = field(default_factory=list)


def get_case(conn: Connection, case_id: int) -> CaseView | None:
    case = conn.execute(select(t.cases).where(t.cases.c.id == case_id)).first()
    if case is None:
        return None
    notes = list(
        conn.execute(select(t.notes).where(t.notes.c.case_id == case_id).order_by(t.notes.c.at_ms.asc())).all()
    )
    trail = list(
        conn.execute(
            select(t.audit).where(t.audit.c.case_id == case_id).order_by(t.audit.c.at_ms.desc(), t.audit.c.id.desc())
        ).all()
    )
    history: dict[str, list[HistoryRow]] = {}
    for label, column, value in (
        ("card", t.decisions.c.card_id, case.card_id),
        ("device", t.decisions.c.device_id, case.device_id),
        ("IP", t.decisions.c.ip, case.ip),
    ):
        if not value:
            continue
        d, c = t.decisions.c, t.cases.c
        rows = conn.execute(
            select(
                d.transaction_id,
                d.decided_at_ms,
                d.decision,
                d.score,
                d.amount_minor,
                d.currency,
                d.reasons,
                c.id,
                c.status,
                c.resolution,
            )
            .select_from(t.decisions.outerjoin(t.cases, c.transaction_id == d.transaction_id))
            .where(column == value, d.transaction_id != case.transaction_id)
            .order_by(d.decided_at_ms.desc())
            .limit(HISTORY_ROWS)
        ).all()
        history[label] = [
            HistoryRow(
                transaction_id=r[0],
                decided_at_ms=r[1],
                decision=r[2],
                score=r[3],
                amount_minor=r[4],
                currency=r[5],
                reasons=r[6],
                case_id=r[7],
                case_status=r[8],
                case_resolution=r[9],
            )
            for r in rows
        ]
    entries = list(
        conn.execute(
            select(t.list_entries).where(t.list_entries.c.case_id == case_id).order_by(t.list_entries.c.id)
        ).all()
    )
    return CaseView(case, json.loads(case.record), notes, trail, history, entries)


# -- actions --------------------------------------------------------------------


def _locked(conn: Connection, case_id: int) -> Any:
    row = conn.execute(
        select(t.cases.c.id, t.cases.c.status, t.cases.c.claimed_by, t.cases.c.resolution, t.cases.c.resolved_by)
        .where(t.cases.c.id == case_id)
        .with_for_update()
    ).first()
    if row is None:
        raise Refused(f"there is no case {case_id}")
    return row


def _state(row: Any) -> dict[str, object]:
    return {"status": row.status, "claimed_by": row.claimed_by, "resolution": row.resolution}


def _not_resolved(row: Any) -> None:
    if row.status == t.RESOLVED:
        raise Refused(f"case {row.id} is already resolved ({row.resolution}, by {row.resolved_by})")


def claim(engine: Engine, case_id: int, user: User) -> None:
    """Claim one case (Refused when someone else holds it, or it is resolved, or escalated for a non-lead)."""
    with engine.begin() as conn:
        row = _locked(conn, case_id)
        _not_resolved(row)
        if row.claimed_by == user.name:
            raise Refused(f"you have already claimed case {case_id}")
        if row.claimed_by is not None:
            raise Refused(f"case {case_id} is claimed by {row.claimed_by}: only one analyst works a case")
        if row.status == t.ESCALATED and not user.is_lead:
            raise Refused(f"case {case_id} is escalated: a lead takes it")
        done = conn.execute(
            update(t.cases)
            .where(t.cases.c.id == case_id, t.cases.c.claimed_by.is_(None), t.cases.c.status != t.RESOLVED)
            .values(claimed_by=user.name, claimed_at_ms=now_ms())
            .returning(t.cases.c.id)
        ).first()
        if done is None:  # only reachable if the lock did not hold: refuse rather than double-claim
            raise Refused(f"case {case_id} was claimed by someone else a moment ago")
        audit_write(
            conn,
            user.name,
            "claim",
            case_id=case_id,
            before=_state(row),
            after={**_state(row), "claimed_by": user.name},
        )


def claim_next(engine: Engine, user: User) -> int | None:
    """Claim the oldest open unclaimed case; its id, or None when the queue is empty."""
    c = t.cases.c
    with engine.begin() as conn:
        statuses = list(t.UNRESOLVED) if user.is_lead else [t.OPEN]
        pick = (
            select(c.id)
            .where(c.status.in_(statuses), c.claimed_by.is_(None))
            .order_by(c.decided_at_ms.asc(), c.id.asc())
            .limit(1)
        )
        if is_postgres(conn):
            pick = pick.with_for_update(skip_locked=True)
        picked = conn.execute(pick).scalar()
        if picked is None:
            return None
        done = conn.execute(
            update(t.cases)
            .where(c.id == picked, c.claimed_by.is_(None), c.status.in_(statuses))
            .values(claimed_by=user.name, claimed_at_ms=now_ms())
            .returning(c.id, c.status)
        ).first()
        if done is None:
            return None
        audit_write(
            conn,
            user.name,
            "claim",
            case_id=int(done.id),
            before={"status": done.status, "claimed_by": None, "resolution": None},
            after={"status": done.status, "claimed_by": user.name, "resolution": None},
            detail="next in queue",
        )
        return int(done.id)


def release(engine: Engine, case_id: int, user: User) -> None:
    with engine.begin() as conn:
        row = _locked(conn, case_id)
        _not_resolved(row)
        if row.claimed_by is None:
            raise Refused(f"case {case_id} is not claimed")
        if row.claimed_by != user.name and not user.is_lead:
            raise Refused(f"case {case_id} is claimed by {row.claimed_by}: only they or a lead can release it")
        conn.execute(
            update(t.cases)
            .where(t.cases.c.id == case_id, t.cases.c.claimed_by == row.claimed_by)
            .values(claimed_by=None, claimed_at_ms=None)
        )
        audit_write(
            conn, user.name, "release", case_id=case_id, before=_state(row), after={**_state(row), "claimed_by": None}
        )


def assign(engine: Engine, case_id: int, lead: User, to: str) -> None:
    if not lead.is_lead:
        raise Refused("only leads assign cases")
    with engine.begin() as conn:
        row = _locked(conn, case_id)
        _not_resolved(row)
        target = conn.execute(
            select(t.users.c.name, t.users.c.role).where(t.users.c.name == to, t.users.c.active.is_(True))
        ).first()
        if target is None:
            raise Refused(f"there is no active user {to!r}")
        if row.status == t.ESCALATED and target.role != t.LEAD:
            raise Refused(f"case {case_id} is escalated: assign it to a lead")
        conn.execute(update(t.cases).where(t.cases.c.id == case_id).values(claimed_by=to, claimed_at_ms=now_ms()))
        audit_write(
            conn, lead.name, "assign", case_id=case_id, before=_state(row), after={**_state(row), "claimed_by": to}
        )


def resolve(engine: Engine, case_id: int, user: User, outcome: str, note: str = "") -> None:
    """Resolve a case the user has claimed as fraud or genuine; its label is then pending delivery."""
    if outcome not in (t.FRAUD, t.GENUINE):
        raise Refused("a case is resolved as fraud or genuine")
    note = _clean_note(note, required=False)
    with engine.begin() as conn:
        row = _locked(conn, case_id)
        _not_resolved(row)
        if row.claimed_by != user.name:
            who = f"claimed by {row.claimed_by}" if row.claimed_by else "not claimed"
            raise Refused(f"case {case_id} is {who}: claim it before you resolve it")
        _resolve_locked(conn, row, user, outcome, note, detail="")


def _resolve_locked(conn: Connection, row: Any, user: User, outcome: str, note: str, detail: str) -> None:
    now = now_ms()
    done = conn.execute(
        update(t.cases)
        .where(t.cases.c.id == row.id, t.cases.c.status != t.RESOLVED, t.cases.c.claimed_by == user.name)
        .values(
            status=t.RESOLVED,
            resolution=outcome,
            resolved_by=user.name,
            resolved_at_ms=now,
            label_state="pending",
        )
        .returning(t.cases.c.id)
    ).first()
    if done is None:
        raise Refused(f"case {row.id} changed meanwhile: reload it")
    if note:
        conn.execute(insert(t.notes).values(case_id=row.id, author=user.name, at_ms=now, text=note))
    audit_write(
        conn,
        user.name,
        "resolve",
        case_id=int(row.id),
        before=_state(row),
        after={"status": t.RESOLVED, "claimed_by": user.name, "resolution": outcome},
        detail=detail or note[:200],
    )


def bulk_resolve(
    engine: Engine, case_ids: list[int], user: User, outcome: str, note: str = ""
) -> tuple[list[int], list[str]]:
    """Resolve the selected cases that are unclaimed or the user's own; (resolved ids, why each other was left)."""
    if outcome not in (t.FRAUD, t.GENUINE):
        raise Refused("a case is resolved as fraud or genuine")
    if not case_ids:
        raise Refused("select at least one case")
    if len(case_ids) > 500:
        raise Refused("bulk resolve takes at most 500 cases at a time")
    note = _clean_note(note, required=False)
    done: list[int] = []
    skipped: list[str] = []
    with engine.begin() as conn:
        for case_id in sorted(set(case_ids)):  # one lock order: two bulk resolves never deadlock
            try:
                row = _locked(conn, case_id)
                _not_resolved(row)
                if row.claimed_by not in (None, user.name):
                    raise Refused(f"case {case_id} is claimed by {row.claimed_by}")
                if row.status == t.ESCALATED and not user.is_lead:
                    raise Refused(f"case {case_id} is escalated: a lead takes it")
                if row.claimed_by is None:
                    conn.execute(
                        update(t.cases)
                        .where(t.cases.c.id == case_id, t.cases.c.claimed_by.is_(None))
                        .values(claimed_by=user.name, claimed_at_ms=now_ms())
                    )
                _resolve_locked(conn, row, user, outcome, note, detail=f"bulk resolve of {len(case_ids)}")
                done.append(case_id)
            except Refused as exc:
                skipped.append(str(exc))
    return done, skipped


def escalate(engine: Engine, case_id: int, user: User, note: str) -> None:
    note = _clean_note(note, required=True)
    with engine.begin() as conn:
        row = _locked(conn, case_id)
        _not_resolved(row)
        if row.claimed_by != user.name:
            raise Refused(f"case {case_id}: claim it before you escalate it")
        if row.status == t.ESCALATED:
            raise Refused(f"case {case_id} is escalated already")
        conn.execute(
            update(t.cases)
            .where(t.cases.c.id == case_id, t.cases.c.claimed_by == user.name)
            .values(status=t.ESCALATED, escalated_by=user.name, claimed_by=None, claimed_at_ms=None)
        )
        conn.execute(insert(t.notes).values(case_id=case_id, author=user.name, at_ms=now_ms(), text=note))
        audit_write(
            conn,
            user.name,
            "escalate",
            case_id=case_id,
            before=_state(row),
            after={"status": t.ESCALATED, "claimed_by": None, "resolution": None},
            detail=note[:200],
        )


def add_note(engine: Engine, case_id: int, user: User, text: str) -> None:
    text = _clean_note(text, required=True)
    with engine.begin() as conn:
        _locked(conn, case_id)
        conn.execute(insert(t.notes).values(case_id=case_id, author=user.name, at_ms=now_ms(), text=text))
        audit_write(conn, user.name, "note", case_id=case_id, after={"note": text[:200]}, detail=text[:200])


def _clean_note(text: str, *, required: bool) -> str:
    text = mask_pans(text.replace("\r\n", "\n").strip())
    if required and not text:
        raise Refused("write a note: say why")
    if len(text) > MAX_NOTE:
        raise Refused(f"a note has at most {MAX_NOTE} characters")
    return text


def analysts(conn: Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute(select(t.users.c.name).where(t.users.c.active.is_(True)).order_by("name"))]
