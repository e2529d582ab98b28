"""Window definitions and the plan that groups them by entity.

Windows that share an entity, an aggregated field and a filter share one
series per entity value in the store: its recent events kept one by one
(the exact part) and, when a window reaches back more than a day, hourly
buckets of the older ones. Label windows (`WindowSpec.label`) have series
of their own, written by label feedback (`bind_feedback`) and only read by
scored transactions. The plan is compiled once per rule set; per
transaction it is only *bound* to the field values.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
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
    #: Seconds since the entity's oldest event in the window (the transaction itself included).
    FIRST_SEEN = "first_seen"
    #: Seconds since the entity's newest event in the window other than the transaction itself.
    SINCE_PREVIOUS = "since_previous"
    #: 1 when the entity has no event in the window other than the transaction itself, else 0.
    IS_NEW = "is_new"


#: Store codes for aggregates; AVG is computed from SUM and COUNT.
AGG_CODES = {
    Aggregate.COUNT: 1,
    Aggregate.SUM: 2,
    Aggregate.MIN: 3,
    Aggregate.MAX: 4,
    Aggregate.DISTINCT: 5,
    Aggregate.FIRST_SEEN: 6,
    Aggregate.SINCE_PREVIOUS: 7,
    Aggregate.IS_NEW: 8,
}
#: Aggregates over the event times of an entity, exact over their whole duration (never in hourly
#: buckets), no delay: up to a day they read the entity's count series, longer its time series.
TIME_AGGREGATES = frozenset({Aggregate.FIRST_SEEN, Aggregate.SINCE_PREVIOUS, Aggregate.IS_NEW})
#: The pseudo field of a time series: the events of one entity (and filter), their times alone,
#: kept exactly for the longest time window (over a day) of the group and capped like value series.
TIME_FIELD = "@time"
#: A window over a transaction attribute aggregates the field `attributes.NAME`.
ATTRIBUTE_PREFIX = "attributes."

#: Default cap on the events of one value series (see WindowPlan).
DEFAULT_MAX_EVENTS = 5_000

#: Windows whose duration plus delay is at most this are exact; longer ones
#: (except distinct counts) read hourly buckets for their old part.
EXACT_MS = 86_400_000
#: Width of a bucket: a bucketed window misses less than this at each
#: rounded edge (see docs/windows.md, "Long windows").
BUCKET_MS = 3_600_000

#: Numeric fields a window may aggregate -> the integer the store keeps for each
#: (exact sums, identical in Lua and Python).
NUMERIC_FIELDS = {
    "amount": "amount_base_minor",  # minor units of the base currency
    "amount_original": "amount_original_milli",  # thousandths of a major unit of the transaction currency
    "amount_minor": "amount_minor",  # minor units of the transaction currency, as sent
    "hour": "hour",
    "day_of_week": "day_of_week",
}
#: Stored field -> (enriched field it is computed from, multiplier, scale back; None: the plan's amount scale).
STORED_NUMBERS: dict[str, tuple[str, int, float | None]] = {
    "amount_base_minor": ("amount_base_minor", 1, None),
    "amount_original_milli": ("amount_original", 1000, 0.001),
    "amount_minor": ("amount_minor", 1, 1.0),
    "hour": ("hour", 1, 1.0),
    "day_of_week": ("day_of_week", 1, 1.0),
}

#: Outcomes of label feedback a window can hold (WindowSpec.label).
FRAUD, GENUINE, ANY_LABEL = "fraud", "genuine", "any"
LABELS = (FRAUD, GENUINE)

#: Window read modes: exact; bucketed without delay (old part in buckets, the
#: current hour exact); bucketed with delay (whole buckets only).
EXACT, BUCKETED, BUCKETED_DELAYED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One window: `aggregate` of `field` over events of `entity` in (t - delay - duration, t - delay]."""

    name: str
    entity: tuple[str, ...]
    aggregate: Aggregate
    duration_ms: int
    field: str | None = None
    #: Condition text over the enriched fields: only events that pass it are in the window.
    filter: str | None = None
    delay_ms: int = 0
    #: The compiled filter (engine.rules.expr), required with `filter`; compared through `filter`.
    filter_fn: Callable[[Mapping[str, Any]], bool] | None = dc_field(default=None, compare=False, repr=False)
    #: Which events the window holds: None for scored transactions; for label
    #: feedback, the outcome it counts (FRAUD, GENUINE, or ANY_LABEL for both).
    #: A feedback event's time is when its label became known.
    label: str | None = None

    @property
    def bucketed(self) -> bool:
        if self.aggregate is Aggregate.DISTINCT or self.aggregate in TIME_AGGREGATES:
            return False
        return self.duration_ms + self.delay_ms > EXACT_MS


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """How the store computes one window."""

    output: int  # position in the plan's raw output vector
    agg_code: int
    duration_ms: int
    delay_ms: int = 0
    mode: int = EXACT


