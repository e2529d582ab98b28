"""Retry records written behind the answer (engine/windows/records.py), on a real Redis.

What must hold: a retry gets the first answer whether its record is still
queued in this process or already in Redis; a reused id with other content is
refused either way; records that cannot be written are reported, never block
or crash the writer; `close` writes what is queued; a forked worker writes its
own records.
"""

from __future__ import annotations

import multiprocessing
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from engine.pipeline import Pipeline
from engine.rules.loader import load_ruleset
from engine.windows.records import RecordWriter
from engine.windows.redis_store import RedisStore
from engine.windows.spec import Aggregate, WindowPlan, WindowSpec
from engine.windows.store import IdempotencyConflict
from tests.support import ROOT
from tests.support.redis import RedisProcess, free_port
from tests.support.windows import recorded_answer

MIN = 60_000
T0 = 1_767_225_600_000
PLAN = WindowPlan(
    [WindowSpec("card_count_1h", ("card_id",), Aggregate.COUNT, 60 * MIN)], allowed_lateness_ms=MIN, amount_scale=0.01
)


def apply(store: RedisStore, txid: str, fingerprint: str, t: int = T0):  # type: ignore[no-untyped-def]
    return store.apply(PLAN, PLAN.bind(txid, t, {"card_id": "c1"}), fingerprint)


def test_a_retry_is_answered_from_the_queue_then_from_redis(redis_url: tuple[str, str]) -> None:
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-wb", budget_s=2.0)
    other_worker = RedisStore(url, prefix=f"{prefix}-wb", budget_s=2.0)
    admin = redis.Redis.from_url(url)
    answer = recorded_answer("a")
    try:
        assert apply(store, "a", "fp-a").replay is None
        # Redis holds every write for a while: the record stays queued in this process.
        admin.execute_command("CLIENT", "PAUSE", "800", "WRITE")
        store.remember("a", "fp-a", answer)
        key = f"{store.prefix}:idem:{{a}}"
        assert store.records is not None and store.records.pending(key) == ("fp-a", answer.to_json())
        assert apply(store, "a", "fp-a").replay == answer.to_json()  # no Redis call needed
        with pytest.raises(IdempotencyConflict):
            apply(store, "a", "fp-other")
        # Once written, the record is in Redis as before (fingerprint, newline, zlib JSON),
        # and any process answers the retry from it.
        assert store.flush(5.0)
        assert store.records.pending(key) is None and store.records.written == 1
        fingerprint, _, body = admin.get(key).partition(b"\n")
        assert fingerprint == b"fp-a" and zlib.decompress(body).decode() == answer.to_json()
        assert 0 < admin.pttl(key) <= 86_400_000
        assert apply(other_worker, "a", "fp-a").replay == answer.to_json()
        with pytest.raises(IdempotencyConflict):
            apply(other_worker, "a", "fp-other")
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        store.close()
        other_worker.close()


def test_records_written_by_remember_itself_when_write_behind_is_off(redis_url: tuple[str, str]) -> None:
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-sync", budget_s=2.0, write_behind=False)
    admin = redis.Redis.from_url(url)
    try:
        assert store.records is None
        apply(store, "a", "fp-a")
        store.remember("a", "fp-a", recorded_answer("a"))
        assert admin.get(f"{store.prefix}:idem:{{a}}").startswith(b"fp-a\n")  # no flush: already written
        assert apply(store, "a", "fp-a").replay == recorded_answer("a").to_json()
    finally:
        admin.close()
        store.close()


@pytest.mark.redis
def test_records_lost_while_redis_is_down_are_reported(tmp_path: Path) -> None:
    own = RedisProcess(free_port(), tmp_path)
    own.start()
    store = RedisStore(own.url, prefix="lost", budget_s=0.2)
    degraded: list[tuple[str, str, str]] = []
    # The pipeline that owns the answers reports the store's lost records as degraded records.
    Pipeline(load_ruleset(ROOT / "rules"), None, store, on_degraded=lambda *a: degraded.append(a))
    try:
        apply(store, "a", "fp-a")
        own.stop()
        store.remember("a", "fp-a", recorded_answer("a"))  # accepted: the write fails later, in the writer
        assert store.flush(5.0)
        assert store.records is not None and store.records.lost == 1 and store.records.written == 0
        assert store.records.pending(f"{store.prefix}:idem:{{a}}") is None  # not kept forever
        assert len(degraded) == 1
        cause, detail, kind = degraded[0]
        assert (cause, kind) == ("record", "connection") and detail.startswith("1 record(s) not written")
        # Redis back (empty): the writer goes on writing.
        own.start()
        apply(store, "b", "fp-b")  # a failed record write does not open the breaker: no wait
        store.remember("b", "fp-b", recorded_answer("b"))
        assert store.flush(5.0) and store.records.written == 1
        assert redis.Redis(port=own.port).exists(f"{store.prefix}:idem:{{b}}") == 1
    finally:
        store.close()
        own.stop()


