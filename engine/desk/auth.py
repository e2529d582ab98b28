"""People at the desk: accounts, roles, sessions and CSRF tokens.

- Accounts have a role, `analyst` or `lead`, and an Argon2id password hash
  (argon2-cffi's defaults), or no password at all when people sign in
  through a single sign-on proxy that passes a trusted header (the console's
  `--trusted-user-header`, honoured only from `--trusted-proxy` addresses;
  the account must still exist here, it gives the role).
- A session is a random 256-bit token in an HttpOnly, SameSite=Lax cookie;
  the database keeps only its SHA-256, with a CSRF token of its own that
  every form posts back. A session ends after `idle_s` without a request,
  `max_s` after it began, at sign-out, or when the account is disabled.
- Five failed sign-ins for a name within 15 minutes refuse the next ones
  for that name until the window passes (counted from the audit log).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, insert, select, update

from engine.desk import schema as t
from engine.desk.audit import audit_write
from engine.desk.db import now_ms

_HASHER = PasswordHasher()
_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against when the name is unknown, so both cases take the same time (made once)."""
    if not _DUMMY:
        _DUMMY.append(_HASHER.hash(secrets.token_hex(16)))
    return _DUMMY[0]


NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD = 10
MAX_FAILED = 5
FAILED_WINDOW_MS = 15 * 60_000


class AuthError(ValueError):
    pass


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    @property
    def is_lead(self) -> bool:
        return self.role == t.LEAD


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    token_hash: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AuthError(f"user name {name!r}: lower-case letters, digits, '.', '_' and '-', at most 64, e.g. 'alice'")
    return name


def create_user(engine: Engine, name: str, role: str, password: str | None) -> User:
    """Add an account (password None: sign-in only through the trusted proxy header)."""
    check_name(name)
    if role not in (t.ANALYST, t.LEAD):
        raise AuthError(f"role {role!r}: must be '{t.ANALYST}' or '{t.LEAD}'")
    if password is not None and len(password) < MIN_PASSWORD:
        raise AuthError(f"the password must have at least {MIN_PASSWORD} characters")
    with engine.begin() as conn:
        if conn.execute(select(t.users.c.id).where(t.users.c.name == name)).first() is not None:
            raise AuthError(f"user {name!r} exists already")
        uid = conn.execute(
            insert(t.users).values(
                name=name,
                role=role,
                password_hash=_HASHER.hash(password) if password is not None else None,
                active=True,
                created_at_ms=now_ms(),
            )
        ).inserted_primary_key
        audit_write(conn, "console", "user_add", target=name, after={"role": role, "password": password is not None})
    assert uid is not None
    return User(int(uid[0]), name, role)


def set_password(engine: Engine, name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"the password must have at least {MIN_PASSWORD} characters")
    with engine.begin() as conn:
        done = conn.execute(
            update(t.users).where(t.users.c.name == name).values(password_hash=_HASHER.hash(password))
        ).rowcount
        if not done:
            raise AuthError(f"no user {name!r}")
        uid = conn.execute(select(t.users.c.id).where(t.users.c.name == name)).scalar_one()
        conn.execute(delete(t.sessions).where(t.sessions.c.user_id == uid))
        audit_write(conn, "console", "user_password", target=name)


def set_active(engine: Engine, name: str, active: bool) -> None:
    with engine.begin() as conn:
        done = conn.execute(update(t.users).where(t.users.c.name == name).values(active=active)).rowcount
        if not done:
            raise AuthError(f"no user {name!r}")
        if not active:
            uid = conn.execute(select(t.users.c.id).where(t.users.c.name == name)).scalar_one()
            conn.execute(delete(t.sessions).where(t.sessions.c.user_id == uid))
        audit_write(conn, "console", "user_enable" if active else "user_disable", target=name)