@dataclass(frozen=True, slots=True)
class Group:
    """Windows that share an entity, an aggregated field and a filter, hence one series of events.

    Each entity value has one series per group: its events ordered by time,
    each with the one value the group aggregates (none for counts), and
    hourly buckets when a window of the group is bucketed.
    """

    entity: tuple[str, ...]
    value_field: str | None  # the stored field kept with each event
    windows: tuple[StoredWindow, ...]
    retention_ms: int  # of the exact part: longest exact reach (at least an hour when bucketed) + lateness
    bucket_retention_ms: int = 0  # of the buckets: longest bucketed reach + lateness; 0: no buckets
    filter: str | None = None
    filter_fn: Callable[[Mapping[str, Any]], bool] | None = dc_field(default=None, compare=False, repr=False)
    label: str | None = None  # feedback groups: the outcome they hold (see WindowSpec.label)
    # Derived once at load, read on every transaction:
    tag: str = ""  # the entity's fields joined: 'card_id' or 'card_id+merchant_id'
    storage: str = ""  # stable name of the series: 'card_id', 'card_id#amount_base_minor', + '?f<hash>'
    suffix: str = ""  # '' or ':f<hash of the filter>' (Redis key suffix)
    numeric: bool = False  # the stored value is an integer (sums, extremes), not a string
    #: What the in-process store prepares its per-plan table from (once per plan), as one flat tuple:
    #: (storage, retention_ms, longest retention in s, value series?, numeric,
    #:  ((output, agg_code, reach = duration + delay, delay, mode), ...), bucket retention ms).
    layout: tuple[str, int, float, bool, bool, tuple[tuple[int, int, int, int, int], ...], int] = dc_field(
        default=("", 0, 0.0, False, False, (), 0), compare=False, repr=False
    )

    @classmethod
    def make(
        cls,
        entity: tuple[str, ...],
        value_field: str | None,
        windows: tuple[StoredWindow, ...],
        retention_ms: int,
        bucket_retention_ms: int = 0,
        filter_text: str | None = None,
        filter_fn: Callable[[Mapping[str, Any]], bool] | None = None,
        label: str | None = None,
    ) -> Group:
        tag = "+".join(entity)
        storage = tag if value_field is None else f"{tag}#{value_field}"
        suffix = ""
        if label is not None:  # label feedback never shares a series with transactions
            suffix = f":l{label}"
            storage += f"!{label}"
        if filter_text is not None:
            digest = hashlib.sha256(filter_text.encode()).hexdigest()[:10]
            suffix += f":f{digest}"
            storage += f"?f{digest}"
        numeric = value_field in STORED_NUMBERS
        layout = (
            storage,
            retention_ms,
            max(retention_ms, bucket_retention_ms) / 1000.0,
            value_field is not None,
            numeric,
            tuple((w.output, w.agg_code, w.duration_ms + w.delay_ms, w.delay_ms, w.mode) for w in windows),
            bucket_retention_ms,
        )
        return cls(
            entity,
            value_field,
            windows,
            retention_ms,
            bucket_retention_ms,
            filter_text,
            filter_fn,
            label,
            tag,
            storage,
            suffix,
            numeric,
            layout,
        )


class BoundGroup(NamedTuple):
    """A group bound to one transaction: its entity value, the value it stores, and whether it is added.

    (Named tuples: built for every group of every transaction, and cheaper to
    build than frozen dataclasses while just as immutable.)
    """

    group: Group
    entity_value: str
    value: str
    add: bool = True  # False: the transaction fails the group's filter; its windows are only read


class BoundWindows(NamedTuple):
    """The windows of one transaction, ready for a store."""

    transaction_id: str
    event_time_ms: int
    groups: tuple[BoundGroup, ...]  # only groups whose entity is present


#: A group's key (entity, stored field, filter, label) and one window need (key, code, duration, delay, mode).
_GroupKey = tuple[tuple[str, ...], str | None, str | None, str | None]
_Need = tuple[_GroupKey, int, int, int, int]


def _passes(fn: Callable[[Mapping[str, Any]], bool], fields: Mapping[str, Any]) -> bool:
    try:
        return bool(fn(fields))
    except (ArithmeticError, TypeError, ValueError, KeyError):
        return False


