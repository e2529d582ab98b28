"""The compiled rule set: the immutable values a loaded rules folder becomes.

`RuleSet` holds the rules, the window plan, the enricher (currency table,
time zone, geolocation), the model's score thresholds, the degraded policy,
named lists, derived features and the rule tests; `engine.rules.loader`
builds it from YAML. Nothing here reads a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.enrich import BOOL, NUMBER, Enricher
from engine.iso import COUNTRIES, CURRENCY_EXPONENTS
from engine.rules.archive import FileEntry
from engine.rules.expr import Condition
from engine.rules.lists import NamedList
from engine.rules.messages import Template
from engine.transaction import Action, Channel, Transaction
from engine.windows.spec import WindowPlan

SCORE = "score"
#: The values some fields can take; comparing with anything else is refused as unreachable.
DOMAINS: dict[str, frozenset[str]] = {
    "channel": frozenset(c.value for c in Channel),
    "currency": frozenset(CURRENCY_EXPONENTS),
    "country": COUNTRIES | {""},  # '' is "not sent" / "unknown"
    "ip_country": COUNTRIES | {""},
}


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    action: Action
    reason_code: str
    message: str
    condition: Condition
    reads: frozenset[str]
    uses_windows: bool
    uses_score: bool
    source: str  # file:line:column of the rule's id
    mode: str = "active"  # active | shadow (disabled rules are not in RuleSet.rules)
    rollout: float = 100.0  # percent of transactions (by a hash of their id) on which an active rule acts
    reads_amount: bool = False
    owner: str = ""
    tags: tuple[str, ...] = ()
    #: The windows (and derived features built on windows) the condition reads.
    window_reads: frozenset[str] = frozenset()
    #: The message with values (`{card_count_10m}`), formatted when the rule fires; None: `message` as it is.
    template: Template | None = None


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    review_at: float | None
    deny_at: float | None


@dataclass(frozen=True, slots=True)
class Costs:
    """What decisions cost, in the base currency, for the backtest's money view (`costs:`; docs/backtest.md).

    `review`: one manual review; `chargeback_factor`: a missed fraud costs its
    amount times this (chargeback, fees); `false_decline_margin`: a declined
    genuine payment costs this share of its amount (the lost margin).
    `review_capacity`: reviews a day the team can work (None: no limit);
    `max_decline_rate`: the largest share of transactions that may be
    declined (None: no cap). `given` lists the keys the rule set sets.
    """

    review: float = 5.0
    chargeback_factor: float = 1.0
    false_decline_margin: float = 0.1
    review_capacity: float | None = None
    max_decline_rate: float | None = None
    given: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DegradedPolicy:
    """What decides when the windows are unavailable (see docs/decisions.md)."""

    review_when: Condition | None
    deny_when: Condition | None


@dataclass(frozen=True, slots=True)
class RuleTest:
    """An example beside the rules: a transaction, what its windows hold, and the expected answer."""

    name: str
    where: str  # file:line:column of the test
    transaction: Transaction
    windows: Mapping[str, float]  # window values; the rest are an entity without history
    fields: Mapping[str, Any]  # derived fields set by the test (e.g. ip_country), overriding enrichment
    score: float | None  # the model score the rules see; None: no score
    decision: Action | None
    reasons: frozenset[str] | None  # the exact set of reason codes of rules and model, when given
    shadow: frozenset[str] | None  # the exact set of shadow rule ids that fire, when given
    #: Pins rolling-out rules: True they act, False they are in shadow, None the transaction's bucket decides.
    rollout: bool | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    digest: str  # content hash of the files (engine.rules.archive), to tell two sets with the same version apart
    rules: tuple[Rule, ...]
    windows: WindowPlan
    enricher: Enricher
    model_policy: ModelPolicy
    degraded: DegradedPolicy
    catalog: Mapping[str, str]  # name -> type, for rules and the model
    lists: Mapping[str, NamedList] = field(default_factory=dict)
    disabled: tuple[str, ...] = ()  # ids of disabled rules: checked, never evaluated
    tests: tuple[RuleTest, ...] = ()
    files: tuple[str, ...] = ()  # every file the set was read from (rules, lists, geoip)
    #: Derived features in definition order: (name, compiled expression, its text).
    features: tuple[tuple[str, Condition, str], ...] = ()
    #: Column mappings offline commands try when none is given, in order: preset names of
    #: engine.offline.datasets, or mapping files (absolute paths; written relative to the folder).
    data_mapping: tuple[str, ...] = ()
    #: When labels have no time of their own, they become known this long after the transaction.
    label_delay_ms: int = 7 * 86_400_000
    #: Attributes the decision log keeps (`keep_attributes:`); the others are not written there.
    keep_attributes: frozenset[str] = frozenset()
    #: The rules folder (absolute) and every file of the set with its hash: what `digest` is the hash of
    #: (engine.rules.archive).
    root: str = ""
    manifest: tuple[FileEntry, ...] = ()
    #: Ids of the rules no rule test makes fire (set when the tests ran at load): `rules check` warns.
    without_example: tuple[str, ...] = ()
    #: The costs of decisions, for the backtest's money view (`costs:`).
    costs: Costs = field(default_factory=Costs)

    def derive(self, fields: dict[str, Any]) -> None:
        """Compute the derived features into `fields` (NaN where a value cannot be computed)."""
        for name, fn, _ in self.features:
            try:
                fields[name] = float(fn(fields))
            except (ArithmeticError, TypeError, ValueError):
                fields[name] = math.nan

    @property
    def numeric_features(self) -> frozenset[str]:
        """Names the model may use as features (numbers and bools)."""
        return frozenset(n for n, t in self.catalog.items() if t in (NUMBER, BOOL) and n != SCORE)


__all__ = ["DOMAINS", "SCORE", "Costs", "DegradedPolicy", "ModelPolicy", "Rule", "RuleSet", "RuleTest"]
