"""The projector: turns the engine's decision log into cases, off the request path.

The engine appends one JSON line per decision to `DIR/decisions-*.jsonl`
(`--decision-log`; with several workers, `DIR/worker-<i>/`). The projector
tails those files: every `poll_s` it reads what was appended since its last
offset (complete lines only: a line being written is read on the next
pass), and in one database transaction per chunk it
- makes a case of every `review`, and of a stable sample of allows
  (`sample_allows`, quality checks) and denies (`sample_denies`, appeals):
  the transaction id hashed, so the same records give the same sample;
- stores every decision, compact, for the history of a card, device or IP
  (pruned after `history_days`);
- counts decisions per hour and rule hits per day for the dashboard;
- moves the file's offset.
Offsets move with the data they cover, so a crash or a restart neither
loses nor repeats a record; a transaction logged twice (a retry scored
again) keeps its first case. With PostgreSQL a transaction-level advisory
lock lets only one projector write at a time, so several consoles can run
on one database. Card numbers are masked before anything is stored
(`engine.desk.pan`). Lines that are not decision records are skipped and
counted (`bad_lines`).

Score never waits for any of this: the engine writes its log as before, and
the projector only reads files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from engine.desk import schema as t
from engine.desk.db import is_postgres, now_ms
from engine.desk.pan import scrub
from engine.desk.rules_view import RulesView

log = logging.getLogger("risk_engine.desk")

PATTERN = "decisions-*.jsonl"
#: pg_try_advisory_xact_lock key of the projector ("proj").
_LOCK = 0x70726F6A
#: Bytes read from a file per database transaction.
CHUNK_BYTES = 4 * 1024 * 1024
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000


def sampled(transaction_id: str, rate: float) -> bool:
    """Whether a transaction falls in a sample of `rate` (0..1), stably (a hash of its id)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    h = int.from_bytes(hashlib.sha256(transaction_id.encode()).digest()[:8], "big")
    return h / 2**64 < rate


