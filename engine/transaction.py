"""The domain types that every door of the engine shares.

A `Transaction` is what the gateway sends, already mapped out of the wire
format; a `ScoreResult` is what the engine answers. Both are plain, immutable
values with no knowledge of gRPC, Redis or files.
"""

from __future__ import annotations

import enum
import hashlib
import json
from array import array
from dataclasses import dataclass, field
from typing import Any, Protocol

#: `json.dumps(x, separators=(",", ":"))`, without building an encoder per call (dumps does with
#: non-default separators): the same text, byte for byte, so fingerprints and records stay comparable.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Channel(enum.Enum):
    """Where the payment came from. Values are the names rules compare with."""

    UNSPECIFIED = "unspecified"
    APP = "app"
    WEB = "web"
    QR_CODE = "qr_code"
    MINI_PROGRAM = "mini_program"


class Action(enum.IntEnum):
    """What a rule, the model or a fallback asks for; also the final decision.

    The integer order is the severity order used by the decision precedence
    (see `engine.decision`).
    """

    ALLOW = 1
    REVIEW = 2
    DENY = 3


class ReasonSource(enum.Enum):
    RULE = "rule"
    MODEL = "model"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Transaction:
    """One payment attempt as the gateway describes it.

    `event_time_ms` is the event time in milliseconds since the Unix epoch
    (UTC). Empty strings mean "not sent".
    """

    transaction_id: str
    event_time_ms: int
    amount_minor: int
    currency: str
    user_id: str = ""
    card_id: str = ""
    device_id: str = ""
    ip: str = ""
    country: str = ""
    merchant_id: str = ""
    channel: Channel = Channel.UNSPECIFIED
    attributes: tuple[tuple[str, str], ...] = ()
    merchant_category: str = ""

    def fingerprint(self) -> str:
        """A digest of the content, to tell a retry from a reused id."""
        payload = _compact_json(
            [
                self.transaction_id,
                self.event_time_ms,
                self.amount_minor,
                self.currency,
                self.user_id,
                self.card_id,
                self.device_id,
                self.ip,
                self.country,
                self.merchant_id,
                self.channel.value,
                sorted(self.attributes),
                self.merchant_category,
            ]
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Contribution:
    """One feature's share in a model score: its value in the row (NaN when missing) and its push on the raw score."""

    feature: str
    value: float
    contribution: float  # log-odds (SHAP value)


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    source: ReasonSource
    message: str
    action: Action
    rule_id: str = ""
    #: For a review or deny the model drove: the features that pushed its score up most.
    contributions: tuple[Contribution, ...] = ()


@dataclass(frozen=True, slots=True)
class ChallengerResult:
    """The second model of a champion/challenger pair, scored on the same fields as the one that decided.

    Normally the challenger. When the challenger decided (split mode, the
    transaction in its share), the roles swap: the answer's score and model
    version are the challenger's and this holds the champion's, so both
    scores are always recorded.
    """

    model_version: str
    score: float  # NaN when the model could not score
    decision: Action  # what this model's score would have decided with the same rules (not acted on)
    challenger_decided: bool  # True: the challenger decided and this is the champion
    mode: str  # "shadow" or "split"


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The engine's answer for one transaction."""

    transaction_id: str
    decision: Action
    score: float
    reasons: tuple[Reason, ...]
    ruleset_version: str
    model_version: str
    degraded: bool
    features: dict[str, float] = field(default_factory=dict)
    elapsed_us: int = 0
    #: Rules that fired in shadow (or in the shadow part of a rollout): recorded, not acted on.
    shadow: tuple[Reason, ...] = ()
    #: The other model of a champion/challenger pair (None: no challenger is running).
    challenger: ChallengerResult | None = None
    #: The content digest of the rule set that decided (engine.rules.archive): two texts under one version differ.
    ruleset_digest: str = ""
    #: What enrichment found, as a reviewer reads it: `ip_country`, `ip_region`, `amount_base` (the amount in the
    #: base currency, exact decimal), `base_currency`; a key is left out when its value is unknown.
    enrichment: dict[str, str] = field(default_factory=dict)
    #: A dry run (`Pipeline.score(dry_run=True)`): scored read-only, nothing counted or recorded; never kept
    #: for retries, so `to_json` and `packed` leave it out.
    dry_run: bool = False

    def to_json(self) -> str:
        """Serialise for the idempotency record (a retry gets this back)."""
        return _compact_json(
            {
                "t": self.transaction_id,
                "d": int(self.decision),
                "s": self.score,
                "r": [_reason_json(r) for r in self.reasons],
                "rv": self.ruleset_version,
                "mv": self.model_version,
                "g": self.degraded,
                "f": self.features,
                "e": self.elapsed_us,
                "sh": [_reason_json(r) for r in self.shadow],
                **self._challenger_json(),
                "rd": self.ruleset_digest,
                "en": self.enrichment,
            }
        )

    def _challenger_json(self) -> dict[str, Any]:
        """The challenger's part of the record ("ch"; left out when no challenger ran)."""
        c = self.challenger
        if c is None:
            return {}
        return {"ch": [c.model_version, c.score, int(c.decision), c.challenger_decided, c.mode]}

    def packed(self) -> PackedScore:
        """What an in-process store keeps for retries: no serialising, about 0.7 KB."""
        names = tuple(self.features)
        shared = _FEATURE_NAMES.get(names)
        if shared is None:
            if len(_FEATURE_NAMES) >= 64:
                _FEATURE_NAMES.clear()  # lists of rule sets no longer served
            shared = _FEATURE_NAMES[names] = names
        return PackedScore(
            (
                self.transaction_id,
                self.decision,
                self.score,
                self.reasons,
                self.ruleset_version,
                self.model_version,
                self.degraded,
                shared,
                array("d", self.features.values()),
                self.elapsed_us,
                self.shadow,
                self.challenger,
                self.ruleset_digest,
                self.enrichment,
            )
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ScoreResult:
        data: dict[str, Any] = json.loads(text)
        return cls(
            transaction_id=data["t"],
            decision=Action(data["d"]),
            score=data["s"],
            reasons=tuple(_reason_from(r) for r in data["r"]),
            ruleset_version=data["rv"],
            model_version=data["mv"],
            degraded=data["g"],
            features=data["f"],
            elapsed_us=data["e"],
            shadow=tuple(_reason_from(r) for r in data.get("sh", ())),
            challenger=None
            if (ch := data.get("ch")) is None
            else ChallengerResult(
                model_version=ch[0], score=ch[1], decision=Action(ch[2]), challenger_decided=ch[3], mode=ch[4]
            ),
            ruleset_digest=data.get("rd", ""),
            enrichment=data.get("en", {}),
        )


#: One tuple per list of feature names, shared by every packed result that has it.
_FEATURE_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}


class PackedScore:
    """A ScoreResult kept for retries in memory: its fields, the feature values in a float array.

    Exact (floats as they were, NaN included): about 0.7 KB with 48
    features, against 2.9 KB for the result with its dict (measured with
    tracemalloc), since the feature names are one shared tuple.
    """

    __slots__ = ("_parts",)

    def __init__(self, parts: tuple[Any, ...]) -> None:
        self._parts = parts

    def unpacked(self) -> ScoreResult:
        (txid, decision, score, reasons, rv, mv, degraded, names, values, elapsed, shadow, challenger, rd, en) = (
            self._parts
        )
        return ScoreResult(
            txid,
            decision,
            score,
            reasons,
            rv,
            mv,
            degraded,
            dict(zip(names, values, strict=True)),
            elapsed,
            shadow,
            challenger,
            rd,
            en,
        )


class Recorded(Protocol):
    """A response a window store keeps for retries (`WindowStore.remember`)."""

    def to_json(self) -> str:
        """As a Redis store keeps it."""
        ...

    def packed(self) -> Packed:
        """As an in-process store keeps it."""
        ...


class Packed(Protocol):
    def unpacked(self) -> Any:
        """The response again, equal to the one packed."""
        ...


def _reason_json(r: Reason) -> list[Any]:
    out: list[Any] = [r.code, r.source.value, r.message, int(r.action), r.rule_id]
    if r.contributions:
        out.append([[c.feature, c.value, c.contribution] for c in r.contributions])
    return out


def _reason_from(item: list[Any]) -> Reason:
    code, source, message, action, rule_id, *rest = item
    contributions = tuple(Contribution(f, v, c) for f, v, c in rest[0]) if rest else ()
    return Reason(code, ReasonSource(source), message, Action(action), rule_id, contributions)


@dataclass(frozen=True, slots=True)
class Feedback:
    """The outcome of a scored transaction, learned after the fact (a chargeback, a confirmed fraud).

    `transaction` is the transaction as it was scored (its entities say whose
    label windows count the outcome); `known_at_ms` is when the outcome
    became known, the time at which label windows count it.
    """

    transaction: Transaction
    outcome: str  # engine.windows.spec.FRAUD or GENUINE
    known_at_ms: int

    def fingerprint(self) -> str:
        """A digest of the transaction and outcome, to tell a retry from a second, different outcome.

        `known_at_ms` is left out: a retry that lets the server default it to
        "now" is still the same feedback (the first recording's time stands).
        """
        payload = f"{self.transaction.fingerprint()}|{self.outcome}"
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What recording a feedback did."""

    transaction_id: str
    outcome: str
    known_at_ms: int
    duplicate: bool  # a retry of a feedback already recorded: nothing counted twice
    series_updated: int  # label series the outcome was added to (0: no window counts it)
    ruleset_version: str

    def to_json(self) -> str:
        return _compact_json(
            [self.transaction_id, self.outcome, self.known_at_ms, self.series_updated, self.ruleset_version]
        )

    def packed(self) -> FeedbackResult:
        return self  # small and immutable already

    def unpacked(self) -> FeedbackResult:
        return self

    @classmethod
    def from_json(cls, text: str | bytes, duplicate: bool) -> FeedbackResult:
        txid, outcome, known_at_ms, updated, version = json.loads(text)
        return cls(txid, outcome, known_at_ms, duplicate, updated, version)
