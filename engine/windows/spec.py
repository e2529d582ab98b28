"""Window definitions and the plan that groups them by entity.

Windows that share an entity (e.g. every window keyed by `card_id`) share one
piece of state in the store: one sorted set of events per entity value, each
event carrying the few values its windows aggregate. The plan is compiled once
per rule set; per transaction it is only *bound* to the field values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Character that joins an entity's field values and an event's payload
#: values. Validation rejects control characters in every id, so it cannot
#: appear inside a value.
SEPARATOR = "\x1f"


class Aggregate(enum.Enum):
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    DISTINCT = "distinct"


#: Store codes for aggregates; AVG is computed from SUM and COUNT.
AGG_CODES = {Aggregate.COUNT: 1, Aggregate.SUM: 2, Aggregate.MIN: 3, Aggregate.MAX: 4, Aggregate.DISTINCT: 5}

#: Default cap on the events of one value series (see WindowPlan).
DEFAULT_MAX_EVENTS = 5_000

#: Numeric fields a window may aggregate, and the integer the store keeps for
#: each (exact sums, identical in Lua and Python); `scale` turns it back.
NUMERIC_FIELDS = {"amount": "amount_base_minor"}


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One window: `aggregate` of `field` over events of `entity` in the last `duration_ms`."""

    name: str
    entity: tuple[str, ...]
    aggregate: Aggregate
    duration_ms: int
    field: str | None = None


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """How the store computes one window: aggregate code and duration."""

    output: int  # position in the plan's raw output vector
    agg_code: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Group:
    """Windows that share an entity and an aggregated field, hence one series of events.

    Each entity value has one series per group: its events ordered by time,
    each with the one value the group aggregates (none for counts). Keeping
    one series per (entity, field) means adding a window over a new field
    starts a new series without touching the history of the others.
    """

    entity: tuple[str, ...]
    value_field: str | None  # the enriched field stored with each event
    windows: tuple[StoredWindow, ...]
    retention_ms: int  # longest window + allowed lateness
    # Derived once at load, read on every transaction:
    tag: str = ""  # the entity's fields joined: 'card_id' or 'card_id+merchant_id'
    storage: str = ""  # stable name of the series: 'card_id' or 'card_id#amount_base_minor'
    numeric: bool = False  # the stored value is an integer (sums, extremes), not a string
    #: What the in-process store reads on every transaction, as one flat tuple:
    #: (storage, retention_ms, retention in s, value series?, numeric, ((output, agg_code, duration_ms), ...)).
    layout: tuple[str, int, float, bool, bool, tuple[tuple[int, int, int], ...]] = field(
        default=("", 0, 0.0, False, False, ()), compare=False, repr=False
    )

    @classmethod
    def make(
        cls, entity: tuple[str, ...], value_field: str | None, windows: tuple[StoredWindow, ...], retention_ms: int
    ) -> Group:
        tag = "+".join(entity)
        storage = tag if value_field is None else f"{tag}#{value_field}"
        numeric = value_field in NUMERIC_FIELDS.values()
        layout = (
            storage,
            retention_ms,
            retention_ms / 1000.0,
            value_field is not None,
            numeric,
            tuple((w.output, w.agg_code, w.duration_ms) for w in windows),
        )
        return cls(entity, value_field, windows, retention_ms, tag, storage, numeric, layout)


class BoundGroup(NamedTuple):
    """A group bound to one transaction: its entity value and the value it stores.

    (Named tuples: built for every group of every transaction, and cheaper to
    build than frozen dataclasses while just as immutable.)
    """

    group: Group
    entity_value: str
    value: str


class BoundWindows(NamedTuple):
    """The windows of one transaction, ready for a store."""

    transaction_id: str
    event_time_ms: int
    groups: tuple[BoundGroup, ...]  # only groups whose entity is present


