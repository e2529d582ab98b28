"""The decision log: every scored transaction, appended to rotated JSON Lines files before it is answered.

Writing. `DecisionLog.record` turns the record into one JSON line and
appends it to the current file with one write(2) call, on the request
thread, before the call is answered: the line is then in the operating
system's page cache, which survives a crash of the process, so no answered
decision is lost and no line is torn (readers still skip a malformed line).
A background thread fsyncs the file at most once per `fsync_interval_s`
(default 1 s): a crash of the machine loses at most that interval. The cost
is the encoding and the write on the payment's path (measured by
`benchmarks/decision_log_cost.py`); a disk that stalls stalls the calls with
it, and they time out at the gateway rather than go unrecorded. A failed
write (full disk, file system gone, permissions) loses that record, is
counted (`write_failures`) and logged at most once per `log_interval_s`; the
call is answered as usual, and the next record opens a new file. Files are
created 0600 in a folder created 0700.

Files. `FOLDER/decisions-<UTC start time>-<sequence>.jsonl`; names sort in
time order. The current file is closed and a new one started when it would
pass `max_file_bytes` or is older than `rotate_s`; then the oldest files are
deleted while the folder's decision files total more than `max_total_bytes`.
One folder per server process.

Records (one JSON object per line, `"v": 1`): `decided_at_ms`, `transaction`
(the request as the engine read it: ids, `event_time_ms`, `amount_minor`,
`currency`, `channel`, `attributes`, ...; as the server writes it, the
user, card and device ids are pseudonyms, the IP its network and only the
attributes the rule set keeps, see `RecordPolicy`; `"ids": "pseudonyms"`
then says so), `dry_run` (true for a dry run, absent otherwise), `decision`, `score` (null when the
model did not run), `degraded`, `reasons` and `shadow` (rules that fired,
acting and shadow, with code, source, rule id, action and message),
`features` (name -> number, null when unknown), `ruleset_version` and
`ruleset_digest` (the content hash of the rule set that decided: its text is
in the rule set archive, `risk-engine rules show --digest`), `model_version`,
`enrichment` (what enrichment found: IP country and region, the amount in
the base currency), `elapsed_us`, and `challenger` (null unless a challenger
model runs: the other model's `model_version`, `score`, the `decision` it
would have given, `challenger_decided` and `mode`; see
`engine.transaction.ChallengerResult`).

Reading. `files` and `read_records` read a folder back; `engine.offline.export`
turns it into a Parquet file for training and backtests.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from engine.privacy import (
    Pseudonyms,
    card_digits,
    looks_like_card_number,
    names_card_secret,
    replace_card_numbers,
    truncate_ip,
)
from engine.transaction import Reason, ScoreResult, Transaction

log = logging.getLogger("risk_engine.decision_log")

#: `json.dumps(record, separators=(",", ":"), ensure_ascii=False)` without an encoder built per line.
_record_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

PREFIX = "decisions-"
SUFFIX = ".jsonl"


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def _reason(r: Reason) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": r.code,
        "source": r.source.value,
        "rule_id": r.rule_id,
        "action": r.action.name.lower(),
        "message": r.message,
    }
    if r.contributions:
        out["contributions"] = [
            {"feature": c.feature, "value": _finite(c.value), "contribution": c.contribution} for c in r.contributions
        ]
    return out


@dataclass(frozen=True)
class RecordPolicy:
    """What of a transaction a record keeps (README "Data protection").

    `pseudonyms` set: `user_id`, `card_id` and `device_id` are written as
    their keyed hashes and `ip` cut to its network (IPv4 /24, IPv6 /48);
    None: in clear (`RISK_CLEAR_IDS`). Either way a value that looks like a
    card number (any id, any attribute) is never written: its pseudonym is
    (or `"masked"` without a key), and attributes are kept only when
    `kept_attributes()` names them (the rule set's `keep_attributes:`;
    None keeps them all).
    """

    pseudonyms: Pseudonyms | None = None
    kept_attributes: Callable[[], frozenset[str]] | None = None


_HASHED_IDS = ("user_id", "card_id", "device_id")


def _no_card(value: str, pseudonyms: Pseudonyms | None) -> str:
    if not looks_like_card_number(value):
        return value
    return pseudonyms.of(card_digits(value)) if pseudonyms is not None else "masked"


def _transaction(txn: Transaction, policy: RecordPolicy | None) -> dict[str, Any]:
    keys = policy.pseudonyms if policy is not None else None
    out: dict[str, Any] = {
        "transaction_id": _no_card(txn.transaction_id, keys),
        "event_time_ms": txn.event_time_ms,
        "amount_minor": txn.amount_minor,
        "currency": txn.currency,
        "user_id": txn.user_id,
        "card_id": txn.card_id,
        "device_id": txn.device_id,
        "ip": txn.ip,
        "country": txn.country,
        "merchant_id": _no_card(txn.merchant_id, keys),
        "channel": txn.channel.value,
        "merchant_category": txn.merchant_category,
        "attributes": dict(txn.attributes),
    }
    if policy is None:
        return out
    for name in _HASHED_IDS:
        value = out[name]
        if looks_like_card_number(value) or keys is None:
            out[name] = _no_card(value, keys)
        else:
            out[name] = keys.of(value)
    if keys is not None:
        out["ip"] = truncate_ip(txn.ip)
    kept = policy.kept_attributes() if policy.kept_attributes is not None else None
    out["attributes"] = {
        k: replace_card_numbers(v, keys.of if keys is not None else lambda _: "masked")
        for k, v in txn.attributes
        if (kept is None or k in kept) and not names_card_secret(k)
    }
    return out


def to_record(
    decided_at: float, txn: Transaction, result: ScoreResult, policy: RecordPolicy | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """The decision log record of one scored transaction (`policy`: what of the transaction it keeps)."""
    dry_run = dry_run or result.dry_run
    record = {
        "v": 1,
        "decided_at_ms": int(decided_at * 1000),
        "transaction": _transaction(txn, policy),
        "decision": result.decision.name.lower(),
        "score": _finite(result.score),
        "degraded": result.degraded,
        "reasons": [_reason(r) for r in result.reasons],
        "shadow": [_reason(r) for r in result.shadow],
        "features": {k: _finite(v) for k, v in result.features.items()},
        "ruleset_version": result.ruleset_version,
        "ruleset_digest": result.ruleset_digest,
        "model_version": result.model_version,
        "enrichment": result.enrichment,
        "elapsed_us": result.elapsed_us,
        "challenger": _challenger(result),
    }
    if policy is not None and policy.pseudonyms is not None:
        record["ids"] = "pseudonyms"
        _hide_ids_in_messages(record, txn, policy.pseudonyms)
    if dry_run:
        record["dry_run"] = True
    return record


def _hide_ids_in_messages(record: dict[str, Any], txn: Transaction, keys: Pseudonyms) -> None:
    """A rule message that names an id (`{card_id}`) says its pseudonym in the log, as the transaction does."""
    ids = [(v, keys.of(v)) for v in (txn.user_id, txn.card_id, txn.device_id) if len(v) >= 3]
    if txn.ip:
        ids.append((txn.ip, truncate_ip(txn.ip)))
    for part in ("reasons", "shadow"):
        for reason in record[part]:
            for value, pseudonym in ids:
                if value in reason["message"]:
                    reason["message"] = reason["message"].replace(value, pseudonym)


def _challenger(result: ScoreResult) -> dict[str, Any] | None:
    c = result.challenger
    if c is None:
        return None
    return {
        "model_version": c.model_version,
        "score": _finite(c.score),
        "decision": c.decision.name.lower(),
        "challenger_decided": c.challenger_decided,
        "mode": c.mode,
    }


@dataclass
class DecisionLogStats:
    written: int = 0
    write_failures: int = 0  # records lost to failed writes
    files_rotated: int = 0
    files_deleted: int = 0


#: Files are private to the server's user, their folder too (they hold payment data).
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def _private_append(path: Path) -> IO[bytes]:
    """The file opened for appending, unbuffered (one write(2) per record), created 0600."""
    return open(path, "ab", buffering=0, opener=lambda p, flags: os.open(p, flags, FILE_MODE))


class DecisionLog:
    """Writes each decision record to rotated JSON Lines files before the call is answered (module docstring)."""

    def __init__(
        self,
        folder: Path,
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        rotate_s: float = 3600.0,
        max_total_bytes: int = 1024 * 1024 * 1024,
        fsync_interval_s: float = 1.0,
        log_interval_s: float = 10.0,
        on_loss: Callable[[str, int], None] | None = None,
        opener: Callable[[Path], IO[bytes]] | None = None,
        policy: RecordPolicy | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.policy = policy
        self.max_file_bytes = max_file_bytes
        self.rotate_s = rotate_s
        self.max_total_bytes = max_total_bytes
        self.fsync_interval_s = fsync_interval_s
        self.log_interval_s = log_interval_s
        self.on_loss = on_loss or (lambda reason, n: None)
        self._open = opener or _private_append
        self.stats = DecisionLogStats()
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._seq = 0
        self._dirty = False  # written since the last fsync
        self._last_error_log = -1e9
        self._errors_since_log = 0
        self.folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log-sync", daemon=True)
        self._thread.start()

    # -- the request thread -------------------------------------------------
    def record(self, txn: Transaction, result: ScoreResult, dry_run: bool = False) -> bool:
        """Write one record to the current file (one write(2), so a line is never torn); False when it failed.

        It returns once the line is in the operating system's hands: a crash of
        this process after the answer loses nothing. A failed write (full disk,
        folder gone) loses the record, counts it, and logs at a bounded rate;
        the call is answered as usual.
        """
        try:
            record = to_record(time.time(), txn, result, self.policy, dry_run)
            line = _record_json(record)
        except Exception as exc:  # noqa: BLE001 - a bad record must not fail the call
            with self._lock:
                self._failed(1, exc)
            return False
        data = line.encode() + b"\n"
        with self._lock:
            try:
                f = self._current(len(data))
                done = 0
                while done < len(data):  # a regular file takes it whole; a short write is finished
                    done += f.write(memoryview(data)[done:]) or 0
                f.flush()  # a no-op for the unbuffered file; an opener's buffered file is written out here
            except OSError as exc:
                self._close_file(quiet=True)  # the next record starts a new file
                self._failed(1, exc)
                return False
            self._size += len(data)
            self._dirty = True
            self.stats.written += 1
        return True

    # -- under the lock -----------------------------------------------------
    def _current(self, incoming: int) -> IO[bytes]:
        now = time.monotonic()
        if self._file is not None and (
            (self._size > 0 and self._size + incoming > self.max_file_bytes) or now - self._opened_at > self.rotate_s
        ):
            self._close_file()
            self.stats.files_rotated += 1
            self._prune()
        if self._file is None:
            self._seq += 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
            path = self.folder / f"{PREFIX}{stamp}Z-{self._seq:06d}{SUFFIX}"
            self._file = self._open(path)
            self._path = path
            self._opened_at = now
            self._size = 0
        return self._file

    def _close_file(self, quiet: bool = False) -> None:
        f, self._file = self._file, None
        self._dirty = False
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            if not quiet:
                self._failed(0, exc)
        finally:
            try:
                f.close()
            except OSError:
                pass

    def _prune(self) -> None:
        files = sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}"))
        sizes = []
        for path in files:
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        total = sum(sizes)
        for path, size in zip(files, sizes, strict=True):
            if total <= self.max_total_bytes:
                break
            if path == self._path and self._file is not None:
                continue
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            self.stats.files_deleted += 1

    def _failed(self, lost: int, exc: BaseException) -> None:
        self.stats.write_failures += lost
        if lost:
            self.on_loss("write_error", lost)
        self._errors_since_log += lost
        now = time.monotonic()
        if now - self._last_error_log >= self.log_interval_s:
            log.error(
                "decision log write failed (%d record(s) lost since the last report): %s: %s",
                self._errors_since_log,
                type(exc).__name__,
                exc,
                extra={"event": "decision_log", "lost": self._errors_since_log},
            )
            self._errors_since_log = 0
            self._last_error_log = now

    # -- the sync thread ----------------------------------------------------
    def _run(self) -> None:
        """fsync what was written at most once per fsync_interval_s (a machine crash loses at most that),
        and close a file that has been open longer than rotate_s even when no record comes."""
        while not self._stop.wait(self.fsync_interval_s):
            self.sync()

    def sync(self) -> None:
        """fsync the current file if anything was written since the last time; rotate it by age."""
        with self._lock:
            if self._file is not None and time.monotonic() - self._opened_at > self.rotate_s:
                self._close_file()  # fsyncs it
                self.stats.files_rotated += 1
                return
            if self._file is None or not self._dirty:
                return
            self._dirty = False
            try:
                fd = os.dup(self._file.fileno())  # fsync outside the lock: records keep going meanwhile
            except OSError as exc:
                self._failed(0, exc)
                return
        try:
            os.fsync(fd)
        except OSError as exc:
            with self._lock:
                self._failed(0, exc)
        finally:
            os.close(fd)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Every record is written when `record` returns: kept for callers that wait for the log (always True)."""
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the sync thread, fsync and close the file."""
        self._stop.set()
        self._thread.join(timeout_s)
        with self._lock:
            self._close_file()


# -- reading -------------------------------------------------------------------


def files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(f"{PREFIX}*{SUFFIX}"))


def read_records(folder: Path, bad: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the folder's files, oldest file first; torn or malformed lines are skipped (counted in bad)."""
    for path in files(folder):
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    if bad is not None:
                        bad.append(1)
                    continue
                if isinstance(record, dict) and record.get("v") == 1:
                    yield record
                elif bad is not None:
                    bad.append(1)
