"""In-process window store: the embedded default and the store of offline replay.

Same semantics as the Redis store (a property test holds them equal): per
entity value and group, events ordered by (event time, transaction id), each
with the value the group aggregates; when an event at t is added, events
older than t minus the group's retention are dropped, and a value series
keeps at most the plan's cap of events.

The per-series loop (`MemoryStore._update_and_read_python`) also exists compiled,
in `engine/windows/_series.c`, with the series in C arrays: the store uses it
when it is built (`make install` builds it), which makes the windows of a
replay several times faster. The Python method below stays the reference,
step for step; tests hold the two and Redis equal on hostile streams.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable

from engine.transaction import Packed, Recorded
from engine.windows.records import RecordWriter
from engine.windows.spec import AGG_CODES, BUCKET_MS, BUCKETED, EXACT, Aggregate, BoundWindows, WindowPlan
from engine.windows.store import IdempotencyConflict, WindowsOutcome

try:
    from engine.windows import _series as native_series
except ImportError:  # not built (no C compiler): the Python loop below does the same work
    native_series = None  # type: ignore[assignment]

_COUNT = AGG_CODES[Aggregate.COUNT]
_SUM = AGG_CODES[Aggregate.SUM]
_MIN = AGG_CODES[Aggregate.MIN]
_MAX = AGG_CODES[Aggregate.MAX]
_DISTINCT = AGG_CODES[Aggregate.DISTINCT]
_FIRST = AGG_CODES[Aggregate.FIRST_SEEN]
_PREVIOUS = AGG_CODES[Aggregate.SINCE_PREVIOUS]
_NEW = AGG_CODES[Aggregate.IS_NEW]

#: What `_update_and_read` needs of a group, prepared once per plan (see `MemoryStore._groups_for`;
#: a `native_series.GroupSpec` of the same values when the compiled loop is used):
#: (its series by entity value, retention ms, idle time before expiry s, value series (capped)?,
#:  numeric value?, bucket retention ms, then its windows by how they are read: exact counts
#:  without delay (output, reach), other exact windows (output, code, reach, delay), bucketed
#:  windows without delay (output, code, reach), bucketed windows with a delay (output, code, reach, delay)).
_GroupState = tuple[
    "OrderedDict[str, _Series]",
    int,
    float,
    bool,
    bool,
    int,
    tuple[tuple[int, int], ...],
    tuple[tuple[int, int, int, int], ...],
    tuple[tuple[int, int, int], ...],
    tuple[tuple[int, int, int, int], ...],
]


class _Series:
    """Events of one entity value in one group, in (event time, transaction id) order.

    Three parallel lists (`ts` event times, `ids` transaction ids, `values`)
    so that window bounds are bisections of plain integers and sums, extremes
    and distinct counts work on plain slices. Events that arrive in time
    order (replay, and most live traffic) are appended; only a late event or
    a re-added id pays for a search among equal times. Groups with a bucketed
    window also keep hourly buckets: `bk` bucket index ascending, and running
    totals over every bucket the series ever had, so that a window over many
    buckets is two lookups, not a sum: `cb[i]` / `sb[i]` count and sum the
    events of all buckets before bucket i, `n_all` / `s_all` those of all
    buckets; `bmin` / `bmax` per bucket (value series only). Every event is
    added to its bucket once, when its id is first added.
    """

    __slots__ = ("at", "bk", "bmax", "bmin", "cb", "expires", "ids", "n_all", "s_all", "sb", "ts", "values")

    def __init__(self) -> None:
        self.ts: list[int] = []  # event times, ascending
        self.ids: list[str] = []  # transaction ids, ascending among equal times
        self.values: list[int | str] = []  # the aggregated value of each event ('' for counts)
        self.at: dict[str, int] = {}  # transaction id -> event time, to find a re-added id
        self.expires = 0.0  # wall clock (monotonic s) after which the series is idle, as Redis PEXPIRE
        self.bk: list[int] = []
        self.cb: list[int] = []
        self.sb: list[int] = []
        self.n_all = 0
        self.s_all = 0
        self.bmin: list[int] = []
        self.bmax: list[int] = []

    def position(self, t: int, txid: str) -> int:
        """Where (t, txid) is or would be in (event time, transaction id) order."""
        ts = self.ts
        lo = bisect_left(ts, t)
        return bisect_left(self.ids, txid, lo, bisect_right(ts, t, lo))

    def drop_oldest(self, n: int) -> None:
        at = self.at
        if at:  # empty when the store is told every id is new
            for dropped in self.ids[:n]:
                del at[dropped]
        del self.ts[:n]
        del self.ids[:n]
        del self.values[:n]

    def add_to_bucket(self, t: int, value: int, extremes: bool) -> None:
        """Add an event to the bucket of its hour, anywhere in the series (a late event, or a new hour)."""
        j = t // BUCKET_MS
        bk, cb, sb = self.bk, self.cb, self.sb
        i = bisect_left(bk, j)
        if i == len(bk) or bk[i] != j:
            bk.insert(i, j)
            cb.insert(i, cb[i] if i < len(cb) else self.n_all)
            sb.insert(i, sb[i] if i < len(sb) else self.s_all)
            if extremes:
                self.bmin.insert(i, value)
                self.bmax.insert(i, value)
        elif extremes:
            if value < self.bmin[i]:
                self.bmin[i] = value
            if value > self.bmax[i]:
                self.bmax[i] = value
        for k in range(i + 1, len(bk)):  # the buckets after it have one more event before them
            cb[k] += 1
            sb[k] += value
        self.n_all += 1
        self.s_all += value

    def drop_buckets_before(self, j: int) -> None:
        n = bisect_left(self.bk, j)
        if n:
            del self.bk[:n]
            del self.cb[:n]
            del self.sb[:n]
            if self.bmin:
                del self.bmin[:n]
                del self.bmax[:n]

    def bucket_count(self, lo: int, hi: int) -> int:
        """Events in buckets lo..hi-1 (positions)."""
        if lo >= hi:
            return 0
        return (self.cb[hi] if hi < len(self.cb) else self.n_all) - self.cb[lo]

    def bucket_sum(self, lo: int, hi: int) -> int:
        """Sum of the values of the events in buckets lo..hi-1 (positions)."""
        if lo >= hi:
            return 0
        return (self.sb[hi] if hi < len(self.sb) else self.s_all) - self.sb[lo]

    def read_buckets(self, code: int, first: int, last: int) -> int:
        """The aggregate over buckets first..last (bucket indexes, inclusive); 0 when none."""
        bk = self.bk
        lo = bisect_left(bk, first)
        hi = bisect_right(bk, last, lo)
        if lo >= hi:
            return 0
        if code == _COUNT:
            return self.bucket_count(lo, hi)
        if code == _SUM:
            return self.bucket_sum(lo, hi)
        if code == _MIN:
            return min(self.bmin[lo:hi])
        return max(self.bmax[lo:hi])


class MemoryStore:
    """Window and idempotency state in this process's memory.

    Thread-safe (one lock). Memory stays bounded:
    - a series idle for longer than its retention plus `max_event_delay_s`
      (wall clock since its last write, as Redis key expiry) is dropped; the
      series of one group expire in the order they were last written, so
      dropping them costs nothing per call;
    - a value series keeps at most the plan's `max_events_per_series` events;
    - idempotency records live `idempotency_ttl_s` (wall clock) and at most
      `max_records` are kept (the oldest go first), each packed
      (`Recorded.packed`: a score with its feature values in a float array,
      about 0.7 KB), never serialised;
    - `remember_responses=False` keeps no idempotency records at all, for
      replay over history (window updates are idempotent by transaction id
      regardless);
    - `expire_idle=False` keeps idle series, for a replay, which runs for
      minutes over history of months: wall-clock idleness means nothing
      there, and each series still drops the events older than its
      retention when it is written;
    - `max_series` (None: no cap) keeps at most that many entity values per
      group, the least recently written dropped first (the fallback windows
      of `engine.windows.fallback`, whose memory must stay bounded);
    - `new_ids=True` is the caller's word that no event id comes twice (a
      replay that checked its data): the store then keeps no index of ids
      to find a re-added one.

    `native` chooses the per-series loop: True the compiled one (ImportError
    when it is not built), False the Python one, None (the default) the
    compiled one when it is built, unless the environment says
    `RISK_NATIVE_WINDOWS=0` (an operator's switch back to the reference loop).
    """

    name = "memory"
    reads_groups = True
    records: RecordWriter | None = None  # `remember` keeps the answer in memory itself
    budget_s = 0.0

    def __init__(
        self,
        idempotency_ttl_s: float = 86400.0,
        remember_responses: bool = True,
        max_records: int = 1_000_000,
        max_event_delay_s: float = 86400.0 + 300.0,
        expire_idle: bool = True,
        new_ids: bool = False,
        native: bool | None = None,
        max_series: int | None = None,
    ) -> None:
        if native is None:
            native = native_series is not None and os.environ.get("RISK_NATIVE_WINDOWS", "").strip() != "0"
        elif native and native_series is None:
            raise ImportError("engine.windows._series is not built: install the package with a C compiler")
        self._native = native
        self._ttl_extra_s = max_event_delay_s
        self._expire_idle = expire_idle
        self._new_ids = new_ids
        self._max_series = max_series
        # Per group (storage name): its series by entity value, least recently written
        # first (one TTL per group, so also the order in which they expire).
        self._series: dict[str, OrderedDict[str, _Series]] = {}
        self._seen: OrderedDict[str, tuple[float, str, Packed | None]] = OrderedDict()
        # No series expires before this wall-clock time: the minimum over the oldest
        # written series of each group, lowered by every write. A series' expiry only
        # moves later, so `_drop_idle` can skip its walk until then.
        self._next_idle = float("inf")
        self._ttl = idempotency_ttl_s
        self._max_records = max_records
        self._remember = remember_responses
        self._lock = threading.Lock()
        # id(plan) -> (plan, what each of its groups needs per call): see `_groups_for`.
        self._plans: dict[int, tuple[WindowPlan, dict[int, _GroupState]]] = {}
        self._last_plan: WindowPlan | None = None  # the plan of the last call and its table
        self._last_groups: dict[int, _GroupState] = {}

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        with self._lock:
            first = True
            if self._remember:
                now = time.monotonic()
                self._expire(now)
                seen = self._seen.get(bound.transaction_id)
                if seen is not None:
                    if seen[1] != fingerprint:
                        raise IdempotencyConflict(bound.transaction_id)
                    if seen[2] is not None:
                        return WindowsOutcome(replay=seen[2].unpacked(), raw=())
                    first = False  # seen, not answered: its event is in already
                else:
                    self._seen[bound.transaction_id] = (now + self._ttl, fingerprint, None)
                    self._bound_records()
            self._drop_idle()
            raw = self._update_and_read(plan, bound, first)
            if self._max_series is not None:
                self._forget_least_recent(self._max_series)
            return WindowsOutcome(replay=None, raw=raw)

    def read(self, plan: WindowPlan, bound: BoundWindows) -> WindowsOutcome:
        """A dry run's windows: read, nothing written, no idempotency record checked or claimed."""
        dry = bound._replace(groups=tuple(bg._replace(add=False) for bg in bound.groups))
        with self._lock:
            return WindowsOutcome(replay=None, raw=self._update_and_read(plan, dry, False))

    def remember(self, transaction_id: str, fingerprint: str, response: Recorded) -> None:
        if not self._remember:
            return
        record = response.packed()  # kept as it is, not serialised: a retry gets it back unpacked
        with self._lock:
            self._seen[transaction_id] = (time.monotonic() + self._ttl, fingerprint, record)
            self._seen.move_to_end(transaction_id)
            self._bound_records()

    def close(self) -> None:
        pass

    def warm_up(self, plan: WindowPlan | None = None) -> bool:
        return True

    def breakers(self) -> dict[str, str]:
        return {}

    def apply_many(self, plan: WindowPlan, bounds: Iterable[BoundWindows]) -> list[tuple[int, ...]]:
        """`apply` for each in order, by a store that keeps no records (replay): the raw windows of each.

        What `apply` does per call besides the windows (records; expiring
        idle series, checked once here) does not apply, so a long run of
        events, such as one series replayed by the Spark engine, costs the
        per-series loop and little else.
        """
        if self._remember:
            raise ValueError("apply_many is for a store that keeps no records (remember_responses=False)")
        with self._lock:
            self._drop_idle()
            update = self._update_and_read
            return [update(plan, bound, True) for bound in bounds]

    def forget_series(self) -> None:
        """Drop every series of every group (what is prepared per plan stays).

        The Spark engine replays the series of one entity after another
        through one store: between two, the finished one is dropped, so the
        store holds one series at a time however many entities a task has.
        """
        with self._lock:
            for group_series in self._series.values():
                group_series.clear()
            self._next_idle = float("inf")

    def _drop_idle(self) -> None:
        """Forget series idle for longer than their TTL, as Redis lets such keys expire."""
        now = time.monotonic()
        if now <= self._next_idle:
            return  # no series can have expired yet (see _next_idle)
        soonest = float("inf")
        for group_series in self._series.values():
            while group_series:
                key = next(iter(group_series))
                expires = group_series[key].expires
                if expires >= now:
                    soonest = min(soonest, expires)
                    break
                del group_series[key]
        self._next_idle = soonest

    def _forget_least_recent(self, cap: int) -> None:
        """Keep at most `cap` entity values per group: the least recently written go first."""
        for group_series in self._series.values():
            while len(group_series) > cap:
                group_series.popitem(last=False)

    def series_count(self) -> int:
        """Entity values kept, over all groups."""
        with self._lock:
            return sum(len(group_series) for group_series in self._series.values())

    def _bound_records(self) -> None:
        while len(self._seen) > self._max_records:
            self._seen.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._seen:
            key, (expires, _, _) = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]

    @property
    def uses_fingerprints(self) -> bool:
        """Whether `apply` reads the fingerprint (only to check idempotency records)."""
        return self._remember

    def _groups_for(self, plan: WindowPlan) -> dict[int, _GroupState]:
        """What each group of the plan needs per call, by id(group); built once per plan.

        The plan is kept with its table, so the ids of its groups stay theirs.
        """
        entry = self._plans.get(id(plan))
        if entry is not None and entry[0] is plan:
            self._last_plan, self._last_groups = plan, entry[1]
            return entry[1]
        table: dict[int, _GroupState] = {}
        for group in plan.groups:
            counts: list[tuple[int, int]] = []
            other: list[tuple[int, int, int, int]] = []
            hourly: list[tuple[int, int, int]] = []
            delayed: list[tuple[int, int, int, int]] = []
            for output, code, reach, delay, mode in group.layout[5]:
                if mode == EXACT and code == _COUNT and not delay:
                    counts.append((output, reach))
                elif mode == EXACT:
                    other.append((output, code, reach, delay))
                elif mode == BUCKETED:
                    hourly.append((output, code, reach))
                else:
                    delayed.append((output, code, reach, delay))
            storage, retention_ms, retention_s, capped, numeric, _, bucket_ms = group.layout
            state: _GroupState = (
                self._series.setdefault(storage, OrderedDict()),
                retention_ms,
                retention_s + self._ttl_extra_s,
                capped,
                numeric,
                bucket_ms,
                tuple(counts),
                tuple(other),
                tuple(hourly),
                tuple(delayed),
            )
            table[id(group)] = native_series.GroupSpec(*state) if self._native else state  # type: ignore[assignment]
        if len(self._plans) >= 8:
            self._plans.clear()  # plans of rule sets no longer in use
        self._plans[id(plan)] = (plan, table)
        self._last_plan, self._last_groups = plan, table
        return table

    def _update_and_read(self, plan: WindowPlan, bound: BoundWindows, first: bool = True) -> tuple[int, ...]:
        """Add the event to each bound group's series (unless filtered out or too late), then read its windows.

        By the compiled loop (`_series.update_and_read`) or the Python one
        (`_update_and_read_python`, the reference): the same steps.
        """
        groups = self._last_groups if plan is self._last_plan else self._groups_for(plan)
        if not self._native:
            return self._update_and_read_python(plan, bound, first, groups)
        raw_values, self._next_idle = native_series.update_and_read(
            groups,
            bound.groups,
            bound.event_time_ms,
            bound.transaction_id,
            first,
            plan.raw_size,
            plan.max_events_per_series,
            self._new_ids,
            self._expire_idle,
            time.monotonic(),
            self._next_idle,
        )
        return raw_values  # type: ignore[no-any-return]

    def _update_and_read_python(
        self, plan: WindowPlan, bound: BoundWindows, first: bool, groups: dict[int, _GroupState]
    ) -> tuple[int, ...]:
        """`_update_and_read` in Python, the reference the compiled loop is tested against.

        Written for speed (it was most of replay time): the common case, an
        event newer than every event of its series, appends and adds to the
        newest hourly bucket inline; windows are read in the groups prepared
        by `_groups_for` (exact counts, other exact windows, bucketed windows,
        delayed bucketed windows), sharing the bisections they have in common.
        """
        raw = [0] * plan.raw_size
        t = bound.event_time_ms
        txid = bound.transaction_id
        now = time.monotonic()
        cap = plan.max_events_per_series
        next_idle = self._next_idle
        expire_idle = self._expire_idle
        new_ids = self._new_ids
        hour = t // BUCKET_MS
        try:
            for group, entity_value, bound_value, add in bound.groups:
                (group_series, retention_ms, idle_s, capped, numeric, bucket_ms, counts, other, hourly, delayed) = (
                    groups[id(group)]
                )
                passes = add  # the transaction passes the group's filter (even when too late to be added)
                series = group_series.get(entity_value)
                if series is None:
                    if not add:
                        continue  # nothing to read, and a filtered-out event writes nothing
                    series = group_series[entity_value] = _Series()  # the most recently written
                    ts, ids, values = series.ts, series.ids, series.values
                else:
                    ts, ids, values = series.ts, series.ids, series.values
                    if add and t < ts[-1] - retention_ms:
                        add = False  # too late: older than what the series keeps, it is only read
                if add:
                    if expire_idle:
                        group_series.move_to_end(entity_value)
                        expires = series.expires = now + idle_s
                        if expires < next_idle:
                            next_idle = expires
                    at = series.at
                    value = int(bound_value) if numeric else bound_value
                    old = None if new_ids else at.get(txid)
                    if old is None and (not ts or t > ts[-1]):
                        # In time order: the newest event, appended.
                        ts.append(t)
                        ids.append(txid)
                        values.append(value)
                        hi = len(ts)
                    else:
                        if old is not None:  # the same id again: replace, as ZADD does
                            i = series.position(old, txid)
                            del ts[i]
                            del ids[i]
                            del values[i]
                        i = series.position(t, txid)
                        ts.insert(i, t)
                        ids.insert(i, txid)
                        values.insert(i, value)
                        hi = -1  # found after the drops below
                    if not new_ids:
                        at[txid] = t
                    if bucket_ms:
                        bk = series.bk
                        if first and old is None:  # each event enters its bucket once
                            if not bk or bk[-1] < hour:  # a new newest hour: the common case
                                bk.append(hour)
                                series.cb.append(series.n_all)
                                series.n_all += 1
                                if numeric:
                                    series.sb.append(series.s_all)
                                    series.s_all += value  # type: ignore[operator]
                                    series.bmin.append(value)  # type: ignore[arg-type]
                                    series.bmax.append(value)  # type: ignore[arg-type]
                                else:
                                    series.sb.append(0)
                            elif bk[-1] == hour:  # the newest hour again
                                series.n_all += 1
                                if numeric:
                                    series.s_all += value  # type: ignore[operator]
                                    if value < series.bmin[-1]:  # type: ignore[operator]
                                        series.bmin[-1] = value  # type: ignore[assignment]
                                    if value > series.bmax[-1]:  # type: ignore[operator]
                                        series.bmax[-1] = value  # type: ignore[assignment]
                            else:
                                series.add_to_bucket(t, value if numeric else 0, numeric)  # type: ignore[arg-type]
                        if bk and bk[0] < (t - bucket_ms) // BUCKET_MS:
                            series.drop_buckets_before((t - bucket_ms) // BUCKET_MS)
                    # Drop what no window can need any more: events older than this event's
                    # time minus the retention (longest exact reach + allowed lateness).
                    cutoff = t - retention_ms
                    if ts[0] < cutoff:
                        # Events with time < cutoff, as Redis drops scores in [-inf, cutoff).
                        if ts[1] >= cutoff:  # just one, the common case (ts[-1] = t is kept)
                            if not new_ids:
                                del series.at[ids[0]]
                            del ts[0], ids[0], values[0]
                        else:
                            series.drop_oldest(bisect_left(ts, cutoff))
                    if capped and len(ts) > cap:
                        # A value series keeps at most `cap` events, oldest first out (as the Lua script).
                        series.drop_oldest(len(ts) - cap)
                    hi = len(ts) if hi >= 0 else bisect_right(ts, t)  # events with time <= t
                else:
                    hi = bisect_right(ts, t)
                for output, reach in counts:
                    raw[output] = hi - bisect_right(ts, t - reach, 0, hi)  # events in (t - d, t]
                for output, code, reach, delay in other:
                    lo = bisect_right(ts, t - reach, 0, hi)  # events with time > t - delay - d
                    top = bisect_right(ts, t - delay, lo, hi) if delay else hi  # ... and <= t - delay
                    if code == _COUNT:
                        raw[output] = top - lo
                    elif code == _SUM:
                        raw[output] = sum(values[lo:top])  # type: ignore[arg-type]
                    elif code == _DISTINCT:
                        distinct = set(values[lo:top])
                        distinct.discard("")
                        raw[output] = len(distinct)
                    elif code == _MAX:
                        raw[output] = max(values[lo:top], default=0)  # type: ignore[type-var,assignment]
                    elif code == _MIN:
                        raw[output] = min(values[lo:top], default=0)  # type: ignore[type-var,assignment]
                    elif code == _FIRST:  # the oldest event: milliseconds since it, + 1 (0: none)
                        raw[output] = t - ts[lo] + 1 if lo < top else 0
                    else:  # _PREVIOUS, _NEW: the newest event other than this transaction
                        gap = 0
                        i = top - 1
                        while i >= lo:
                            if ids[i] != txid:
                                gap = t - ts[i] + 1
                                break
                            i -= 1
                        raw[output] = gap if code == _PREVIOUS else int(passes and not gap)
                if hourly:
                    # Bucketed: whole hours after the hour of t - d up to the hour before t's
                    # (buckets bk[...:bhi]), and t's hour read exactly from the events.
                    lo = bisect_left(ts, hour * BUCKET_MS, 0, hi)
                    bk = series.bk
                    nbk = len(bk)
                    if nbk and bk[-1] == hour:  # t's own hour is the newest bucket: the common case
                        bhi = nbk - 1
                    elif not nbk or bk[-1] < hour:
                        bhi = nbk
                    else:  # a late event: newer hours exist
                        bhi = bisect_right(bk, hour - 1)
                    # Running totals up to bucket bhi, shared by every window of the group.
                    cb, sb = series.cb, series.sb
                    count_end = cb[bhi] if bhi < nbk else series.n_all
                    for output, code, reach in hourly:
                        blo = bisect_left(bk, (t - reach) // BUCKET_MS + 1, 0, bhi)
                        if code == _COUNT:
                            raw[output] = hi - lo + (count_end - cb[blo] if blo < bhi else 0)
                        elif code == _SUM:
                            in_buckets = (sb[bhi] if bhi < nbk else series.s_all) - sb[blo] if blo < bhi else 0
                            raw[output] = sum(values[lo:hi]) + in_buckets  # type: ignore[arg-type]
                        elif code == _MIN:
                            raw[output] = _least(values[lo:hi], series.bmin[blo:bhi])  # type: ignore[arg-type]
                        else:
                            raw[output] = _greatest(values[lo:hi], series.bmax[blo:bhi])  # type: ignore[arg-type]
                for output, code, reach, delay in delayed:
                    # Bucketed with a delay: whole hours after the hour of t - delay - d up to
                    # the hour before t - delay's.
                    last = (t - delay) // BUCKET_MS - 1
                    bk = series.bk
                    if not bk or bk[0] > last:
                        continue  # no bucket: 0
                    raw[output] = series.read_buckets(code, (t - reach) // BUCKET_MS + 1, last)
        finally:
            self._next_idle = next_idle
        return tuple(raw)


def _least(events: list[int], buckets: list[int]) -> int:
    """The smallest of the events and bucket minimums (0 when both are empty)."""
    if events:
        return min(min(events), min(buckets)) if buckets else min(events)
    return min(buckets) if buckets else 0


def _greatest(events: list[int], buckets: list[int]) -> int:
    """The largest of the events and bucket maximums (0 when both are empty)."""
    if buckets:
        return max(buckets + events) if events else max(buckets)
    return max(events) if events else 0