def _value_source(value_field: str | None) -> str | None:
    """The field a group's stored value is read from: None when it keeps no value (counts, times)."""
    if value_field is None or value_field == TIME_FIELD:
        return None
    if value_field in STORED_NUMBERS:
        return STORED_NUMBERS[value_field][0]
    return value_field


_PLAIN, _AVERAGE, _SECONDS = 0, 1, 2


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

        filters: dict[str | None, Callable[[Mapping[str, Any]], bool] | None] = {None: None}
        needs: list[list[_Need]] = []
        for spec in self.specs:
            if spec.filter is not None and spec.filter not in filters:
                if spec.filter_fn is None:
                    raise ValueError(
                        f"window {spec.name!r} has a filter but no compiled filter_fn (the rule loader compiles it)"
                    )
                filters[spec.filter] = spec.filter_fn
            count_key = (spec.entity, None, spec.filter, spec.label)
            stored = None if spec.field is None else NUMERIC_FIELDS.get(spec.field, spec.field)
            value_key = (spec.entity, stored, spec.filter, spec.label)
            d, delay = spec.duration_ms, spec.delay_ms
            mode = (BUCKETED_DELAYED if delay else BUCKETED) if spec.bucketed else EXACT
            if spec.aggregate in TIME_AGGREGATES:
                if delay or spec.field is not None:
                    raise ValueError(
                        f"window {spec.name!r}: a {spec.aggregate.value} window takes no field and no delay"
                    )
                # Up to a day, the entity's count series holds the events already (exactly, uncapped, as
                # counts of a day); longer, a time series of their own, capped, so that a 90-day window
                # of a busy entity does not keep 90 days of its events one by one.
                time_key = count_key if d <= EXACT_MS else (spec.entity, TIME_FIELD, spec.filter, spec.label)
                needs.append([(time_key, AGG_CODES[spec.aggregate], d, 0, EXACT)])
            elif spec.aggregate is Aggregate.COUNT:
                needs.append([(count_key, AGG_CODES[Aggregate.COUNT], d, delay, mode)])
            elif spec.aggregate is Aggregate.AVG:
                needs.append(
                    [
                        (value_key, AGG_CODES[Aggregate.SUM], d, delay, mode),
                        (count_key, AGG_CODES[Aggregate.COUNT], d, delay, mode),
                    ]
                )
            else:
                needs.append([(value_key, AGG_CODES[spec.aggregate], d, delay, mode)])

        # One group per series key; identical needs share one stored window.
        per_group: dict[_GroupKey, list[tuple[int, int, int, int]]] = {}
        for need in needs:
            for key, *rest in need:
                if tuple(rest) not in per_group.setdefault(key, []):
                    per_group[key].append(tuple(rest))  # type: ignore[arg-type]
        index: dict[_Need, int] = {}
        groups = []
        for key, wins in per_group.items():
            stored_windows = []
            for code, d, delay, mode in wins:
                index[(key, code, d, delay, mode)] = len(index)
                stored_windows.append(StoredWindow(index[(key, code, d, delay, mode)], code, d, delay, mode))
            exact_reach = [d + delay for _, d, delay, mode in wins if mode == EXACT]
            bucket_reach = [d + delay for _, d, delay, mode in wins if mode != EXACT]
            # The exact part also holds the current hour of a bucketed window.
            exact = max([*exact_reach, BUCKET_MS if bucket_reach else 0])
            buckets = max(bucket_reach) + allowed_lateness_ms if bucket_reach else 0
            groups.append(
                Group.make(
                    key[0],
                    key[1],
                    tuple(stored_windows),
                    exact + allowed_lateness_ms,
                    buckets,
                    key[2],
                    filters.get(key[2]),
                    key[3],
                )
            )
        self.groups = tuple(groups)
        #: Outcomes some window counts: replay makes feedback events only for these.
        self.labels = frozenset(
            label
            for g in self.groups
            if g.label is not None
            for label in (LABELS if g.label == ANY_LABEL else (g.label,))
        )
        self.raw_size = len(index)
        # What `bind` reads per group: the entity's one field (None when composite),
        # the stored value's source field (None: no value; an attribute's name is read
        # from the attribute map) and multiplier, and the filter.
        self._binders = tuple(
            (
                g,
                g.entity[0] if len(g.entity) == 1 else None,
                _value_source(g.value_field),
                STORED_NUMBERS[g.value_field][1] if g.value_field in STORED_NUMBERS else 0,
                g.filter,
                g.filter_fn,
                g.label,
            )
            for g in self.groups
        )

        # _finish[i] = (how, raw index a, raw index b, scale) for spec i; how: _PLAIN, _AVERAGE (a / b)
        # or _SECONDS (a time window: raw = milliseconds + 1, 0 = no such event, read as missing)
        self._finish: list[tuple[int, int, int, float]] = []
        for spec, need in zip(self.specs, needs, strict=True):
            scale = 1.0
            if spec.field in NUMERIC_FIELDS:
                own = STORED_NUMBERS[NUMERIC_FIELDS[spec.field]][2]
                scale = amount_scale if own is None else own
            a = index[need[0]]
            b = index[need[1]] if len(need) > 1 else 0
            how = _PLAIN
            if spec.aggregate is Aggregate.AVG:
                how = _AVERAGE
            elif spec.aggregate in (Aggregate.FIRST_SEEN, Aggregate.SINCE_PREVIOUS):
                how = _SECONDS
            self._finish.append((how, a, b, scale))
        self._finish_rows = tuple((name, *row) for name, row in zip(self.names, self._finish, strict=True))

    def subset(self, names: Sequence[str]) -> WindowPlan:
        """A plan of only the named windows (same lateness, scale and cap): the fallback's short windows."""
        keep = set(names)
        return WindowPlan(
            [s for s in self.specs if s.name in keep],
            self.allowed_lateness_ms,
            self.amount_scale,
            self.max_events_per_series,
        )

    def bind(self, transaction_id: str, event_time_ms: int, fields: Mapping[str, Any]) -> BoundWindows:
        """A scored transaction: added to the windows of transactions (that it passes), read from all."""
        return self._bind(transaction_id, event_time_ms, fields, None)

    def bind_feedback(self, event_id: str, known_at_ms: int, fields: Mapping[str, Any], label: str) -> BoundWindows:
        """A label that became known at `known_at_ms` for the transaction whose fields are `fields`.

        Only the feedback groups that hold `label` take part (added when the
        transaction passes their filter); nothing is read for the caller.
        """
        return self._bind(event_id, known_at_ms, fields, label)

    def _bind(self, event_id: str, event_time_ms: int, fields: Mapping[str, Any], feedback: str | None) -> BoundWindows:
        bound = []
        passed: dict[str, bool] = {}
        for g, single, source, multiplier, filter_text, filter_fn, label in self._binders:
            if feedback is not None and (label is None or (label != feedback and label != ANY_LABEL)):
                continue  # a label touches only the feedback groups of its outcome
            if single is not None:
                entity_value = fields[single]
                if entity_value == "":
                    continue  # entity not sent: this group is neither updated nor read
            else:
                parts = [fields[f] for f in g.entity]
                if "" in parts:
                    continue
                entity_value = SEPARATOR.join(parts)
            if source is None:
                value = ""
            elif multiplier > 1:  # a fraction kept as an integer (thousandths)
                value = str(round(fields[source] * multiplier))
            elif source.startswith(ATTRIBUTE_PREFIX):
                value = fields["attributes"].get(source[len(ATTRIBUTE_PREFIX) :], "")
            else:
                value = str(fields[source])
            if feedback is None and label is not None:
                bound.append(BoundGroup(g, entity_value, value, False))  # a transaction only reads labels
            elif filter_text is None:
                bound.append(BoundGroup(g, entity_value, value))
            else:
                ok = passed.get(filter_text)
                if ok is None:
                    ok = passed[filter_text] = filter_fn is not None and _passes(filter_fn, fields)
                bound.append(BoundGroup(g, entity_value, value, ok))
        return BoundWindows(event_id, event_time_ms, tuple(bound))

    def finish(self, raw: Sequence[int]) -> dict[str, float]:
        """Turn the store's raw integers (0 where absent) into named window values."""
        return self.finish_into(raw, {})

    def finish_into(self, raw: Sequence[int], out: dict[str, Any]) -> dict[str, Any]:
        """`finish`, written into `out` (a transaction's field map); returns `out`."""
        for name, how, a, b, scale in self._finish_rows:
            if how == _PLAIN:
                out[name] = raw[a] * scale
            elif how == _AVERAGE:
                count = raw[b]
                out[name] = raw[a] * scale / count if count else 0.0
            else:
                value = raw[a]
                out[name] = (value - 1) / 1000.0 if value else math.nan
        return out

    def missing(self) -> dict[str, float]:
        """Window values when the store could not be reached: NaN, never a guess."""
        return {name: float("nan") for name in self.names}
