"""The console's pages and rules over HTTP (the Starlette app in process, PostgreSQL): sign-in, CSRF, sessions,
roles, the queue's filters, case actions and their audit, blocks, and no card number on any page."""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

with warnings.catch_warnings():  # Starlette suggests httpx2 for its test client; httpx is what is pinned
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from engine.desk import schema as t
from engine.desk.auth import User, create_user
from engine.desk.blocks import Blocks
from engine.desk.db import open_db
from engine.desk.labels import LabelSender
from engine.desk.projector import Projector
from engine.desk.rules_view import RulesView
from engine.desk.web import Desk, DeskConfig, build_app
from tests.support.desk import decision_line

PAN = "4111111111111111"
RULE_GEO = {
    "code": "GEO_MISMATCH",
    "source": "rule",
    "rule_id": "ip_country_mismatch_large_amount",
    "action": "review",
    "message": "The IP address is in another country than the card, on 300 EUR or more.",
}


@dataclass
class Site:
    engine: Engine
    desk: Desk
    ids: dict[str, int]  # transaction id -> case id

    def client(self, name: str | None = None, **headers: str) -> TestClient:
        c = TestClient(build_app(self.desk), follow_redirects=False, headers=headers)
        if name:
            sign_in(c, name, f"{name}-password")
        return c


def sign_in(c: TestClient, name: str, password: str) -> TestClient:
    token = csrf(c.get("/login").text)
    answer = c.post("/login", data={"name": name, "password": password, "csrf": token, "next": "/queue"})
    assert answer.status_code == 303, answer.text
    return c


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def post(c: TestClient, path: str, **data: str):  # type: ignore[no-untyped-def]
    return c.post(path, data={"csrf": csrf(c.get("/queue").text), **data})


def shown_case_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<a href="/cases/(\d+)">#', html)]


@pytest.fixture
def site(pg_url: str, desk_rules: Path, tmp_path: Path) -> Iterator[Site]:
    engine = open_db(pg_url)
    for name, role in (("alice", "analyst"), ("bob", "analyst"), ("lena", "lead")):
        create_user(engine, name, role, f"{name}-password")
    log = tmp_path / "decisions"
    log.mkdir()
    now = int(time.time() * 1000)
    lines = [
        decision_line("old-big", decided_at_ms=now - 90 * 60_000, amount_minor=2_000_000, score=0.2),
        decision_line("geo", decided_at_ms=now - 5 * 60_000, amount_minor=50_000, reasons=[RULE_GEO], score=0.9),
        decision_line("usd", decided_at_ms=now - 60_000, amount_minor=1_200_000, currency="USD", score=0.5),
        decision_line(
            "pan",
            decided_at_ms=now - 30_000,
            card_id=PAN,
            attributes={"memo": "card 4111 1111 1111 1111"},
            device_id="dev-pan",
        ),
        decision_line("hist", "allow", decided_at_ms=now - 20_000, reasons=[], device_id="dev-pan"),
    ]
    (log / "decisions-20261206T100000.000Z-000001.jsonl").write_text("".join(lines))
    rules = RulesView(desk_rules)
    Projector(engine, log, rules).run_once()
    with engine.connect() as conn:
        ids = {str(r[0]): int(r[1]) for r in conn.execute(select(t.cases.c.transaction_id, t.cases.c.id))}
    desk = Desk(engine, rules, LabelSender(engine, None), Blocks(engine, rules), None, DeskConfig(sla_minutes=60))
    yield Site(engine, desk, ids)
    engine.dispose()


def test_sign_in_csrf_sessions_and_roles(site: Site) -> None:
    anonymous = site.client()
    assert anonymous.get("/queue").headers["location"].startswith("/login?next=")
    assert anonymous.post("/cases/1/claim", data={"csrf": "x"}).status_code == 401
    token = csrf(anonymous.get("/login").text)
    wrong = anonymous.post("/login", data={"name": "alice", "password": "nope", "csrf": token, "next": "/queue"})
    assert wrong.status_code == 401 and "wrong name or password" in wrong.text
    no_token = site.client().post("/login", data={"name": "alice", "password": "alice-password", "csrf": ""})
    assert no_token.status_code == 403

    alice = site.client("alice")
    case = site.ids["geo"]
    assert alice.post(f"/cases/{case}/claim", data={}).status_code == 403  # no CSRF token
    assert alice.post(f"/cases/{case}/claim", data={"csrf": "forged"}).status_code == 403
    foreign = alice.post(
        f"/cases/{case}/claim", data={"csrf": csrf(alice.get("/queue").text)}, headers={"Origin": "http://evil.test"}
    )
    assert foreign.status_code == 403
    assert post(alice, f"/cases/{case}/claim").status_code == 303
    assert alice.get("/dashboard").status_code == 403 and alice.get("/lists").status_code == 403
    lena = site.client("lena")
    assert lena.get("/dashboard").status_code == 200 and lena.get("/lists").status_code == 200
    page = alice.get("/queue")
    for header in ("Content-Security-Policy", "X-Frame-Options", "Cache-Control"):
        assert header in page.headers

    assert post(alice, "/logout").status_code == 303
    assert alice.get("/queue").status_code == 303  # signed out: the old cookie opens nothing

    # Five wrong passwords lock the name for 15 minutes, even with the right one.
    c = site.client()
    for _ in range(5):
        c.post("/login", data={"name": "bob", "password": "bad", "csrf": csrf(c.get("/login").text)})
    locked = c.post("/login", data={"name": "bob", "password": "bob-password", "csrf": csrf(c.get("/login").text)})
    assert locked.status_code == 401 and "too many failed sign-ins" in locked.text
    with site.engine.connect() as conn:
        actions = [r[0] for r in conn.execute(select(t.audit.c.action).where(t.audit.c.target == "bob"))]
    assert actions.count("login_failed") == 5 and "login_refused" in actions


