"""The audit log: every action at the desk, with who, what, when, and the fields before and after.

Entries are written in the same database transaction as the action they
record, so there is never an action without its entry or an entry without
its action. Actions: sign-ins (`login`, `login_failed`, `login_refused`,
`logout`), case actions (`claim`, `release`, `assign`, `resolve`,
`escalate`, `note`), label delivery (`label_sent`, `label_failed`, by
`desk`), lists (`block`, `unblock`) and accounts (`user_add`, ...).
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, insert

from engine.desk import schema as t
from engine.desk.db import now_ms


def audit_write(
    conn: Connection,
    actor: str,
    action: str,
    *,
    case_id: int | None = None,
    target: str = "",
    before: dict[str, object] | None = None,
    after: dict[str, object] | None = None,
    detail: str = "",
) -> None:
    """One audit entry, in the caller's transaction: it is written exactly when the action is."""
    conn.execute(
        insert(t.audit).values(
            at_ms=now_ms(),
            actor=actor,
            action=action,
            case_id=case_id,
            target=target[:256],
            before=None if before is None else json.dumps(before, sort_keys=True, default=str),
            after=None if after is None else json.dumps(after, sort_keys=True, default=str),
            detail=detail,
        )
    )
