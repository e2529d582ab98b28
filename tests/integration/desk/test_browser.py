"""The review desk in a real browser: Chromium (Debian's /usr/bin/chromium) driven by Playwright, against
`risk-engine console` on PostgreSQL and a live engine writing its decision log.

One analyst signs in, filters the queue, claims a case, resolves it as fraud
(and the engine's next Score for that merchant counts the fraud), blocks the
device (and the engine denies it), finds the audit entry; a second analyst
is refused the case the first one holds. The screenshots are written to the
test's folder; with UPDATE_SCREENSHOTS=1 also to docs/img/ (the README's).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.sync_api import Browser, Page, expect, sync_playwright

from engine.desk.auth import create_user
from engine.desk.db import open_db
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running
from tests.support import ROOT
from tests.support.desk import start_console, stop_console

pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect.set_options(timeout=20_000)  # a loaded CI machine: behaviour is asserted, not speed

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def score(stub: risk_pb2_grpc.RiskEngineStub, **fields: object) -> risk_pb2.ScoreResponse:
    now = Timestamp()
    now.GetCurrentTime()
    txn = {
        "transaction_id": f"bt-{uuid.uuid4().hex[:16]}",
        "event_time": now,
        "currency": "EUR",
        "user_id": "u-browser",
        "card_id": "tok_browser",
        "ip": "81.2.69.160",
        "country": "GB",
        "merchant_category": "5812",
        "channel": risk_pb2.CHANNEL_WEB,
        **fields,
    }
    return stub.Score(risk_pb2.ScoreRequest(transaction=risk_pb2.Transaction(**txn)), timeout=5)


def sign_in(page: Page, url: str, name: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(f"{name}-password-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"{name} · analyst")).to_be_visible()


def test_analysts_work_cases_and_their_decisions_reach_the_engine(
    browser: Browser, desk_engine: Running, pg_url: str, desk_rules: Path, tmp_path: Path
) -> None:
    engine = open_db(pg_url)
    for name in ("alice", "bob"):
        create_user(engine, name, "analyst", f"{name}-password-1")
    engine.dispose()
    console = start_console(
        pg_url,
        tmp_path,
        "--decision-log",
        str(tmp_path / "decisions"),
        "--rules",
        str(desk_rules),
        "--engine",
        f"127.0.0.1:{desk_engine.port}",
        "--engine-admin",
        f"127.0.0.1:{desk_engine.admin_port}",
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{desk_engine.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    merchant, device = f"m-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        flagged = score(stub, amount_minor=1_500_000, merchant_id=merchant, device_id=device)
        assert risk_pb2.Decision.Name(flagged.decision) == "DECISION_REVIEW"
        frauds_before = flagged.features["merchant_frauds_known_1d"]
        other = score(stub, amount_minor=1_300_000, currency="USD", merchant_id="m-other", device_id="dev-other")
        assert risk_pb2.Decision.Name(other.decision) == "DECISION_REVIEW"

        alice = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        sign_in(alice, console.url, "alice")

        # The two reviews appear as cases (the projector tails the decision log); filter the queue to EUR.
        deadline = time.monotonic() + 30
        while alice.locator("table.queue tbody tr a").count() < 2:
            assert time.monotonic() < deadline, "the two reviews did not become cases"
            time.sleep(0.2)
            alice.reload()
        alice.get_by_label("Currency").fill("EUR")
        alice.get_by_label("Reason").select_option("AMOUNT_VERY_LARGE")
        alice.get_by_role("button", name="Filter").click()
        rows = alice.locator("table.queue tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("15,000.00 EUR")
        alice.screenshot(path=str(shots / "review-desk-queue.png"), full_page=True)

        # Claim and resolve as fraud: the label reaches the engine.
        rows.first.get_by_role("link").click()
        expect(alice.get_by_text("Amount of 10,000 EUR or more.")).to_be_visible()
        expect(alice.get_by_text("located in GB")).to_be_visible()
        alice.get_by_role("button", name="Claim this case").click()
        expect(alice.get_by_text("You claimed case")).to_be_visible()
        alice.get_by_label("Note").first.fill("cardholder confirmed they did not pay")
        alice.get_by_role("button", name="Resolve as fraud").click()
        expect(alice.get_by_text("resolved as fraud; the engine has the label")).to_be_visible()
        after = score(stub, amount_minor=1_000, merchant_id=merchant, device_id="dev-unrelated")
        assert after.features["merchant_frauds_known_1d"] == frauds_before + 1

        # Block the device: the engine reloads its list and denies it.
        alice.get_by_label("What").select_option("device")
        alice.get_by_label("Why").fill("device seen in confirmed fraud")
        alice.get_by_role("button", name="Block").click()
        expect(alice.get_by_text(f"{device} added to blocked_devices")).to_be_visible()
        deadline = time.monotonic() + 30  # the console asked the engine to reload; its watcher would too
        while risk_pb2.Decision.Name((denied := score(stub, amount_minor=1_000, device_id=device)).decision) != (
            "DECISION_DENY"
        ):
            assert time.monotonic() < deadline, "the blocked device is still not denied"
            time.sleep(0.2)
        assert "BLOCKLISTED" in [r.code for r in denied.reasons]
        assert f"{device}  # alice" in (desk_rules / "lists" / "blocked_devices.txt").read_text()
        alice.screenshot(path=str(shots / "review-desk-case.png"), full_page=True)

        # The audit log has the block: who, what, when, before and after.
        alice.get_by_role("link", name="Audit").click()
        entry = alice.locator("table.audit tbody tr", has_text=f"blocked_devices:{device}")
        expect(entry).to_have_count(1)
        expect(entry).to_contain_text("alice")
        expect(entry).to_contain_text('"listed": true')

        # A second analyst is refused a case the first one holds.
        alice.goto(f"{console.url}/queue")
        alice.get_by_role("button", name="Claim the next case").click()
        expect(alice.get_by_text("You claimed case")).to_be_visible()
        held = alice.url
        bob = browser.new_context().new_page()
        sign_in(bob, console.url, "bob")
        bob.goto(held)
        expect(bob.get_by_text("claimed by alice")).to_be_visible()
        bob.get_by_role("button", name="Claim this case").click()
        expect(bob.get_by_role("alert")).to_contain_text("is claimed by alice: only one analyst works a case")
        expect(bob.get_by_role("button", name="Resolve as fraud")).to_have_count(0)
    finally:
        channel.close()
        stop_console(console)

    for shot in shots.iterdir():
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "img"
        target.mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, target / shot.name)