def test_sessions_expire_when_idle(site: Site) -> None:
    site.desk.config = DeskConfig(session_idle_s=0.5)
    alice = site.client("alice")
    time.sleep(1.0)
    assert alice.get("/queue").headers["location"].startswith("/login")


def test_trusted_proxy_header_signs_in_only_from_the_proxy(site: Site) -> None:
    site.desk.config = DeskConfig(trusted_user_header="X-Forwarded-User", trusted_proxies=frozenset({"testclient"}))
    via_proxy = site.client(**{"X-Forwarded-User": "lena"})
    page = via_proxy.get("/dashboard")
    assert page.status_code == 200 and "lena · lead" in page.text
    assert site.client(**{"X-Forwarded-User": "nobody"}).get("/queue").status_code == 303
    site.desk.config = DeskConfig(trusted_user_header="X-Forwarded-User", trusted_proxies=frozenset({"10.9.9.9"}))
    assert site.client(**{"X-Forwarded-User": "lena"}).get("/queue").status_code == 303  # not from the proxy


def test_queue_filters_and_sorts(site: Site) -> None:
    alice = site.client("alice")
    ids = site.ids

    def shown(query: str) -> list[int]:
        page = alice.get("/queue?" + query)
        assert page.status_code == 200, page.text
        return shown_case_ids(page.text)

    assert shown("") == [ids["old-big"], ids["geo"], ids["usd"], ids["pan"]]  # oldest first
    assert shown("reason=GEO_MISMATCH") == [ids["geo"]]
    assert shown("rule=very_large_amount") == [ids["old-big"], ids["usd"], ids["pan"]]
    assert shown("min_amount=12000&max_amount=16000") == [ids["pan"]]  # in EUR: USD 12,000 is below
    assert shown("currency=usd") == [ids["usd"]]
    assert shown("country=GB&max_age=10") == [ids["geo"], ids["usd"], ids["pan"]]
    assert shown("min_age=60") == [ids["old-big"]]
    assert shown("sort=score") == [ids["geo"], ids["usd"], ids["pan"], ids["old-big"]]
    assert shown("sort=amount&order=asc")[0] == ids["geo"]
    bad = alice.get("/queue?min_amount=lots&sort=nonsense")
    assert bad.status_code == 200 and "min_amount: &#39;lots&#39; is not a number" in bad.text
    assert "over SLA" in alice.get("/queue").text  # the 90-minute-old case, against a 60-minute SLA
    assert post(alice, f"/cases/{ids['geo']}/claim").status_code == 303
    assert shown("assignee=me") == [ids["geo"]]
    assert shown("assignee=none") == [ids["old-big"], ids["usd"], ids["pan"]]
    assert shown("assignee=bob") == []


