"""`risk-engine console`: migrations match the tables, accounts from the command line, bad flags refused."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from engine.cli import main
from engine.desk.auth import authenticate
from engine.desk.db import current_revision, make_engine, open_db
from engine.desk.schema import metadata


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """`risk-engine console ARGS` through the command's own entry point (engine.cli.main), in this process."""

    def run(*args: str, stdin: str = "") -> Ran:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["console", *args])
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def test_the_command_runs_as_its_own_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "console", "migrate", "--db", f"sqlite:///{tmp_path / 'desk.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "schema at revision 0001" in done.stdout, done.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_tables_the_code_uses(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, run: Callable[..., Ran]
) -> None:
    url = f"sqlite:///{tmp_path / 'desk.db'}" if kind == "sqlite" else str(request.getfixturevalue("pg_url"))
    done = run("migrate", "--db", url)
    assert done.returncode == 0, done.stderr
    assert "schema at revision 0001" in done.stdout
    engine = make_engine(url)
    # Indexes on expressions ("score DESC") do not compare through SQLite's reflection: checked by name.
    by_expression = {"cases_active_score", "cases_active_amount"}
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name in by_expression)] == []
        assert by_expression <= {ix["name"] for ix in inspect(conn).get_indexes("cases")}
    assert current_revision(engine) == "0001"
    open_db(url)  # a second migration is a no-op
    engine.dispose()


def test_accounts_from_the_command_line(tmp_path: Path, run: Callable[..., Ran]) -> None:
    db = f"sqlite:///{tmp_path / 'desk.db'}"
    added = run("users", "add", "alice", "--role", "lead", "--password-stdin", "--db", db, stdin="a-long-password\n")
    assert added.returncode == 0, added.stderr
    assert (
        run("users", "add", "alice", "--role", "lead", "--password-stdin", "--db", db, stdin="x" * 12).returncode == 2
    )
    short = run("users", "add", "bob", "--role", "analyst", "--password-stdin", "--db", db, stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    bad_name = run("users", "add", "Bob Smith", "--role", "analyst", "--no-password", "--db", db)
    assert bad_name.returncode == 2 and "user name" in bad_name.stderr
    assert run("users", "add", "sso-user", "--role", "analyst", "--no-password", "--db", db).returncode == 0
    listed = run("users", "list", "--db", db)
    assert listed.stdout.splitlines() == ["alice\tlead\tactive\tpassword", "sso-user\tanalyst\tactive\tproxy only"]
    engine = open_db(db)
    assert authenticate(engine, "alice", "a-long-password").role == "lead"
    assert run("users", "disable", "alice", "--db", db).returncode == 0
    with pytest.raises(ValueError, match="wrong name or password"):
        authenticate(engine, "alice", "a-long-password")
    assert run("users", "passwd", "nobody", "--password-stdin", "--db", db, stdin="another-password\n").returncode == 2


def test_bad_flags_are_refused_with_status_2(tmp_path: Path, run: Callable[..., Ran]) -> None:
    for args, words in (
        (["--db", "mysql://x@localhost/db"], "only postgresql:// and sqlite:///"),
        (["--db", "not a url"], "is not a database URL"),
        (["--db", "postgresql://postgres@127.0.0.1:1/none"], "cannot connect"),
        (["--db", f"sqlite:///{tmp_path}/d.db", "--sample-allows", "2"], "a share from 0 to 1"),
        (["--db", f"sqlite:///{tmp_path}/d.db", "--engine", "nohostport"], "expected HOST:PORT"),
        (["--db", f"sqlite:///{tmp_path}/d.db", "--rules", str(tmp_path / "missing")], "no such folder"),
    ):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr, done.stderr