def test_a_full_queue_drops_the_record_and_reports_it() -> None:
    release = threading.Event()
    written: list[str] = []

    def slow_write(items: Sequence[tuple[str, bytes]]) -> None:
        release.wait(5.0)
        written.extend(key for key, _ in items)

    writer = RecordWriter(slow_write, max_pending=2, max_batch=1)
    lost: list[tuple[str, str]] = []
    writer.on_lost = lambda detail, kind: lost.append((detail, kind))
    try:
        assert writer.put("k1", "fp", "{}") and writer.put("k2", "fp", "{}")  # one in flight, one queued
        assert not writer.put("k3", "fp", "{}")
        assert writer.pending("k3") is None and writer.lost == 1
        assert lost == [("1 record(s) dropped: the record queue is full", "other")]
        release.set()
        assert writer.flush(5.0)
        assert written == ["k1", "k2"]
        assert writer.put("k4", "fp", "{}")  # room again
        assert writer.flush(5.0) and written == ["k1", "k2", "k4"]
    finally:
        release.set()
        writer.close()


def test_close_writes_what_is_queued_and_refuses_more() -> None:
    gate = threading.Event()
    written: list[tuple[str, bytes]] = []

    def write(items: Sequence[tuple[str, bytes]]) -> None:
        gate.wait(5.0)
        written.extend(items)

    writer = RecordWriter(write)
    for i in range(5):
        assert writer.put(f"k{i}", f"fp{i}", f'{{"i": {i}}}')
    gate.set()
    writer.close(5.0)
    assert [key for key, _ in written] == [f"k{i}" for i in range(5)]
    assert written[3][1] == RecordWriter.encode("fp3", '{"i": 3}')
    assert not writer.put("late", "fp", "{}") and writer.lost == 1


def test_a_writer_that_fails_goes_on() -> None:
    calls: list[int] = []

    def flaky(items: Sequence[tuple[str, bytes]]) -> None:
        calls.append(len(items))
        if len(calls) == 1:
            raise OSError("broken pipe")

    writer = RecordWriter(flaky, on_error=lambda exc: "connection")
    lost: list[tuple[str, str]] = []
    writer.on_lost = lambda detail, kind: lost.append((detail, kind))
    try:
        writer.put("k1", "fp", "{}")
        assert writer.flush(5.0)
        writer.put("k2", "fp", "{}")
        assert writer.flush(5.0)
        assert writer.lost == 1 and writer.written == 1
        assert lost == [("1 record(s) not written: OSError: broken pipe", "connection")]
    finally:
        writer.close()


def _child_remembers(url: str, prefix: str) -> None:  # in a forked worker
    store = _INHERITED[0]
    apply(store, "child", "fp-c")
    store.remember("child", "fp-c", recorded_answer("child"))
    raise SystemExit(0 if store.flush(5.0) and store.records is not None and store.records.written == 1 else 3)


_INHERITED: list[RedisStore] = []


def test_a_forked_worker_writes_its_own_records(redis_url: tuple[str, str]) -> None:
    url, prefix = redis_url
    store = RedisStore(url, prefix=f"{prefix}-fork", budget_s=2.0)
    _INHERITED[:] = [store]
    admin = redis.Redis.from_url(url)
    try:
        apply(store, "parent", "fp-p")
        store.remember("parent", "fp-p", recorded_answer("parent"))  # the parent's writer thread is running
        child = multiprocessing.get_context("fork").Process(target=_child_remembers, args=(url, prefix))
        child.start()
        child.join(20)
        assert child.exitcode == 0
        assert admin.get(f"{store.prefix}:idem:{{child}}").startswith(b"fp-c\n")
        assert store.flush(5.0) and admin.get(f"{store.prefix}:idem:{{parent}}").startswith(b"fp-p\n")
    finally:
        _INHERITED.clear()
        admin.close()
        store.close()