def test_case_actions_roles_and_audit(site: Site) -> None:
    alice, bob, lena = site.client("alice"), site.client("bob"), site.client("lena")
    geo, usd, big, pan = (site.ids[k] for k in ("geo", "usd", "old-big", "pan"))

    assert post(alice, f"/cases/{geo}/claim").status_code == 303
    taken = post(bob, f"/cases/{geo}/claim")
    assert taken.status_code == 409 and "claimed by alice" in taken.text
    assert post(bob, f"/cases/{geo}/resolve", outcome="fraud").status_code == 409
    assert post(alice, f"/cases/{geo}/escalate", note="").status_code == 409  # say why
    assert post(alice, f"/cases/{geo}/escalate", note="merchant looks compromised").status_code == 303
    refused = post(bob, f"/cases/{geo}/claim")
    assert refused.status_code == 409 and "escalated: a lead takes it" in refused.text
    assert post(lena, f"/cases/{geo}/claim").status_code == 303
    assert post(lena, f"/cases/{geo}/resolve", outcome="fraud", note="confirmed").status_code == 303
    again = post(lena, f"/cases/{geo}/resolve", outcome="genuine")
    assert again.status_code == 409 and "already resolved" in again.text

    assert post(bob, f"/cases/{usd}/assign", to="alice").status_code == 409  # leads assign
    assert post(lena, f"/cases/{usd}/assign", to="bob").status_code == 303
    assert post(bob, f"/cases/{usd}/note", note="called the customer").status_code == 303
    bulk = alice.post(
        "/queue/bulk",
        data={"csrf": csrf(alice.get("/queue").text), "case": [str(usd), str(big)], "outcome": "genuine"},
    )
    assert bulk.status_code == 303
    page = alice.get("/queue?status=all").text
    with site.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(t.cases)).all()}
        trail = conn.execute(
            select(t.audit.c.actor, t.audit.c.action, t.audit.c.case_id, t.audit.c.before, t.audit.c.after)
        ).all()
    assert rows[big].resolution == "genuine" and rows[big].resolved_by == "alice"
    assert rows[usd].status == "open" and rows[usd].claimed_by == "bob"  # bob's: left out of alice's bulk resolve
    assert rows[geo].label_state == "pending"  # no engine in this test: the label waits
    assert rows[pan].status == "open"
    assert ("lena", "resolve", geo) in {(a, b, c) for a, b, c, _, _ in trail}
    escalation = next(x for x in trail if x[1] == "escalate")
    assert '"claimed_by": "alice"' in escalation[3] and '"status": "escalated"' in escalation[4]
    assert "#" + str(big) in page

    case_page = alice.get(f"/cases/{geo}").text
    for words in ("merchant looks compromised", "confirmed", "escalate", "resolve", "The IP address is in another"):
        assert words in case_page


def test_no_page_shows_a_card_number(site: Site) -> None:
    lena = site.client("lena")
    pan = site.ids["pan"]
    assert post(lena, f"/cases/{pan}/note", note=f"customer read out {PAN} on the phone").status_code == 303
    pages = [
        lena.get(path).text
        for path in ("/queue", "/queue?status=all", f"/cases/{pan}", "/audit", "/dashboard", "/lists")
    ]
    history = lena.get(f"/cases/{pan}").text
    same_device = history[history.index("<h3>Same device</h3>") : history.index("<h3>Same IP</h3>")]
    assert '<span class="decision allow">allow</span>' in same_device  # the allow on the same device
    for html in pages:
        digits = re.sub(r"[ -]", "", re.sub(r"<[^>]+>", " ", html))
        assert PAN not in digits
    assert "•••• 1111" in pages[2]


def test_blocks_are_checked_locked_and_kept_with_who_and_why(site: Site, desk_rules: Path) -> None:
    alice, lena = site.client("alice"), site.client("lena")
    pan = site.ids["pan"]
    devices = desk_rules / "lists" / "blocked_devices.txt"
    before = devices.read_text()
    assert post(alice, f"/cases/{pan}/block", kind="device", reason="").status_code == 409  # say why
    assert post(alice, f"/cases/{pan}/block", kind="device", reason="device farm").status_code == 303
    again = post(alice, f"/cases/{pan}/block", kind="device", reason="device farm")
    assert again.status_code == 409 and "already" in again.text
    added = devices.read_text()[len(before) :]
    assert added.startswith("dev-pan  # alice ") and added.rstrip().endswith(f"case {pan}: device farm")

    # A value the engine would refuse never reaches the file; nor does one that breaks the rule tests.
    blocks = site.desk.blocks
    user = User(1, "alice", "analyst")
    with pytest.raises(Exception, match="cannot go on"):
        blocks.block("ip", "not-an-ip", user, "bad value")
    (desk_rules / "tests.yaml").write_text(
        (desk_rules / "tests.yaml").read_text() + "\n  - name: a device the desk must not block\n"
        "    transaction: {amount: 10, card_id: c-ok, device_id: dev-keep}\n"
        "    expect: {decision: allow}\n"
    )
    size = devices.stat().st_size
    with pytest.raises(Exception, match="would refuse the rule set"):
        blocks.block("device", "dev-keep", user, "test of the check")
    assert devices.stat().st_size == size

    # Concurrent blocks lose no line.
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            blocks.block("card", f"tok-concurrent-{i}", user, f"batch {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    cards = (desk_rules / "lists" / "blocked_cards.txt").read_text()
    assert all(f"tok-concurrent-{i}  # alice" in cards for i in range(6))

    lists_page = lena.get("/lists").text
    assert "dev-pan" in lists_page and "device farm" in lists_page
    removed = post(lena, "/lists/unblock", list="blocked_devices", value="dev-pan", reason="false positive")
    assert removed.status_code == 303 and "dev-pan" not in devices.read_text()
    with site.engine.connect() as conn:
        actions = [
            r[0] for r in conn.execute(select(t.audit.c.action).where(t.audit.c.target == "blocked_devices:dev-pan"))
        ]
        entry = conn.execute(select(t.list_entries).where(t.list_entries.c.value == "dev-pan")).one()
    assert actions == ["block", "unblock"]
    assert (entry.added_by, entry.reason, entry.case_id, entry.removed_by) == ("alice", "device farm", pan, "lena")
