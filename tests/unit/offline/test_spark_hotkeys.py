"""Hot series split by time (engine/offline/spark/hotkeys.py): chunked replays give the whole replay's answers.

No Spark here: the rules that the Spark job applies (`chunks_of`, `safe_splits`,
`overlap_ms`) are held to a whole replay through the very store the job
uses, on hostile streams of one series: retries (also after long gaps),
ties, bursts, caps, hourly buckets with and without delay, label-like
read-only events. The Spark job's SQL form of `chunks_of` is checked against
it in tests/test_spark_parity.py.
"""

from __future__ import annotations

import random

import pytest

from engine.offline.spark.hotkeys import chunks_of, overlap_ms, safe_splits, split_points
from engine.windows.memory import MemoryStore
from engine.windows.spec import Aggregate, BoundGroup, BoundWindows, WindowPlan, WindowSpec

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000

SPECS = [
    WindowSpec("c10m", ("merchant_id",), Aggregate.COUNT, 10 * MIN),
    WindowSpec("c1d", ("merchant_id",), Aggregate.COUNT, DAY),
    WindowSpec("c3d", ("merchant_id",), Aggregate.COUNT, 3 * DAY),
    WindowSpec("s1d", ("merchant_id",), Aggregate.SUM, DAY, field="amount"),
    WindowSpec("s3d", ("merchant_id",), Aggregate.SUM, 3 * DAY, field="amount"),
    WindowSpec("min3d", ("merchant_id",), Aggregate.MIN, 3 * DAY, field="amount"),
    WindowSpec("max2d", ("merchant_id",), Aggregate.MAX, 2 * DAY, field="amount"),
    WindowSpec("avg2d_before_1d", ("merchant_id",), Aggregate.AVG, 2 * DAY, field="amount", delay_ms=DAY),
    WindowSpec("c6h_before_2h", ("merchant_id",), Aggregate.COUNT, 6 * HOUR, delay_ms=2 * HOUR),
    WindowSpec("d1d", ("merchant_id",), Aggregate.DISTINCT, DAY, field="card_id"),
]


def _plan(lateness: int, cap: int) -> WindowPlan:
    return WindowPlan(SPECS, allowed_lateness_ms=lateness, amount_scale=0.01, max_events_per_series=cap)


Event = tuple[int, str, dict[str, str], bool]  # time, id, stored value per group storage, added (False: only read)


def _stream(seed: int, plan: WindowPlan) -> list[Event]:
    """One merchant's events in replay order: bursts, quiet days, retries (soon and weeks later), read-only events."""
    rng = random.Random(seed)
    t = 0
    out: list[Event] = []
    ids: list[tuple[int, str, dict[str, str]]] = []
    for k in range(rng.randint(250, 450)):
        t += rng.choice([0, 0, 1_000, 30_000, 5 * MIN, HOUR, 7 * HOUR, rng.randint(1, 4) * DAY])
        r = rng.random()
        if ids and r < 0.08:  # a retry: the same id (and value) again, now; now and then one from long ago
            _, tid, values = rng.choice(ids[-8:] if rng.random() < 0.97 else ids[-40:])
            out.append((t, tid, values, True))
            continue
        values = {
            g.storage: (str(rng.randint(1, 50_000)) if g.numeric else f"card{rng.randint(1, 9)}") for g in plan.groups
        }
        tid = f"t{k:04d}"
        ids.append((t, tid, values))
        out.append((t, tid, values, rng.random() > 0.1))  # some only read (e.g. they fail a filter)
    return out


def _answers(plan: WindowPlan, events: list[Event]) -> list[tuple[int, ...]]:
    """Each event's raw windows, every group replayed through one store in the given order (as the job does)."""
    store = MemoryStore(remember_responses=False, expire_idle=False)
    out = []
    for t, tid, values, add in events:
        bound = tuple(BoundGroup(g, "m-hot", values[g.storage], add) for g in plan.groups)
        out.append(store.apply(plan, BoundWindows(tid, t, bound), "").raw)
    return out


