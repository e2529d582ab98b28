"""Types of the compiled per-series loop (engine/windows/_series.c); see engine/windows/memory.py."""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

class Series:
    """Events of one entity value in one group (made by `update_and_read`)."""

    expires: float
    def __len__(self) -> int: ...
    def times(self) -> list[int]: ...

class GroupSpec:
    """What `update_and_read` needs of one window group, read once per plan."""

    series: OrderedDict[str, Any]
    def __init__(
        self,
        series: OrderedDict[str, Any],
        retention_ms: int,
        idle_s: float,
        capped: bool,
        numeric: bool,
        bucket_ms: int,
        counts: Sequence[tuple[int, int]],
        other: Sequence[tuple[int, int, int, int]],
        hourly: Sequence[tuple[int, int, int]],
        delayed: Sequence[tuple[int, int, int, int]],
    ) -> None: ...

def update_and_read(
    table: dict[int, Any],
    groups: tuple[tuple[object, str, str, bool], ...],
    t: int,
    txid: str,
    first: bool,
    raw_size: int,
    cap: int,
    new_ids: bool,
    expire_idle: bool,
    now: float,
    next_idle: float,
) -> tuple[tuple[int, ...], float]: ...
