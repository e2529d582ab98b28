"""The console's pages: server-rendered HTML (Starlette and Jinja2 templates), plain forms, no script.

Every page needs a signed-in session (`engine.desk.auth`) except the sign-in
page and `/healthz`; the dashboard, the lists and everyone's audit trail
need the lead role. Every POST carries the session's CSRF token and, when
the browser sends an Origin, comes from the console's own origin. An action
that is refused (a case claimed by someone else, a bad value) answers 409
with the page and the reason; one that succeeds redirects (303) to the page
it changed, with a one-time message. Every rendered value passes through
`engine.desk.pan.mask_pans` (Jinja's `finalize`), so no page shows a card
number even if one reached the database. Pages are never cached and may not
be framed (Content-Security-Policy `frame-ancestors 'none'`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from sqlalchemy import Engine, select, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from engine.desk import cases as cs
from engine.desk import schema as t
from engine.desk.audit import audit_write
from engine.desk.auth import (
    AuthError,
    Session,
    authenticate,
    csrf_ok,
    end_session,
    session_of,
    start_session,
    user_by_name,
)
from engine.desk.blocks import Blocks
from engine.desk.dashboard import dashboard
from engine.desk.db import now_ms
from engine.desk.labels import LabelSender
from engine.desk.pan import mask_pans
from engine.desk.projector import Projector
from engine.desk.rules_view import RulesView
from engine.desk.wording import Wording
from engine.iso import CURRENCY_EXPONENTS

log = logging.getLogger("risk_engine.desk")

HERE = Path(__file__).resolve().parent
COOKIE = "desk_session"
LOGIN_COOKIE = "desk_login"
MODEL_CODES = ("MODEL_SCORE_HIGH", "MODEL_SCORE_ELEVATED")
SYSTEM_CODES = ("WINDOWS_UNAVAILABLE", "MODEL_UNAVAILABLE")


@dataclass
class DeskConfig:
    sla_minutes: float = 60.0
    session_idle_s: float = 30 * 60.0
    session_max_s: float = 12 * 3600.0
    secure_cookies: bool = False
    trusted_user_header: str = ""
    trusted_proxies: frozenset[str] = frozenset()

    @property
    def sla_ms(self) -> int:
        return int(self.sla_minutes * 60_000)


@dataclass
class Desk:
    """Everything the pages use."""

    engine: Engine
    rules: RulesView
    labels: LabelSender
    blocks: Blocks
    projector: Projector | None = None
    config: DeskConfig = field(default_factory=DeskConfig)
    _flashes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _flash_lock: threading.Lock = field(default_factory=threading.Lock)

    def flash(self, session: Session, kind: str, message: str) -> None:
        with self._flash_lock:
            self._flashes.setdefault(session.token_hash, []).append((kind, message))
            if len(self._flashes) > 10_000:
                self._flashes.clear()

    def take_flashes(self, session: Session) -> list[tuple[str, str]]:
        with self._flash_lock:
            return self._flashes.pop(session.token_hash, [])


# -- formatting helpers for the templates -------------------------------------------


def fmt_when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_age(ms: int | None) -> str:
    if ms is None:
        return ""
    minutes = max(0, ms) // 60_000
    if minutes < 1:
        return f"{max(0, ms) // 1000} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def fmt_money(amount_minor: int | None, currency: str) -> str:
    if amount_minor is None:
        return ""
    exp = CURRENCY_EXPONENTS.get(currency, 2)
    return f"{amount_minor / 10**exp:,.{exp}f} {currency}"


def _finalize(value: Any) -> Any:
    return mask_pans(value) if isinstance(value, str) else value


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=fmt_when, age=fmt_age, money=fmt_money, urlencode=urlencode)
    return Jinja2Templates(env=env)


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response


class _Page:
    """What a handler gets: the request, its session, the posted form."""

    def __init__(self, request: Request, session: Session, form: dict[str, Any]) -> None:
        self.request = request
        self.session = session
        self.form = form
        self.user = session.user


Handler = Callable[[_Page], Response]


def build_app(desk: Desk) -> Starlette:
    templates = make_templates()
    config = desk.config

    def render(page: _Page | None, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        base = {
            "user": page.user if page else None,
            "csrf": page.session.csrf if page else "",
            "flashes": desk.take_flashes(page.session) if page else [],
            "now": now_ms(),
            "sla_ms": config.sla_ms,
        }
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    def set_session_cookie(response: Response, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(config.session_max_s),
            httponly=True,
            samesite="lax",
            secure=config.secure_cookies,
            path="/",
        )

    def session_for(request: Request) -> tuple[Session | None, str | None]:
        """The request's session, and a new cookie token when a trusted proxy header started one."""
        current = session_of(
            desk.engine, request.cookies.get(COOKIE), idle_s=config.session_idle_s, max_s=config.session_max_s
        )
        header = config.trusted_user_header
        if not header:
            return current, None
        name = request.headers.get(header, "").strip().lower()
        client = request.client.host if request.client else ""
        if not name or client not in config.trusted_proxies:
            return (None, None) if name else (current, None)
        if current is not None and current.user.name == name:
            return current, None
        user = user_by_name(desk.engine, name)
        if user is None:
            return None, None
        token, _ = start_session(desk.engine, user)
        return session_of(desk.engine, token, idle_s=config.session_idle_s, max_s=config.session_max_s), token

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        parts = urlsplit(origin)
        return parts.netloc == request.headers.get("host", "")

    def page(handler: Handler, *, lead: bool = False, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            form: dict[str, Any] = {}
            if post:
                raw = await request.form(max_files=0, max_fields=1100)
                form = {k: (raw.getlist(k) if k == "case" else raw.get(k)) for k in raw}

            def run() -> Response:
                session, new_token = session_for(request)
                if session is None:
                    if post:
                        return Response("your session has ended: sign in again", status_code=401)
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
                ctx = _Page(request, session, form)
                if post and (not same_origin(request) or not csrf_ok(session.csrf, form.get("csrf"))):
                    return Response("refused: this form did not come from the console (CSRF check)", status_code=403)
                if lead and not session.user.is_lead:
                    response = render(ctx, request, "error.html", 403, message="This page is for leads.")
                else:
                    response = handler(ctx)
                if new_token:
                    set_session_cookie(response, new_token)
                return response

            return await run_in_threadpool(run)

        return endpoint

    # -- sign-in ------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request,
            "login.html",
            {
                "user": None,
                "csrf": token,
                "flashes": [],
                "error": "",
                "next": _safe_next(request.query_params.get("next", "/queue")),
                "proxy": bool(config.trusted_user_header),
            },
        )
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=config.secure_cookies)
        return response

    async def login_post(request: Request) -> Response:
        raw = await request.form(max_files=0, max_fields=10)
        form = {k: str(raw.get(k) or "") for k in ("name", "password", "csrf", "next")}
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not same_origin(request) or not csrf_ok(cookie, form["csrf"]):
            return Response("refused: this form did not come from the console (CSRF check)", status_code=403)

        def run() -> Response:
            try:
                user = authenticate(desk.engine, form["name"][:64], form["password"][:1024])
            except AuthError as exc:
                return templates.TemplateResponse(
                    request,
                    "login.html",
                    {
                        "user": None,
                        "csrf": cookie,
                        "flashes": [],
                        "error": str(exc),
                        "next": _safe_next(form["next"]),
                        "proxy": bool(config.trusted_user_header),
                    },
                    status_code=401,
                )
            token, _ = start_session(desk.engine, user)
            with desk.engine.begin() as conn:
                audit_write(conn, user.name, "login", target=user.name)
            response = RedirectResponse(_safe_next(form["next"]), status_code=303)
            set_session_cookie(response, token)
            response.delete_cookie(LOGIN_COOKIE)
            return response

        return await run_in_threadpool(run)

    def logout(p: _Page) -> Response:
        end_session(desk.engine, p.session)
        with desk.engine.begin() as conn:
            audit_write(conn, p.user.name, "logout", target=p.user.name)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # -- the queue ------------------------------------------------------------------
    def filter_choices() -> dict[str, Any]:
        rs = desk.rules.ruleset
        rules = sorted(r.id for r in rs.rules)
        codes = sorted({r.reason_code for r in rs.rules} | set(MODEL_CODES) | set(SYSTEM_CODES))
        with desk.engine.connect() as conn:
            people = cs.analysts(conn)
        return {"rule_choices": rules, "code_choices": codes, "people": people}

    def queue_page(p: _Page, errors: list[str] | None = None, status: int = 200) -> Response:
        f, problems = cs.QueueFilter.parse(dict(p.request.query_params))
        with desk.engine.connect() as conn:
            result = cs.queue(conn, f, p.user)
        return render(
            p,
            p.request,
            "queue.html",
            status,
            f=f,
            result=result,
            errors=problems + (errors or []),
            query=f.query(),
            base_currency=desk.rules.base_currency,
            **filter_choices(),
        )

    def queue_next(p: _Page) -> Response:
        case_id = cs.claim_next(desk.engine, p.user)
        if case_id is None:
            desk.flash(p.session, "info", "No open case is waiting: the queue is empty.")
            return RedirectResponse("/queue", status_code=303)
        desk.flash(p.session, "ok", f"You claimed case {case_id}, the oldest open one.")
        return RedirectResponse(f"/cases/{case_id}", status_code=303)

    def queue_bulk(p: _Page) -> Response:
        ids = []
        for raw in p.form.get("case") or []:
            with contextlib.suppress(ValueError):
                ids.append(int(raw))
        try:
            done, skipped = cs.bulk_resolve(
                desk.engine, ids, p.user, str(p.form.get("outcome") or ""), str(p.form.get("note") or "")
            )
        except cs.Refused as exc:
            return queue_page(p, [str(exc)], 409)
        for case_id in done:
            desk.labels.deliver(case_id)
        desk.flash(p.session, "ok", f"Resolved {len(done)} case(s) as {p.form.get('outcome')}.")
        for why in skipped[:20]:
            desk.flash(p.session, "error", f"Left: {why}")
        back = str(p.form.get("back") or "/queue")
        return RedirectResponse(_safe_next(back), status_code=303)

    # -- a case ---------------------------------------------------------------------
    def case_page(p: _Page, error: str = "", status: int = 200) -> Response:
        try:
            case_id = int(p.request.path_params["case_id"])
        except ValueError:
            return render(p, p.request, "error.html", 404, message="No such case.")
        with desk.engine.connect() as conn:
            view = cs.get_case(conn, case_id)
        if view is None:
            return render(p, p.request, "error.html", 404, message=f"There is no case {case_id}.")
        wording = Wording(desk.rules.ruleset)
        with desk.engine.connect() as conn:
            people = cs.analysts(conn) if p.user.is_lead else []
        return render(
            p,
            p.request,
            "case.html",
            status,
            view=view,
            c=view.case,
            reasons=wording.reasons(view.record),
            contributions=wording.contributions(view.record),
            attributes=sorted((view.record.get("transaction") or {}).get("attributes", {}).items()),
            base_currency=desk.rules.base_currency,
            money_base=wording.money,
            error=error,
            people=people,
            lists=desk.blocks.lists,
        )

    def case_action(p: _Page) -> Response:
        try:
            case_id = int(p.request.path_params["case_id"])
        except ValueError:
            return render(p, p.request, "error.html", 404, message="No such case.")
        action = p.request.path_params["action"]
        form = p.form
        note = str(form.get("note") or "")
        try:
            if action == "claim":
                cs.claim(desk.engine, case_id, p.user)
                message = f"You claimed case {case_id}."
            elif action == "release":
                cs.release(desk.engine, case_id, p.user)
                message = f"Case {case_id} is back in the queue."
            elif action == "resolve":
                outcome = str(form.get("outcome") or "")
                cs.resolve(desk.engine, case_id, p.user, outcome, note)
                state = desk.labels.deliver(case_id)
                message = f"Case {case_id} resolved as {outcome}; " + (
                    "the engine has the label."
                    if state == "sent"
                    else "the label is queued for the engine (it will be retried)."
                    if state == "pending"
                    else "the engine refused the label: see the case."
                )
            elif action == "escalate":
                cs.escalate(desk.engine, case_id, p.user, note)
                message = f"Case {case_id} is escalated to the leads."
            elif action == "note":
                cs.add_note(desk.engine, case_id, p.user, note)
                message = "Note added."
            elif action == "assign":
                cs.assign(desk.engine, case_id, p.user, str(form.get("to") or ""))
                message = f"Case {case_id} assigned to {form.get('to')}."
            elif action == "block":
                kind = str(form.get("kind") or "")
                with desk.engine.connect() as conn:
                    row = conn.execute(
                        select(t.cases.c.card_id, t.cases.c.device_id, t.cases.c.ip).where(t.cases.c.id == case_id)
                    ).first()
                if row is None:
                    raise cs.Refused(f"there is no case {case_id}")
                value = {"card": row.card_id, "device": row.device_id, "ip": row.ip}.get(kind, "")
                if not value:
                    raise cs.Refused(f"this payment has no {kind} to block")
                result = desk.blocks.block(kind, value, p.user, str(form.get("reason") or ""), case_id)
                message = f"{value} added to {result.list_name}. " + (
                    f"{result.engine_reload[:1].upper()}{result.engine_reload[1:]}."
                    if result.engine_reload
                    else "The engine reloads it within seconds."
                )
            else:
                return render(p, p.request, "error.html", 404, message="No such action.")
        except cs.Refused as exc:
            return case_page(p, str(exc), 409)
        desk.flash(p.session, "ok", message)
        return RedirectResponse(f"/cases/{case_id}", status_code=303)

    # -- leads ------------------------------------------------------------------------
    def dashboard_page(p: _Page) -> Response:
        with desk.engine.connect() as conn:
            data = dashboard(conn, config.sla_ms)
        return render(
            p,
            p.request,
            "dashboard.html",
            d=data,
            projector=desk.projector.status() if desk.projector else None,
        )

    def audit_page(p: _Page) -> Response:
        q = p.request.query_params
        stmt = select(t.audit).order_by(t.audit.c.at_ms.desc(), t.audit.c.id.desc()).limit(200)
        actor = q.get("actor", "").strip()[:64]
        if not p.user.is_lead:
            actor = p.user.name  # analysts see their own trail
        if actor:
            stmt = stmt.where(t.audit.c.actor == actor)
        if q.get("action"):
            stmt = stmt.where(t.audit.c.action == q.get("action", "")[:32])
        if q.get("case", "").isdigit():
            stmt = stmt.where(t.audit.c.case_id == int(q.get("case", "0")))
        with desk.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return render(p, p.request, "audit.html", rows=rows, actor=actor, q=dict(q))

    def lists_page(p: _Page, error: str = "", status: int = 200) -> Response:
        return render(p, p.request, "lists.html", status, entries=desk.blocks.entries(), error=error)

    def unblock(p: _Page) -> Response:
        try:
            result = desk.blocks.unblock(
                str(p.form.get("list") or ""), str(p.form.get("value") or ""), p.user, str(p.form.get("reason") or "")
            )
        except cs.Refused as exc:
            return lists_page(p, str(exc), 409)
        desk.flash(p.session, "ok", f"{result.value} removed from {result.list_name}. {result.engine_reload}")
        return RedirectResponse("/lists", status_code=303)

    async def healthz(request: Request) -> Response:
        def run() -> Response:
            try:
                with desk.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                ok = True
            except Exception:  # noqa: BLE001 - reported, not raised
                ok = False
            projector = None
            if desk.projector is not None:  # counters only: no paths or errors for unauthenticated callers
                status = desk.projector.status()
                projector = {k: status[k] for k in ("records", "cases", "bad_lines", "errors", "last_pass_ms")}
            body = {"ok": ok, "projector": projector}
            return JSONResponse(body, status_code=200 if ok else 503)

        return await run_in_threadpool(run)

    async def root(request: Request) -> Response:
        return RedirectResponse("/queue", status_code=303)

    routes = [
        Route("/", root),
        Route("/healthz", healthz),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", page(logout, post=True), methods=["POST"]),
        Route("/queue", page(queue_page), methods=["GET"]),
        Route("/queue/next", page(queue_next, post=True), methods=["POST"]),
        Route("/queue/bulk", page(queue_bulk, post=True), methods=["POST"]),
        Route("/cases/{case_id}", page(case_page), methods=["GET"]),
        Route("/cases/{case_id}/{action}", page(case_action, post=True), methods=["POST"]),
        Route("/dashboard", page(dashboard_page, lead=True), methods=["GET"]),
        Route("/audit", page(audit_page), methods=["GET"]),
        Route("/lists", page(lists_page, lead=True), methods=["GET"]),
        Route("/lists/unblock", page(unblock, lead=True, post=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Headers)])


def _safe_next(target: str) -> str:
    """Only local paths: a sign-in link must not send people elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/queue"
    return target