def _chunked(plan: WindowPlan, events: list[Event], splits: list[int]) -> list[tuple[int, ...] | None]:
    """The answers as the split replay reports them: each event by the chunk that owns it."""
    overlap = max(overlap_ms(g) for g in plan.groups)
    per_chunk: dict[int, list[tuple[int, bool]]] = {}
    for i, (t, *_rest) in enumerate(events):
        for chunk, owner in chunks_of(t, splits, overlap):
            per_chunk.setdefault(chunk, []).append((i, owner))
    out: list[tuple[int, ...] | None] = [None] * len(events)
    for members in per_chunk.values():
        answers = _answers(plan, [events[i] for i, _ in members])
        for (i, owner), raw in zip(members, answers, strict=True):
            if owner:
                out[i] = raw
    return out


def _spans(events: list[Event]) -> list[tuple[int, int]]:
    times: dict[str, list[int]] = {}
    for t, tid, _, add in events:
        if add:
            times.setdefault(tid, []).append(t)
    return [(min(ts), max(ts)) for ts in times.values() if len(ts) > 1]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("lateness", "cap"), [(0, 5_000), (10 * MIN, 12)])
def test_split_replay_gives_the_whole_replay_s_answers(seed: int, lateness: int, cap: int) -> None:
    plan = _plan(lateness, cap)
    events = _stream(seed, plan)
    whole = _answers(plan, events)
    times = [t for t, *_ in events]
    rng = random.Random(seed)
    wanted = split_points(rng.choice(times) for _ in range(rng.randint(8, 20)))
    overlap = max(overlap_ms(g) for g in plan.groups)
    splits = safe_splits(wanted, overlap, _spans(events))
    assert splits, "every split was dropped: the stream does not exercise chunks"
    assert _chunked(plan, events, splits) == whole


def test_the_overlap_is_the_longest_reach_plus_lateness() -> None:
    plan = _plan(10 * MIN, 5_000)
    # Bucketed windows (3 days; 2 days after a 1-day delay) reach 3 days back; the lateness comes on top.
    assert max(overlap_ms(g) for g in plan.groups) == 3 * DAY + 10 * MIN
    exact = WindowPlan([SPECS[0]], allowed_lateness_ms=0, amount_scale=0.01)
    assert overlap_ms(exact.groups[0]) == 10 * MIN


def test_a_retry_straddling_a_warm_up_start_would_change_the_answers_so_its_split_is_dropped() -> None:
    plan = WindowPlan([WindowSpec("c2d", ("merchant_id",), Aggregate.COUNT, 2 * DAY)], 0, 0.01)
    group = plan.groups[0]
    overlap = overlap_ms(group)  # 2 days: the buckets' reach (the exact part keeps one hour)
    # x, then nothing for three days, then x again (a retry: moved, not counted in its new hour's
    # bucket), then y an hour later.
    events: list[Event] = [
        (0, "x", {group.storage: ""}, True),
        (3 * DAY, "x", {group.storage: ""}, True),
        (3 * DAY + HOUR, "y", {group.storage: ""}, True),
    ]
    whole = _answers(plan, events)
    split = 3 * DAY  # its warm-up starts at 1 day: after the first x, before the second
    assert _chunked(plan, events, [split]) != whole  # the chunk counts the retry as a new event
    assert safe_splits([split], overlap, _spans(events)) == []
    assert safe_splits([split], overlap, []) == [split]
    assert _chunked(plan, events, []) == whole


def test_chunks_of_assigns_owners_and_warm_ups() -> None:
    splits = [100, 200, 300]
    assert chunks_of(50, splits, 60) == [(0, True), (1, False)]  # 100 - 60 <= 50
    assert chunks_of(30, splits, 60) == [(0, True)]
    assert chunks_of(100, splits, 60) == [(1, True)]  # a split time belongs to the chunk it starts
    assert chunks_of(250, splits, 160) == [(2, True), (3, False)]
    assert chunks_of(150, splits, 160) == [(1, True), (2, False), (3, False)]  # chunks shorter than the overlap
    assert chunks_of(999, splits, 60) == [(3, True)]
    assert split_points([5, None, 3, 5]) == [3, 5]
