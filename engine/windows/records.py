"""Retry records written to Redis behind the answer (write-behind).

A scored transaction's response is kept for its retries. Written in the
caller's thread, that is a second Redis round trip on the payment's critical
path after the answer is already known. `RecordWriter` takes it off that path:
the caller hands over the response, one background thread encodes the queued
records (JSON, then zlib) and writes them in one pipeline, and the caller
answers the gateway without waiting.

Why this is safe: the windows call has already claimed the transaction id
(fingerprint, no response). A retry that reaches Redis before the record finds
a transaction "seen but not answered" and is scored again without adding its
event twice. A retry that reaches this process first is answered from the
records still queued here (`pending`), exactly as from Redis. A record that
cannot be written (Redis down, the queue full) is lost the same way: its retry
is scored again, counting nothing twice. Losses are reported through
`on_lost(detail, kind)`.

The thread starts with the first record in the process that writes it (a
forked worker starts its own, with an empty queue) and `close` writes what is
queued before it stops.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Sequence

from engine.transaction import Recorded

#: A queued record: key, fingerprint, the response (or its JSON, already encoded).
Queued = tuple[str, str, "Recorded | str"]


def _json(response: Recorded | str) -> str:
    return response if isinstance(response, str) else response.to_json()


class RecordWriter:
    """One background thread writing queued records with `write(items)`; at most `max_pending` queued."""

    def __init__(
        self,
        write: Callable[[Sequence[tuple[str, bytes]]], None],
        *,
        max_pending: int = 10_000,
        max_batch: int = 256,
        linger_s: float = 0.002,
        on_error: Callable[[BaseException], str] | None = None,
    ) -> None:
        """`write` stores (key, record bytes) pairs or raises; `on_error(exc)` notes a failure, returns its kind."""
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be positive")
        self._write = write
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._on_error = on_error or (lambda exc: "other")
        #: on_lost(detail, kind): records that will not reach Redis (set by the pipeline that owns the answers).
        self.on_lost: Callable[[str, str], None] = lambda detail, kind: None
        self._cond = threading.Condition()
        self._queue: list[Queued] = []
        self._pending: dict[str, Queued] = {}  # key -> the newest queued or in-flight record
        self._busy = False  # a batch is being written
        self._closing = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.lost = 0
        # A forked worker starts empty, with a lock and a thread of its own (the parent's
        # thread does not exist there, and its lock may have been held at the fork).
        after_fork = weakref.WeakMethod(self._forget_parent)
        os.register_at_fork(after_in_child=lambda: (method := after_fork()) is not None and method())

    @staticmethod
    def encode(fingerprint: str, response_json: str) -> bytes:
        """The record as Redis keeps it: fingerprint, newline, zlib-compressed JSON."""
        return fingerprint.encode() + b"\n" + zlib.compress(response_json.encode(), 1)

    def put(self, key: str, fingerprint: str, response: Recorded | str) -> bool:
        """Queue a record (the response is encoded by the writer's thread, off the caller's path);
        False (and counted lost) when the queue is full or the writer is closed."""
        item: Queued = (key, fingerprint, response)
        with self._cond:
            if self._closing or len(self._pending) >= self._max_pending:
                full = not self._closing
            else:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="risk-records", daemon=True)
                    self._thread.start()
                self._queue.append(item)
                self._pending[key] = item
                self._cond.notify()
                return True
        self._lose(1, "dropped: the record queue is full" if full else "dropped: the store is closed", "other")
        return False

    @property
    def queued(self) -> int:
        """Records queued or being written."""
        return len(self._pending)

    def pending(self, key: str) -> tuple[str, str] | None:
        """(fingerprint, response JSON) of a record not yet written, or None."""
        item = self._pending.get(key)
        return None if item is None else (item[1], _json(item[2]))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued record was written (or lost); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _forget_parent(self) -> None:
        self._cond = threading.Condition()
        self._queue = []
        self._pending = {}
        self._busy = False
        self._thread = None
        self.written = self.lost = 0

    def _lose(self, n: int, detail: str, kind: str) -> None:
        with self._cond:  # counted from the callers' threads and the writer's
            self.lost += n
        self.on_lost(f"{n} record(s) {detail}", kind)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, nothing left
                closing = self._closing
            if not closing and self._linger_s:
                time.sleep(self._linger_s)  # let a few more records come: one write for them all
            with self._cond:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._busy = True
            try:
                # zlib releases the GIL while it compresses: the serving threads go on.
                self._write([(key, self.encode(fp, _json(response))) for key, fp, response in batch])
                self.written += len(batch)
            except Exception as exc:  # noqa: BLE001 - a lost record degrades, never crashes the writer
                self._lose(len(batch), f"not written: {type(exc).__name__}: {exc}", self._on_error(exc))
            finally:
                with self._cond:
                    for item in batch:
                        if self._pending.get(item[0]) is item:
                            del self._pending[item[0]]
                    self._busy = False
                    self._cond.notify_all()