def upsert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT that supports ON CONFLICT (PostgreSQL or SQLite)."""
    return (postgresql.insert if is_postgres(conn) else sqlite.insert)(table)


@dataclass
class ProjectorStats:
    records: int = 0
    cases: int = 0
    bad_lines: int = 0
    passes: int = 0
    errors: int = 0
    last_error: str = ""
    last_pass_ms: int = 0
    newest_decided_at_ms: int = 0
    files: dict[str, int] = field(default_factory=dict)


class Projector:
    """Tails a decision log folder into the desk's tables (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        folder: Path,
        rules: RulesView,
        *,
        sample_allows: float = 0.0,
        sample_denies: float = 0.0,
        history_days: float = 30.0,
        poll_s: float = 0.2,
    ) -> None:
        self.engine = engine
        self.folder = Path(folder)
        self.rules = rules
        self.sample_allows = sample_allows
        self.sample_denies = sample_denies
        self.history_ms = int(history_days * _DAY_MS)
        self.poll_s = poll_s
        self.stats = ProjectorStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    # -- running ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="desk-projector", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.run_once()
                if time.monotonic() - self._last_prune > 600:
                    self.prune()
            except Exception as exc:  # noqa: BLE001 - the projector must outlive a database outage
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.error("projecting the decision log failed (retrying): %s", self.stats.last_error)
                done = 0
                self._stop.wait(2.0)
            if not done:
                self._stop.wait(self.poll_s)

    # -- one pass ---------------------------------------------------------------
    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.rglob(PATTERN), key=lambda p: (str(p.parent), p.name))

    def run_once(self) -> int:
        """Project what was appended since the last pass; the number of records read."""
        total = 0
        for path in self.files():
            while True:
                n = self._project_chunk(path)
                total += n
                if n == 0:
                    break
        self.stats.passes += 1
        self.stats.last_pass_ms = now_ms()
        return total

    def _project_chunk(self, path: Path) -> int:
        key = str(path.relative_to(self.folder))
        try:
            size = path.stat().st_size
        except OSError:
            return 0  # deleted by the engine's retention meanwhile
        with self.engine.begin() as conn:
            if (
                is_postgres(conn)
                and not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK}).scalar()
            ):
                return 0  # another console projects
            pos = conn.execute(select(t.log_offsets.c.position).where(t.log_offsets.c.path == key)).scalar()
            pos = int(pos or 0)
            if size <= pos:
                return 0
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    data = f.read(CHUNK_BYTES)
            except OSError:
                return 0
            end = data.rfind(b"\n")
            if end < 0 and len(data) < CHUNK_BYTES:
                return 0  # a line still being written
            if end < 0:  # a chunk without a line end: no decision record is that long; skip it as bad
                end = len(data) - 1
                self.stats.bad_lines += 1
                lines: list[bytes] = []
            else:
                lines = data[: end + 1].splitlines()
            records = []
            for line in lines:
                record = _parse(line)
                if record is None:
                    self.stats.bad_lines += 1
                else:
                    records.append(record)
            self._store(conn, records)
            conn.execute(
                upsert(conn, t.log_offsets)
                .values(path=key, position=pos + end + 1, updated_at_ms=now_ms())
                .on_conflict_do_update(
                    index_elements=[t.log_offsets.c.path],
                    set_={"position": pos + end + 1, "updated_at_ms": now_ms()},
                )
            )
        self.stats.files[key] = pos + end + 1
        self.stats.records += len(records)
        return max(len(lines), 1)

    def _store(self, conn: Connection, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        created = now_ms()
        case_rows: list[dict[str, Any]] = []
        reasons_of: dict[str, list[dict[str, Any]]] = {}
        decision_rows: dict[str, dict[str, Any]] = {}
        hours: Counter[tuple[int, str]] = Counter()
        hits: Counter[tuple[int, str]] = Counter()
        for r in records:
            txn = r["transaction"]
            tid = str(txn["transaction_id"])
            decided = int(r["decided_at_ms"])
            decision = str(r["decision"])
            self.stats.newest_decided_at_ms = max(self.stats.newest_decided_at_ms, decided)
            hours[(decided - decided % _HOUR_MS, decision)] += 1
            for reason in r["reasons"]:
                if reason.get("rule_id"):
                    hits[(decided - decided % _DAY_MS, str(reason["rule_id"]))] += 1
            decision_rows[tid] = {
                "transaction_id": tid,
                "decided_at_ms": decided,
                "event_time_ms": int(txn["event_time_ms"]),
                "decision": decision,
                "score": r.get("score"),
                "amount_minor": int(txn["amount_minor"]),
                "currency": str(txn["currency"]),
                "card_id": str(txn.get("card_id") or ""),
                "device_id": str(txn.get("device_id") or ""),
                "ip": str(txn.get("ip") or ""),
                "merchant_id": str(txn.get("merchant_id") or ""),
                "reasons": " ".join(str(x["code"]) for x in r["reasons"])[:512],
            }
            kind = self._kind(tid, decision)
            if kind is None:
                continue
            ip_country, ip_region, amount_base = self.rules.locate(txn)
            case_rows.append(
                {
                    "transaction_id": tid,
                    "kind": kind,
                    "status": t.OPEN,
                    "created_at_ms": created,
                    "decided_at_ms": decided,
                    "event_time_ms": int(txn["event_time_ms"]),
                    "decision": decision,
                    "score": r.get("score"),
                    "degraded": bool(r.get("degraded")),
                    "amount_minor": int(txn["amount_minor"]),
                    "currency": str(txn["currency"]),
                    "amount_base": amount_base,
                    "user_id": str(txn.get("user_id") or ""),
                    "card_id": str(txn.get("card_id") or ""),
                    "device_id": str(txn.get("device_id") or ""),
                    "ip": str(txn.get("ip") or ""),
                    "country": str(txn.get("country") or ""),
                    "ip_country": ip_country,
                    "ip_region": ip_region,
                    "merchant_id": str(txn.get("merchant_id") or ""),
                    "merchant_category": str(txn.get("merchant_category") or ""),
                    "channel": str(txn.get("channel") or ""),
                    "ruleset_version": str(r.get("ruleset_version") or ""),
                    "ruleset_digest": self.rules.digest_of(str(r.get("ruleset_version") or "")),
                    "model_version": str(r.get("model_version") or ""),
                    "record": json.dumps(r, separators=(",", ":"), ensure_ascii=False),
                    "reason_codes": _spaced(str(x["code"]) for x in r["reasons"])[:1024],
                    "rule_ids": _spaced(str(x.get("rule_id") or "") for x in r["reasons"])[:2048],
                }
            )
            reasons_of[tid] = [
                {"code": str(x["code"]), "rule_id": str(x.get("rule_id") or ""), "source": str(x.get("source") or "")}
                for x in r["reasons"]
            ]
        if decision_rows:
            conn.execute(
                upsert(conn, t.decisions).on_conflict_do_nothing(index_elements=[t.decisions.c.transaction_id]),
                list(decision_rows.values()),
            )
        if case_rows:
            stmt = (
                upsert(conn, t.cases)
                .on_conflict_do_nothing(index_elements=[t.cases.c.transaction_id])
                .returning(t.cases.c.id, t.cases.c.transaction_id)
            )
            new = conn.execute(stmt, case_rows).all()
            rows = [{"case_id": cid, **reason} for cid, tid in new for reason in reasons_of[tid]]
            if rows:
                conn.execute(insert(t.case_reasons), rows)
            self.stats.cases += len(new)
        for table, key, counts in (
            (t.decision_hours, ("hour_ms", "decision"), hours),
            (t.rule_hits, ("day_ms", "rule_id"), hits),
        ):
            if not counts:
                continue
            stmt = upsert(conn, table)
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={"n": table.c.n + stmt.excluded.n})
            conn.execute(stmt, [{key[0]: k[0], key[1]: k[1], "n": n} for k, n in sorted(counts.items())])

    def _kind(self, transaction_id: str, decision: str) -> str | None:
        if decision == "review":
            return t.REVIEW
        if decision == "allow" and sampled(transaction_id, self.sample_allows):
            return t.ALLOW_SAMPLE
        if decision == "deny" and sampled(transaction_id, self.sample_denies):
            return t.DENY_SAMPLE
        return None

    # -- retention --------------------------------------------------------------
    def prune(self) -> int:
        """Delete decisions older than the history kept and offsets of files the engine deleted."""
        self._last_prune = time.monotonic()
        cutoff = now_ms() - self.history_ms
        present = {str(p.relative_to(self.folder)) for p in self.files()}
        with self.engine.begin() as conn:
            deleted = conn.execute(delete(t.decisions).where(t.decisions.c.decided_at_ms < cutoff)).rowcount
            for (key,) in conn.execute(select(t.log_offsets.c.path)).all():
                if key not in present:
                    conn.execute(delete(t.log_offsets).where(t.log_offsets.c.path == key))
        return int(deleted or 0)

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "folder": str(self.folder),
            "records": s.records,
            "cases": s.cases,
            "bad_lines": s.bad_lines,
            "errors": s.errors,
            "last_error": s.last_error,
            "last_pass_ms": s.last_pass_ms,
            "newest_decided_at_ms": s.newest_decided_at_ms,
        }


def _spaced(words: Iterable[str]) -> str:
    """The words between spaces, " A B ", for the queue's word filters ("" when there is none)."""
    kept = [w for w in dict.fromkeys(words) if w]
    return f" {' '.join(kept)} " if kept else ""


def _parse(line: bytes) -> dict[str, Any] | None:
    """A decision record (card numbers masked), or None for a line that is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("v") != 1:
        return None
    txn = record.get("transaction")
    if not isinstance(txn, dict) or not isinstance(record.get("reasons"), list):
        return None
    try:
        int(record["decided_at_ms"])
        int(txn["event_time_ms"])
        int(txn["amount_minor"])
        str(txn["transaction_id"])
        str(txn["currency"])
        str(record["decision"])
        if not all(isinstance(x, dict) and "code" in x for x in record["reasons"]):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return scrub(record)  # type: ignore[no-any-return]
