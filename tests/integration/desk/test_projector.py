"""The projector: decision log lines become cases, once, whatever happens to the files and the process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine.desk import schema as t
from engine.desk.db import open_db
from engine.desk.projector import CHUNK_BYTES, Projector, sampled
from engine.desk.rules_view import RulesView
from tests.support import RULES
from tests.support.desk import decision_line


@pytest.fixture(scope="module")
def rules_view() -> RulesView:
    return RulesView(RULES)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'desk.db'}"
    return str(request.getfixturevalue("pg_url"))


def count(engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_reviews_become_cases_once_across_torn_lines_restarts_and_workers(
    db_url: str, tmp_path: Path, rules_view: RulesView
) -> None:
    engine = open_db(db_url)
    log = tmp_path / "decisions"
    (log / "worker-1").mkdir(parents=True)
    first = log / "decisions-20261206T100000.000Z-000001.jsonl"
    version = rules_view.ruleset.version
    first.write_text(
        decision_line("r-1", ruleset_version=version)
        + decision_line("a-1", "allow", reasons=[])
        + "not json at all\n"
        + json.dumps({"v": 2, "other": "format"})
        + "\n"
        + decision_line("d-1", "deny")
    )
    torn = decision_line("r-2", card_id="4111 1111 1111 1111", attributes={"note": "pan 5500005555555559 here"})
    with open(first, "a") as f:
        f.write(torn[:40])  # a line the engine is still writing
    (log / "worker-1" / "decisions-20261206T100000.000Z-000001.jsonl").write_text(
        decision_line("r-3", ruleset_version="2000.01.01-1")
    )

    projector = Projector(engine, log, rules_view)
    projector.run_once()
    with engine.connect() as conn:
        ids = sorted(r[0] for r in conn.execute(select(t.cases.c.transaction_id)))
    assert ids == ["r-1", "r-3"]  # reviews only; the torn line waits
    assert count(engine, t.decisions) == 4  # r-1, a-1, d-1, r-3: every decision, for history
    assert projector.stats.bad_lines == 2

    with open(first, "a") as f:
        f.write(torn[40:])  # the engine finishes the line
    projector.run_once()
    projector.run_once()  # nothing new: nothing twice
    restarted = Projector(engine, log, rules_view)  # a new process reads the offsets from the database
    restarted.run_once()
    with engine.connect() as conn:
        rows = conn.execute(select(t.cases.c.transaction_id, t.cases.c.card_id, t.cases.c.record)).all()
        hours = conn.execute(select(func.sum(t.decision_hours.c.n))).scalar_one()
        hits = conn.execute(select(t.rule_hits.c.rule_id, t.rule_hits.c.n)).all()
    assert sorted(r.transaction_id for r in rows) == ["r-1", "r-2", "r-3"]
    assert hours == 5  # each decision counted once
    assert hits == [("very_large_amount", 4)]  # r-1, d-1, r-2, r-3 (the allow had no reason)
    r2 = next(r for r in rows if r.transaction_id == "r-2")
    assert r2.card_id == "•••• 1111"  # no card number is stored
    for number in ("4111 1111 1111 1111", "4111111111111111", "5500005555555559"):
        assert number not in r2.record
    assert "•••• 5559" in r2.record
    with engine.connect() as conn:
        case = conn.execute(select(t.cases).where(t.cases.c.transaction_id == "r-1")).one()
        reasons = conn.execute(select(t.case_reasons.c.code, t.case_reasons.c.rule_id)).all()
    assert (case.ip_country, case.amount_base, case.currency, case.status) == ("GB", 15000.0, "EUR", "open")
    assert case.ruleset_version == version and case.ruleset_digest == rules_view.ruleset.digest
    with engine.connect() as conn:
        older = conn.execute(
            select(t.cases.c.ruleset_version, t.cases.c.ruleset_digest).where(t.cases.c.transaction_id == "r-3")
        ).one()
    assert tuple(older) == ("2000.01.01-1", "")  # decided by another version: no digest is guessed
    assert ("AMOUNT_VERY_LARGE", "very_large_amount") in reasons


def test_samples_of_allows_and_denies_are_stable(db_url: str, tmp_path: Path, rules_view: RulesView) -> None:
    engine = open_db(db_url)
    log = tmp_path / "decisions"
    log.mkdir()
    lines = [decision_line(f"a-{i}", "allow", reasons=[]) for i in range(200)]
    lines += [decision_line(f"d-{i}", "deny") for i in range(200)]
    (log / "decisions-20261206T100000.000Z-000001.jsonl").write_text("".join(lines))
    Projector(engine, log, rules_view, sample_allows=0.1, sample_denies=0.5).run_once()
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(t.cases.c.kind, func.count()).group_by(t.cases.c.kind)).all())
    expected_allows = sum(sampled(f"a-{i}", 0.1) for i in range(200))
    expected_denies = sum(sampled(f"d-{i}", 0.5) for i in range(200))
    assert kinds == {t.ALLOW_SAMPLE: expected_allows, t.DENY_SAMPLE: expected_denies}
    assert 5 <= expected_allows <= 40 and 70 <= expected_denies <= 130  # the hash spreads ids
    assert not sampled("x", 0.0) and sampled("x", 1.0)


def test_retention_drops_old_history_and_offsets_of_deleted_files(tmp_path: Path, rules_view: RulesView) -> None:
    engine = open_db(f"sqlite:///{tmp_path / 'desk.db'}")
    log = tmp_path / "decisions"
    log.mkdir()
    old = log / "decisions-20261101T100000.000Z-000001.jsonl"
    old.write_text(decision_line("old", "allow", decided_at_ms=1_000_000_000_000, reasons=[]) + decision_line("new"))
    projector = Projector(engine, log, rules_view, history_days=30)
    projector.run_once()
    old.unlink()  # the engine's retention deleted the file
    assert projector.prune() == 1
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(select(t.decisions.c.transaction_id))] == ["new"]
        assert conn.execute(select(func.count()).select_from(t.log_offsets)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(t.cases)).scalar_one() == 1  # cases are kept


def test_a_file_of_garbage_without_line_ends_does_not_stop_the_projector(tmp_path: Path, rules_view: RulesView) -> None:
    engine = open_db(f"sqlite:///{tmp_path / 'desk.db'}")
    log = tmp_path / "decisions"
    log.mkdir()
    (log / "decisions-20261206T100000.000Z-000001.jsonl").write_bytes(
        b"x" * (CHUNK_BYTES + 10) + b"\n" + decision_line("after").encode()
    )
    projector = Projector(engine, log, rules_view)
    projector.run_once()
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(select(t.cases.c.transaction_id))] == ["after"]
    assert projector.stats.bad_lines == 2  # the chunk without a line end, then the rest of that line