class WindowPlan:
    """Compiled window definitions of a rule set.

    The store returns one raw integer per stored window (count, sum, min,
    max, distinct); `finish` turns them into the feature values that rules
    and the model read: amounts in base-currency major units, averages from
    sum and count, 0 where the entity was not sent.
    """

    def __init__(
        self,
        specs: Sequence[WindowSpec],
        allowed_lateness_ms: int,
        amount_scale: float,
        max_events_per_series: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        self.specs = tuple(specs)
        self.allowed_lateness_ms = allowed_lateness_ms
        #: Value series (sums, extremes, distinct counts) keep at most this many
        #: events, oldest dropped first: reading them walks the events.
        self.max_events_per_series = max_events_per_series
        self.amount_scale = amount_scale
        self.names = tuple(s.name for s in self.specs)

        # What each spec needs from the store: (series key, aggregate code, duration).
        needs: list[list[tuple[tuple[tuple[str, ...], str | None], int, int]]] = []
        for spec in self.specs:
            count_key = (spec.entity, None)
            value_key = (spec.entity, None if spec.field is None else NUMERIC_FIELDS.get(spec.field, spec.field))
            d = spec.duration_ms
            if spec.aggregate is Aggregate.COUNT:
                needs.append([(count_key, AGG_CODES[Aggregate.COUNT], d)])
            elif spec.aggregate is Aggregate.AVG:
                needs.append([(value_key, AGG_CODES[Aggregate.SUM], d), (count_key, AGG_CODES[Aggregate.COUNT], d)])
            else:
                needs.append([(value_key, AGG_CODES[spec.aggregate], d)])

        # One group per series key; identical needs share one stored window.
        per_group: dict[tuple[tuple[str, ...], str | None], list[tuple[int, int]]] = {}
        for need in needs:
            for key, code, d in need:
                if (code, d) not in per_group.setdefault(key, []):
                    per_group[key].append((code, d))
        index: dict[tuple[tuple[tuple[str, ...], str | None], int, int], int] = {}
        groups = []
        for key, wins in per_group.items():
            stored = []
            for code, d in wins:
                index[(key, code, d)] = len(index)
                stored.append(StoredWindow(index[(key, code, d)], code, d))
            longest = max(d for _, d in wins)
            groups.append(Group.make(key[0], key[1], tuple(stored), longest + allowed_lateness_ms))
        self.groups = tuple(groups)
        self.raw_size = len(index)
        # What `bind` reads per group: the entity's one field (None when composite)
        # and the stored value's field.
        self._binders = tuple((g, g.entity[0] if len(g.entity) == 1 else None, g.value_field) for g in self.groups)

        # _finish[i] = (is_avg, raw index a, raw index b, scale) for spec i
        self._finish: list[tuple[bool, int, int, float]] = []
        for spec, need in zip(self.specs, needs, strict=True):
            scale = amount_scale if spec.field in NUMERIC_FIELDS else 1.0
            a = index[need[0]]
            b = index[need[1]] if len(need) > 1 else 0
            self._finish.append((spec.aggregate is Aggregate.AVG, a, b, scale))
        self._finish_rows = tuple((name, *row) for name, row in zip(self.names, self._finish, strict=True))

    def bind(self, transaction_id: str, event_time_ms: int, fields: Mapping[str, Any]) -> BoundWindows:
        bound = []
        for g, single, value_field in self._binders:
            if single is not None:
                entity_value = fields[single]
                if entity_value == "":
                    continue  # entity not sent: this group is neither updated nor read
            else:
                parts = [fields[f] for f in g.entity]
                if "" in parts:
                    continue
                entity_value = SEPARATOR.join(parts)
            value = "" if value_field is None else str(fields[value_field])
            bound.append(BoundGroup(g, entity_value, value))
        return BoundWindows(transaction_id, event_time_ms, tuple(bound))

    def finish(self, raw: Sequence[int]) -> dict[str, float]:
        """Turn the store's raw integers (0 where absent) into named window values."""
        return self.finish_into(raw, {})

    def finish_into(self, raw: Sequence[int], out: dict[str, Any]) -> dict[str, Any]:
        """`finish`, written into `out` (a transaction's field map); returns `out`."""
        for name, is_avg, a, b, scale in self._finish_rows:
            if is_avg:
                count = raw[b]
                out[name] = raw[a] * scale / count if count else 0.0
            else:
                out[name] = raw[a] * scale
        return out

    def missing(self) -> dict[str, float]:
        """Window values when the store could not be reached: NaN, never a guess."""
        return {name: float("nan") for name in self.names}
