"""Twenty analysts claiming at once: no case is claimed or decided twice (PostgreSQL, the console over HTTP)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine.desk import schema as t
from engine.desk.auth import create_user
from engine.desk.db import open_db
from tests.support.desk import decision_line, login, start_console, stop_console

pytestmark = pytest.mark.slow  # the console as a child process, twenty sign-ins

ANALYSTS = 20
CASES = 60


def test_twenty_analysts_never_decide_a_case_twice(pg_url: str, tmp_path: Path) -> None:
    engine = open_db(pg_url)
    for i in range(ANALYSTS):
        create_user(engine, f"analyst{i:02d}", "analyst", f"password-{i:02d}-long")
    log = tmp_path / "decisions"
    log.mkdir()
    start = int(time.time() * 1000) - CASES * 1000
    (log / "decisions-20261206T100000.000Z-000001.jsonl").write_text(
        "".join(decision_line(f"tx-{i}", decided_at_ms=start + i * 1000) for i in range(CASES))
    )
    console = start_console(pg_url, tmp_path, "--decision-log", str(log), "--engine", "off")
    try:
        clients = [console.client() for _ in range(ANALYSTS)]
        tokens = [login(c, f"analyst{i:02d}", f"password-{i:02d}-long") for i, c in enumerate(clients)]
        deadline = time.monotonic() + 30
        while True:  # the projector has made every case
            with engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(t.cases)).scalar_one() == CASES:
                    break
            assert time.monotonic() < deadline, console.output()
            time.sleep(0.1)

        # Round 1: all twenty claim the same case at the same moment.
        with engine.connect() as conn:
            target = conn.execute(select(t.cases.c.id).where(t.cases.c.transaction_id == "tx-30")).scalar_one()
        barrier = threading.Barrier(ANALYSTS)
        codes: list[int] = [0] * ANALYSTS

        def race(i: int) -> None:
            barrier.wait()
            codes[i] = clients[i].post(f"/cases/{target}/claim", data={"csrf": tokens[i]}).status_code

        run_threads(race)
        assert sorted(codes) == [303] + [409] * (ANALYSTS - 1)
        winner = codes.index(303)
        refused = clients[(winner + 1) % ANALYSTS].post(
            f"/cases/{target}/resolve", data={"csrf": tokens[(winner + 1) % ANALYSTS], "outcome": "fraud"}
        )
        assert refused.status_code == 409 and f"claimed by analyst{winner:02d}" in refused.text

        # Round 2: all twenty work the queue as fast as they can ("claim the next case", then resolve).
        resolved_by: dict[int, list[int]] = {i: [] for i in range(ANALYSTS)}
        barrier = threading.Barrier(ANALYSTS)

        def work(i: int) -> None:
            barrier.wait()
            while True:
                answer = clients[i].post("/queue/next", data={"csrf": tokens[i]})
                assert answer.status_code == 303
                found = re.fullmatch(r"/cases/(\d+)", answer.headers["location"])
                if found is None:
                    return  # the queue is empty
                case_id = int(found.group(1))
                outcome = "fraud" if case_id % 2 else "genuine"
                done = clients[i].post(f"/cases/{case_id}/resolve", data={"csrf": tokens[i], "outcome": outcome})
                assert done.status_code == 303, done.text
                resolved_by[i].append(case_id)

        run_threads(work)
    finally:
        stop_console(console)

    decided = [case_id for ids in resolved_by.values() for case_id in ids]
    assert len(decided) == len(set(decided)) == CASES - 1  # every case but the one claimed in round 1
    assert sum(1 for ids in resolved_by.values() if ids) > 1  # the work was shared
    with engine.connect() as conn:
        rows = conn.execute(select(t.cases.c.id, t.cases.c.status, t.cases.c.resolved_by, t.cases.c.claimed_by)).all()
        resolves = Counter(
            r[0] for r in conn.execute(select(t.audit.c.case_id).where(t.audit.c.action == "resolve")).all()
        )
        claims = Counter(r[0] for r in conn.execute(select(t.audit.c.case_id).where(t.audit.c.action == "claim")).all())
    assert all(n == 1 for n in resolves.values()) and len(resolves) == CASES - 1
    assert all(n == 1 for n in claims.values()) and len(claims) == CASES
    for r in rows:
        if r.id == target:
            assert (r.status, r.claimed_by) == ("open", f"analyst{winner:02d}")
        else:
            assert r.status == "resolved" and r.resolved_by == r.claimed_by
            owner = int(r.resolved_by.removeprefix("analyst"))
            assert r.id in resolved_by[owner]


def run_threads(fn) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(ANALYSTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    if errors:
        raise errors[0]