def list_users(engine: Engine) -> list[tuple[str, str, bool, bool]]:
    """(name, role, active, has a password) of every account."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.users.c.name, t.users.c.role, t.users.c.active, t.users.c.password_hash).order_by(t.users.c.name)
        ).all()
    return [(r.name, r.role, bool(r.active), r.password_hash is not None) for r in rows]


def user_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.users)).scalar_one())


def authenticate(engine: Engine, name: str, password: str) -> User:
    """The account if the password is right; AuthError (without saying which part was wrong) otherwise."""
    name = name.strip().lower()
    refusal = ""
    with engine.begin() as conn:  # the audit entry of a refusal is committed before the refusal is raised
        since = now_ms() - FAILED_WINDOW_MS
        failed = conn.execute(
            select(func.count())
            .select_from(t.audit)
            .where(t.audit.c.action == "login_failed", t.audit.c.target == name[:256], t.audit.c.at_ms >= since)
        ).scalar_one()
        row = conn.execute(
            select(t.users.c.id, t.users.c.name, t.users.c.role, t.users.c.password_hash, t.users.c.active).where(
                t.users.c.name == name
            )
        ).first()
        if failed >= MAX_FAILED:
            audit_write(conn, name[:64] or "?", "login_refused", target=name[:256], detail="too many failed sign-ins")
            refusal = "too many failed sign-ins for this name: try again in 15 minutes"
        else:
            ok: bool = False
            try:
                stored = row.password_hash if row is not None and row.password_hash else _dummy_hash()
                ok = _HASHER.verify(stored, password)
            except (VerificationError, InvalidHashError):
                ok = False
            if row is None or not row.active or not row.password_hash or not ok:
                audit_write(conn, name[:64] or "?", "login_failed", target=name[:256])
                refusal = "wrong name or password"
            elif _HASHER.check_needs_rehash(row.password_hash):
                conn.execute(update(t.users).where(t.users.c.id == row.id).values(password_hash=_HASHER.hash(password)))
    if refusal or row is None:
        raise AuthError(refusal or "wrong name or password")
    return User(int(row.id), str(row.name), str(row.role))


def user_by_name(engine: Engine, name: str) -> User | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(t.users.c.id, t.users.c.name, t.users.c.role).where(
                t.users.c.name == name, t.users.c.active.is_(True)
            )
        ).first()
    return None if row is None else User(int(row.id), str(row.name), str(row.role))


def start_session(engine: Engine, user: User) -> tuple[str, str]:
    """(cookie token, CSRF token) of a new session."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = now_ms()
    with engine.begin() as conn:
        conn.execute(
            insert(t.sessions).values(
                token_hash=_hash_token(token), user_id=user.id, csrf=csrf, created_at_ms=now, last_seen_ms=now
            )
        )
    return token, csrf


def session_of(engine: Engine, token: str | None, *, idle_s: float, max_s: float) -> Session | None:
    """The live session of a cookie (its last-seen time moved on), or None (expired sessions are deleted)."""
    if not token or len(token) > 128:
        return None
    h = _hash_token(token)
    now = now_ms()
    with engine.begin() as conn:
        row = conn.execute(
            select(
                t.sessions.c.csrf,
                t.sessions.c.created_at_ms,
                t.sessions.c.last_seen_ms,
                t.users.c.id,
                t.users.c.name,
                t.users.c.role,
                t.users.c.active,
            )
            .join(t.users, t.users.c.id == t.sessions.c.user_id)
            .where(t.sessions.c.token_hash == h)
        ).first()
        if row is None:
            return None
        if not row.active or now - row.last_seen_ms > idle_s * 1000 or now - row.created_at_ms > max_s * 1000:
            conn.execute(delete(t.sessions).where(t.sessions.c.token_hash == h))
            return None
        if now - row.last_seen_ms > 10_000:  # a write at most every 10 s per session
            conn.execute(update(t.sessions).where(t.sessions.c.token_hash == h).values(last_seen_ms=now))
    return Session(User(int(row.id), str(row.name), str(row.role)), str(row.csrf), h)


def end_session(engine: Engine, session: Session) -> None:
    with engine.begin() as conn:
        conn.execute(delete(t.sessions).where(t.sessions.c.token_hash == session.token_hash))


def csrf_ok(expected: str, submitted: object) -> bool:
    """Whether a posted CSRF token is the session's (compared in constant time)."""
    return bool(expected) and isinstance(submitted, str) and hmac.compare_digest(expected, submitted)
