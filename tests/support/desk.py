"""The review desk's tests: PostgreSQL databases of their own, the console as a child process, decision lines.

PostgreSQL: `create_database` makes a database with a unique name on
127.0.0.1:5432 (user postgres; DESK_TEST_PG names another server) and
`drop_database` drops it. A server that does not answer is an error, never
a skip. The fixtures that use these are in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.support import ROOT
from tests.support.redis import free_port

PG_SERVER = os.environ.get("DESK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SHIPPED_MODELS = ROOT / "models"


def _admin(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"the review desk's tests need PostgreSQL at {PG_SERVER} (user postgres, trust auth); "
            f"set DESK_TEST_PG to another server: {exc}"
        ) from None


def create_database() -> str:
    """A fresh, empty PostgreSQL database; its URL."""
    name = f"desk_test_{uuid.uuid4().hex[:12]}"
    with _admin(PG_SERVER) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER.rpartition('/')[0]}/{name}"


def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with _admin(PG_SERVER) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Console:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_console(db: str, tmp_path: Path, *args: str) -> Console:
    """`risk-engine console` as a child process; waits for /healthz."""
    port = free_port()
    log = tmp_path / f"console-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "console", "--db", db, "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the console exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return Console(url, proc, log)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the console did not answer within 60 s:\n{log.read_text()}")
        time.sleep(0.1)


def stop_console(console: Console) -> None:
    console.proc.terminate()
    try:
        console.proc.wait(10)
    except subprocess.TimeoutExpired:
        console.proc.kill()
        console.proc.wait(10)


def login(client: httpx.Client, name: str, password: str) -> str:
    """Sign in; the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None, page.text
    answer = client.post("/login", data={"name": name, "password": password, "csrf": token.group(1), "next": "/queue"})
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/queue").text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def decision_line(
    tid: str,
    decision: str = "review",
    *,
    decided_at_ms: int | None = None,
    amount_minor: int = 1_500_000,
    currency: str = "EUR",
    card_id: str = "tok_card_1",
    device_id: str = "dev-1",
    ip: str = "81.2.69.160",
    merchant_id: str = "m-1",
    reasons: list[dict[str, Any]] | None = None,
    attributes: dict[str, str] | None = None,
    score: float | None = 0.4,
    ruleset_version: str = "2026.11.26-3",
) -> str:
    """One line of the engine's decision log (its documented JSON Lines format, `"v": 1`)."""
    now = decided_at_ms if decided_at_ms is not None else int(time.time() * 1000)
    if reasons is None:
        reasons = [
            {
                "code": "AMOUNT_VERY_LARGE",
                "source": "rule",
                "rule_id": "very_large_amount",
                "action": "review",
                "message": "Amount of 10,000 EUR or more.",
            }
        ]
    record = {
        "v": 1,
        "decided_at_ms": now,
        "transaction": {
            "transaction_id": tid,
            "event_time_ms": now - 5,
            "amount_minor": amount_minor,
            "currency": currency,
            "user_id": "u-1",
            "card_id": card_id,
            "device_id": device_id,
            "ip": ip,
            "country": "GB",
            "merchant_id": merchant_id,
            "channel": "web",
            "merchant_category": "5812",
            "attributes": attributes or {},
        },
        "decision": decision,
        "score": score,
        "degraded": False,
        "reasons": reasons,
        "shadow": [],
        "features": {"amount": amount_minor / 100},
        "ruleset_version": ruleset_version,
        "model_version": "test-model",
        "elapsed_us": 900,
        "challenger": None,
    }
    return json.dumps(record) + "\n"
