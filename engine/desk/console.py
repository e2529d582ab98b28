"""`risk-engine console`: the review desk's web server, and `risk-engine console users ...` for accounts.

    risk-engine console [--db URL] [--port N] [--decision-log DIR] [--rules DIR] [--engine HOST:PORT] ...
    risk-engine console users add NAME --role analyst|lead [--password-stdin | --no-password] [--db URL]
    risk-engine console users list|disable NAME|enable NAME|passwd NAME [--db URL]
    risk-engine console migrate [--db URL]

The server migrates the database, starts the projector (decision log ->
cases) and the label sender (resolutions -> Feedback), and serves the pages
with uvicorn. Only argparse is imported until a command runs, so the other
`risk-engine` commands do not pay for the web stack.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import secrets
import sys
from pathlib import Path

from engine.config import ROOT

log = logging.getLogger("risk_engine.desk")
NAME = "risk-engine console"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console", help="the review desk: cases from the decision log, an analyst console in the browser"
    )
    p.add_argument(
        "--db", default="sqlite:///desk.db", help="database URL: postgresql://user@host/db or sqlite:///file"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--decision-log",
        default="decisions",
        help="the engine's decision log folder to make cases from (default decisions/), or 'off'",
    )
    p.add_argument("--rules", default=str(ROOT / "rules"), help="the engine's rules folder (default rules/)")
    p.add_argument(
        "--engine",
        default="127.0.0.1:50051",
        help="the engine's scoring port, for labels (default 127.0.0.1:50051), or 'off'",
    )
    p.add_argument("--engine-ca", help="CA bundle (PEM) when the engine's port is on TLS")
    p.add_argument("--engine-cert", help="client certificate (PEM) when the engine requires mutual TLS")
    p.add_argument("--engine-key", help="client key (PEM) for --engine-cert")
    p.add_argument("--engine-admin", help="the engine's admin port (HOST:PORT): reload it right after a list changes")
    p.add_argument(
        "--engine-admin-token-file",
        help="the engine's admin token (its --admin-token-file; by default admin.token in its decision log folder,"
        " which is tried when this is not given)",
    )
    p.add_argument("--sla-minutes", type=float, default=60.0, help="a case waiting longer is over its SLA (default 60)")
    p.add_argument(
        "--sample-allows", type=float, default=0.0, help="share of allows that become cases, 0-1 (default 0)"
    )
    p.add_argument(
        "--sample-denies", type=float, default=0.0, help="share of denies that become cases, 0-1 (default 0)"
    )
    p.add_argument("--history-days", type=float, default=30.0, help="days of decisions kept for history (default 30)")
    p.add_argument("--session-idle-minutes", type=float, default=30.0, help="sign out after this idle time (30)")
    p.add_argument("--session-max-hours", type=float, default=12.0, help="sign out this long after sign-in (12)")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")
    p.add_argument(
        "--trusted-user-header", default="", help="single sign-on: the header naming the user, e.g. X-Forwarded-User"
    )
    p.add_argument(
        "--trusted-proxy", action="append", default=[], help="address of the proxy that sets that header (repeatable)"
    )
    p.add_argument("--card-list", default="blocked_cards", help="list that 'block this card' adds to")
    p.add_argument("--device-list", default="blocked_devices", help="list that 'block this device' adds to")
    p.add_argument("--ip-list", default="blocked_ip_ranges", help="list that 'block this IP' adds to")
    p.add_argument(
        "--bootstrap-user",
        metavar="NAME",
        help="when the database has no account yet, create NAME as a lead and print its password once",
    )
    p.set_defaults(func=serve_command)

    commands = p.add_subparsers(dest="console_command")
    m = commands.add_parser("migrate", help="bring the database's schema to the newest revision and exit")
    m.add_argument("--db", default=argparse.SUPPRESS, help="database URL")
    m.set_defaults(func=migrate_command)
    users = commands.add_parser("users", help="accounts: add, list, disable, enable, passwd").add_subparsers(
        dest="users_command", required=True
    )
    a = users.add_parser("add", help="add an account")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=("analyst", "lead"))
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.add_argument("--no-password", action="store_true", help="sign-in only through the trusted proxy header")
    a.add_argument("--db", default=argparse.SUPPRESS, help="database URL")
    a.set_defaults(func=users_command)
    for verb, text in (("list", "list accounts"), ("disable", "disable an account"), ("enable", "enable it again")):
        u = users.add_parser(verb, help=text)
        if verb != "list":
            u.add_argument("name")
        u.add_argument("--db", default=argparse.SUPPRESS, help="database URL")
        u.set_defaults(func=users_command)
    pw = users.add_parser("passwd", help="set a new password (signs the account out everywhere)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    pw.add_argument("--db", default=argparse.SUPPRESS, help="database URL")
    pw.set_defaults(func=users_command)


def _fail(message: str) -> int:
    print(f"{NAME}: {message}", file=sys.stderr)
    return 2


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise ValueError("give the password with --password-stdin (standard input is not a terminal)")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def migrate_command(args: argparse.Namespace) -> int:
    from engine.desk.db import DatabaseError, current_revision, open_db, redacted

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        engine = open_db(args.db)
    except DatabaseError as exc:
        return _fail(str(exc))
    print(f"{redacted(args.db)}: schema at revision {current_revision(engine)}")
    engine.dispose()
    return 0


def users_command(args: argparse.Namespace) -> int:
    from engine.desk import auth
    from engine.desk.db import DatabaseError, open_db

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        engine = open_db(args.db, pool_size=1)
    except DatabaseError as exc:
        return _fail(str(exc))
    try:
        verb = args.users_command
        if verb == "add":
            password = None if args.no_password else _read_password(args)
            auth.create_user(engine, args.name, args.role, password)
            print(f"added {args.name} ({args.role})")
        elif verb == "list":
            for name, role, active, has_password in auth.list_users(engine):
                state = "active" if active else "disabled"
                print(f"{name}\t{role}\t{state}\t{'password' if has_password else 'proxy only'}")
        elif verb in ("disable", "enable"):
            auth.set_active(engine, args.name, verb == "enable")
            print(f"{args.name} {verb}d")
        elif verb == "passwd":
            auth.set_password(engine, args.name, _read_password(args))
            print(f"new password set for {args.name}; their sessions are ended")
    except (auth.AuthError, ValueError) as exc:
        return _fail(str(exc))
    finally:
        engine.dispose()
    return 0


def _target(value: str, flag: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} {value!r}: expected HOST:PORT")
    return value


def serve_command(args: argparse.Namespace) -> int:
    from engine.desk.db import DatabaseError, normalise_url

    try:
        normalise_url(args.db)  # a wrong URL is told before anything slow is loaded
    except DatabaseError as exc:
        return _fail(str(exc))

    import uvicorn

    from engine.desk import auth
    from engine.desk.blocks import Blocks
    from engine.desk.db import DatabaseError, open_db, redacted
    from engine.desk.labels import EngineChannel, LabelSender
    from engine.desk.projector import Projector
    from engine.desk.rules_view import RulesView
    from engine.desk.web import Desk, DeskConfig, build_app
    from engine.rules.errors import RuleSetInvalid

    problems = []
    if not 0 <= args.port < 65536:
        problems.append(f"--port {args.port}: not a port number")
    for flag, value in (("--sample-allows", args.sample_allows), ("--sample-denies", args.sample_denies)):
        if not 0 <= value <= 1:
            problems.append(f"{flag} {value}: a share from 0 to 1")
    for flag, value in (
        ("--sla-minutes", args.sla_minutes),
        ("--history-days", args.history_days),
        ("--session-idle-minutes", args.session_idle_minutes),
        ("--session-max-hours", args.session_max_hours),
    ):
        if not value > 0:
            problems.append(f"{flag} {value}: must be positive")
    channel = None
    try:
        if args.engine != "off":
            read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
            channel = EngineChannel(
                _target(args.engine, "--engine"), read(args.engine_ca), read(args.engine_cert), read(args.engine_key)
            )
        admin = _target(args.engine_admin, "--engine-admin") if args.engine_admin else None
        admin_token = ""
        if admin is not None:
            token_file = args.engine_admin_token_file
            if token_file is None and args.decision_log != "off":
                token_file = str(Path(args.decision_log) / "admin.token")  # where the engine generates it
            if token_file is not None and (args.engine_admin_token_file or Path(token_file).is_file()):
                admin_token = Path(token_file).read_text().strip()
    except (ValueError, OSError) as exc:
        problems.append(str(exc))
        admin, admin_token = None, ""
    rules_dir = Path(args.rules)
    if not rules_dir.is_dir():
        problems.append(f"--rules {rules_dir}: no such folder")
    log_dir = None if args.decision_log == "off" else Path(args.decision_log)
    if log_dir is not None and log_dir.exists() and not log_dir.is_dir():
        problems.append(f"--decision-log {log_dir}: not a folder")
    if problems:
        return _fail("; ".join(problems))
    try:
        rules = RulesView(rules_dir)
    except RuleSetInvalid as exc:
        return _fail(f"--rules {rules_dir}: the rule set is invalid:\n{exc}")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        engine = open_db(args.db)
    except DatabaseError as exc:
        return _fail(str(exc))

    if args.bootstrap_user and auth.user_count(engine) == 0:
        password = secrets.token_urlsafe(12)
        try:
            auth.create_user(engine, args.bootstrap_user, "lead", password)
        except auth.AuthError as exc:
            return _fail(f"--bootstrap-user: {exc}")
        print(
            f"{NAME}: first account: name {args.bootstrap_user!r}, password {password!r} (shown once; change it with "
            f"`risk-engine console users passwd {args.bootstrap_user}`)",
            file=sys.stderr,
        )

    projector = None
    if log_dir is not None:
        projector = Projector(
            engine,
            log_dir,
            rules,
            sample_allows=args.sample_allows,
            sample_denies=args.sample_denies,
            history_days=args.history_days,
        )
        projector.start()
    labels = LabelSender(engine, channel)
    labels.start()
    blocks = Blocks(
        engine,
        rules,
        {"card": args.card_list, "device": args.device_list, "ip": args.ip_list},
        admin_target=admin,
        admin_token=admin_token,
    )
    config = DeskConfig(
        sla_minutes=args.sla_minutes,
        session_idle_s=args.session_idle_minutes * 60,
        session_max_s=args.session_max_hours * 3600,
        secure_cookies=args.secure_cookies,
        trusted_user_header=args.trusted_user_header,
        trusted_proxies=frozenset(args.trusted_proxy),
    )
    app = build_app(Desk(engine, rules, labels, blocks, projector, config))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="off"))
    print(
        f"{NAME}: serving on http://{args.host}:{args.port} db={redacted(args.db)} "
        f"decision_log={log_dir or 'off'} rules={rules_dir} engine={args.engine} admin={admin or 'off'}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    finally:
        if projector is not None:
            projector.stop()
        labels.stop()
        engine.dispose()
    return 0 if server.started else _fail(f"could not listen on {args.host}:{args.port}")
