"""Fallback windows: the short windows a server process keeps in memory for when Redis does not answer.

When the window store is unavailable (Redis down, or its circuit breaker
open) a degraded answer would otherwise decide with no window at all, and
the rules that stop card testing, device farms and IP bursts would be
skipped. Instead each server process keeps, in an in-process store with the
very same semantics (`engine.windows.memory`), the rule set's *short*
windows: those that reach back at most `horizon_ms` (one hour by default),
count scored transactions (not labels) and are keyed on the entities in
`entities` (card, device, IP and user by default). Rules whose windows are
all among them run on the fallback's values; rules reading any other window
are skipped as before; the answer's `WINDOWS_UNAVAILABLE` reason says how
many fallback windows it read.

What a fallback count can miss, by construction (it is a lower bound of the
shared count, which is what threshold rules such as `card_count_10m >= 5`
need to stay sound):
- events handled by other processes or other instances (each process counts
  only what it saw itself);
- entities forgotten to bound memory: at most `max_entities` entity values
  per group are kept, the least recently written dropped first (an attacker
  who keeps paying stays among the most recent); series idle for longer than
  their window are dropped, as Redis keys expire;
- events older than the process (a restart starts empty).

The fallback is written on every scored call, not only during an outage: a
card-testing run that began before Redis failed is then already counted when
the first degraded answer reads it. That costs each call one in-process store
update of the few short windows (`benchmarks/pipeline_steps.py` reports it as
the `fallback` step) and memory bounded by `max_entities` per group.

Retries are not counted twice (ids are remembered for the horizon), and a
reused id with other content is still refused (IdempotencyConflict).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from engine.windows.memory import MemoryStore
from engine.windows.spec import WindowPlan
from engine.windows.store import IdempotencyConflict

#: Entities whose short windows the fallback keeps by default: the ones card testing,
#: device farms and IP bursts are keyed on (merchants are busy keys: their series are long).
DEFAULT_ENTITIES = frozenset({"card_id", "device_id", "ip", "user_id"})


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """Which windows a process keeps for degraded answers, and how much memory they may take."""

    horizon_ms: int = 3_600_000
    entities: frozenset[str] = DEFAULT_ENTITIES
    max_entities: int = 50_000  # entity values kept per group

    def eligible(self, plan: WindowPlan) -> tuple[str, ...]:
        """The names of the plan's windows the fallback keeps."""
        return tuple(
            s.name
            for s in plan.specs
            if s.label is None and s.duration_ms + s.delay_ms <= self.horizon_ms and set(s.entity) <= self.entities
        )


class FallbackWindows:
    """The fallback store of one server process (module docstring). Thread-safe."""

    def __init__(self, policy: FallbackPolicy, max_event_delay_s: float = 300.0) -> None:
        self.policy = policy
        self.store = MemoryStore(
            idempotency_ttl_s=policy.horizon_ms / 1000.0,
            max_records=policy.max_entities * 4,
            max_event_delay_s=max_event_delay_s,
            max_series=policy.max_entities,
        )
        # The main plan -> its fallback plan and the names it answers (None: no window qualifies).
        self._plans: weakref.WeakKeyDictionary[WindowPlan, tuple[WindowPlan, frozenset[str]] | None] = (
            weakref.WeakKeyDictionary()
        )
        self.used = 0  # answers that read fallback windows

    def plan_for(self, plan: WindowPlan) -> tuple[WindowPlan, frozenset[str]] | None:
        """The fallback's plan for a rule set's plan (built once per plan) and its window names."""
        try:
            return self._plans[plan]
        except KeyError:
            pass
        names = self.policy.eligible(plan)
        built = (plan.subset(names), frozenset(names)) if names else None
        self._plans[plan] = built
        return built

    def add(
        self, plan: WindowPlan, transaction_id: str, event_time_ms: int, fields: dict[str, Any], fingerprint: str
    ) -> None:
        """Count a transaction the store answered for, so that the fallback knows it if the store fails next."""
        entry = self.plan_for(plan)
        if entry is None:
            return
        small = entry[0]
        try:
            self.store.apply(small, small.bind(transaction_id, event_time_ms, fields), fingerprint)
        except IdempotencyConflict:
            pass  # the store decided this id is new (its records outlive the fallback's): the store is right

    def read_into(
        self, plan: WindowPlan, transaction_id: str, event_time_ms: int, fields: dict[str, Any], fingerprint: str
    ) -> frozenset[str]:
        """Add the transaction to the fallback's windows and write their values into `fields`.

        Returns the names of the windows written (empty when none qualifies).
        Raises IdempotencyConflict for a reused id with other content.
        """
        entry = self.plan_for(plan)
        if entry is None:
            return frozenset()
        small, names = entry
        outcome = self.store.apply(small, small.bind(transaction_id, event_time_ms, fields), fingerprint)
        small.finish_into(outcome.raw, fields)
        self.used += 1
        return names

    def entities(self) -> int:
        """Entity values currently kept, over all groups (a gauge)."""
        return self.store.series_count()
