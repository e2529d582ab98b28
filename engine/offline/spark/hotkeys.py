"""Hot keys: an entity with a large share of all events, split by time so that it is not one task.

A series (one entity value of one window group) is replayed in event-time
order by one task. A merchant with 40 % of the traffic would make its group's
series one task as long as 40 % of the job. Such a series is split at times
S1 < S2 < ...: chunk c replays the events of [S(c), S(c+1)) and reports their
answers, after replaying, as a warm-up, the events of the `overlap_ms` before
S(c) (reported by the chunk before).

Why the answers are the local replay's, exactly. In a replay every write to a
series comes in time order (transactions sorted by event time, labels by the
time they became known), so nothing is ever too late to add. With
O = `overlap_ms` (the group's longest window plus delay, at least one hour
when it has hourly buckets, plus the allowed lateness) and W = S - O:

- a read at t >= S covers events newer than t - (duration + delay) >= W,
  and whole hourly buckets starting after that time: only events >= W;
- the events >= W that a series keeps are the same whether or not it saw the
  older ones: they are dropped by the same cutoffs (the newest event's time
  minus the retention), and the cap on a value series drops the oldest first,
  so older events go before any event >= W does;
- the one state an older event can change is a repeated transaction id: an id
  added at t1 < W and again at t2 >= W is a retry in the whole replay (moved,
  not added to its hourly bucket a second time) but a new event in the chunk.
  `safe_splits` drops every split point whose warm-up start W lies strictly
  after one occurrence of a repeated id of that series and at or before
  another: the chunks on either side of it are then replayed as one.

`tests/unit/offline/test_spark_hotkeys.py` holds these rules to the reference on hostile
streams, and the Spark parity tests check a merchant with 40 % of the traffic.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

from engine.windows.spec import Group


def overlap_ms(group: Group) -> int:
    """How long before a split point a chunk of this group's series starts replaying (see the module docstring)."""
    return max(group.retention_ms, group.bucket_retention_ms)


def split_points(quantiles: Iterable[int | None]) -> list[int]:
    """Split times from a series' time quantiles: distinct and ascending."""
    return sorted({int(q) for q in quantiles if q is not None})


def safe_splits(splits: Sequence[int], overlap: int, spans: Iterable[tuple[int, int]]) -> list[int]:
    """The split points whose warm-up start no repeated id straddles.

    `spans` are (first, last) event times of each transaction id added more
    than once to the series. A split S is unsafe when first < S - overlap <= last.
    """
    ordered = sorted(spans)
    firsts = [first for first, _ in ordered]
    # For each prefix of spans by first time, the latest last time among them.
    latest: list[int] = []
    for _, last in ordered:
        latest.append(max(last, latest[-1]) if latest else last)
    out = []
    for split in splits:
        start = split - overlap
        k = bisect_right(firsts, start - 1)  # spans with first < start
        if k and latest[k - 1] >= start:
            continue
        out.append(split)
    return out


def chunks_of(t: int, splits: Sequence[int], overlap: int) -> list[tuple[int, bool]]:
    """The chunks that replay an event at time t: (chunk, whether it is the chunk that reports it).

    Chunk 0 holds the events before the first split, chunk c those of
    [splits[c - 1], splits[c]); a later chunk c replays the event as warm-up
    when t >= splits[c - 1] - overlap. (The Spark job computes the same with
    an SQL expression, `chunk_expression`; a test holds the two equal.)
    """
    owner = bisect_right(splits, t)
    out = [(owner, True)]
    for c in range(owner + 1, len(splits) + 1):
        if splits[c - 1] - overlap <= t:
            out.append((c, False))
    return out


def chunk_expression(time: str = "t", splits: str = "splits", overlap: str = "overlap") -> str:
    """`chunks_of` in Spark SQL: an array of (chunk, owner) structs for each event row."""
    owner = f"size(filter({splits}, s -> s <= {time}))"
    return (
        f"IF({splits} IS NULL, array(named_struct('chunk', 0, 'owner', true)), "
        f"concat(array(named_struct('chunk', {owner}, 'owner', true)), "
        f"transform(filter(transform({splits}, (s, i) -> IF(i + 1 > {owner} AND s - {overlap} <= {time}, i + 1, -1)), "
        f"c -> c >= 0), c -> named_struct('chunk', c, 'owner', false))))"
    )
