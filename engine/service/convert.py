"""Mapping between the wire messages (risk.v1) and the engine's domain types."""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from engine.service.pb import risk_pb2
from engine.transaction import Action, Channel, Feedback, FeedbackResult, Reason, ReasonSource, ScoreResult, Transaction
from engine.validation import InvalidTransaction, Limits
from engine.windows.spec import FRAUD, GENUINE

_CHANNELS = {
    risk_pb2.CHANNEL_UNSPECIFIED: Channel.UNSPECIFIED,
    risk_pb2.CHANNEL_APP: Channel.APP,
    risk_pb2.CHANNEL_WEB: Channel.WEB,
    risk_pb2.CHANNEL_QR_CODE: Channel.QR_CODE,
    risk_pb2.CHANNEL_MINI_PROGRAM: Channel.MINI_PROGRAM,
}
_DECISIONS = {
    Action.ALLOW: risk_pb2.DECISION_ALLOW,
    Action.REVIEW: risk_pb2.DECISION_REVIEW,
    Action.DENY: risk_pb2.DECISION_DENY,
}
_SOURCES = {
    ReasonSource.RULE: risk_pb2.REASON_SOURCE_RULE,
    ReasonSource.MODEL: risk_pb2.REASON_SOURCE_MODEL,
    ReasonSource.SYSTEM: risk_pb2.REASON_SOURCE_SYSTEM,
}
_MAX_TIMESTAMP_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the Timestamp range
_OUTCOMES = {risk_pb2.OUTCOME_FRAUD: FRAUD, risk_pb2.OUTCOME_GENUINE: GENUINE}


def to_transaction(request: risk_pb2.ScoreRequest | risk_pb2.FeedbackRequest, limits: Limits) -> Transaction:
    """Map a request to a Transaction; raise InvalidTransaction for what the wire allows but we don't.

    Field names in errors are relative to `transaction` (the service adds the prefix).
    """
    if not request.HasField("transaction"):
        raise InvalidTransaction("transaction", "is required")
    t = request.transaction
    if not t.HasField("event_time"):
        raise InvalidTransaction("event_time", "is required")
    ts = t.event_time
    if not (0 < ts.seconds <= _MAX_TIMESTAMP_SECONDS) or not (0 <= ts.nanos < 1_000_000_000):
        raise InvalidTransaction("event_time", "is outside the valid timestamp range")
    channel = _CHANNELS.get(t.channel)
    if channel is None:
        raise InvalidTransaction("channel", f"unknown channel value {t.channel}")
    if len(t.attributes) > limits.max_attributes:
        raise InvalidTransaction("attributes", f"has {len(t.attributes)} entries, the limit is {limits.max_attributes}")
    return Transaction(
        transaction_id=t.transaction_id,
        event_time_ms=ts.seconds * 1000 + ts.nanos // 1_000_000,
        amount_minor=t.amount_minor,
        currency=t.currency,
        user_id=t.user_id,
        card_id=t.card_id,
        device_id=t.device_id,
        ip=t.ip,
        country=t.country,
        merchant_id=t.merchant_id,
        channel=channel,
        attributes=tuple(sorted(t.attributes.items())),
        merchant_category=t.merchant_category,
    )


def from_transaction(txn: Transaction) -> risk_pb2.ScoreRequest:
    """The request a gateway would send for a domain transaction (replay tools, load tests)."""
    channel = next(code for code, ch in _CHANNELS.items() if ch is txn.channel)
    seconds, millis = divmod(txn.event_time_ms, 1000)
    return risk_pb2.ScoreRequest(
        transaction=risk_pb2.Transaction(
            transaction_id=txn.transaction_id,
            event_time=Timestamp(seconds=seconds, nanos=millis * 1_000_000),
            amount_minor=txn.amount_minor,
            currency=txn.currency,
            user_id=txn.user_id,
            card_id=txn.card_id,
            device_id=txn.device_id,
            ip=txn.ip,
            country=txn.country,
            merchant_id=txn.merchant_id,
            channel=channel,
            attributes=dict(txn.attributes),
            merchant_category=txn.merchant_category,
        )
    )


def from_feedback(fb: Feedback) -> risk_pb2.FeedbackRequest:
    """The request a case-management system would send for a domain feedback (the import command)."""
    seconds, millis = divmod(fb.known_at_ms, 1000)
    return risk_pb2.FeedbackRequest(
        transaction=from_transaction(fb.transaction).transaction,
        outcome=next(code for code, name in _OUTCOMES.items() if name == fb.outcome),
        known_at=Timestamp(seconds=seconds, nanos=millis * 1_000_000),
    )


def _reasons(reasons: tuple[Reason, ...]) -> list[risk_pb2.Reason]:
    return [
        risk_pb2.Reason(
            code=r.code,
            source=_SOURCES[r.source],
            rule_id=r.rule_id,
            message=r.message,
            action=_DECISIONS[r.action],
            contributions=[
                risk_pb2.Contribution(feature=c.feature, value=c.value, contribution=c.contribution)
                for c in r.contributions
            ],
        )
        for r in reasons
    ]


def _challenger(result: ScoreResult) -> risk_pb2.ChallengerResult | None:
    c = result.challenger
    if c is None:
        return None
    return risk_pb2.ChallengerResult(
        model_version=c.model_version,
        score=c.score,
        decision=_DECISIONS[c.decision],
        challenger_decided=c.challenger_decided,
        mode=c.mode,
    )


def to_response(result: ScoreResult) -> risk_pb2.ScoreResponse:
    return risk_pb2.ScoreResponse(
        transaction_id=result.transaction_id,
        decision=_DECISIONS[result.decision],
        score=result.score,
        reasons=_reasons(result.reasons),
        shadow_reasons=_reasons(result.shadow),
        ruleset_version=result.ruleset_version,
        model_version=result.model_version,
        degraded=result.degraded,
        features={k: v for k, v in result.features.items() if not math.isnan(v)},
        elapsed_us=result.elapsed_us,
        challenger=_challenger(result),
        ruleset_digest=result.ruleset_digest,
        enrichment=result.enrichment,
        dry_run=result.dry_run,
    )


def to_feedback(request: risk_pb2.FeedbackRequest, limits: Limits, now_ms: int) -> Feedback:
    """Map a FeedbackRequest; `known_at` defaults to `now_ms`.

    Errors name `outcome` and `known_at` as they are; other fields are
    relative to `transaction`, as in `to_transaction`.
    """
    txn = to_transaction(request, limits)
    outcome = _OUTCOMES.get(request.outcome)
    if outcome is None:
        raise InvalidTransaction("outcome", "must be OUTCOME_FRAUD or OUTCOME_GENUINE")
    known_at_ms = now_ms
    if request.HasField("known_at"):
        ts = request.known_at
        if not (0 < ts.seconds <= _MAX_TIMESTAMP_SECONDS) or not (0 <= ts.nanos < 1_000_000_000):
            raise InvalidTransaction("known_at", "is outside the valid timestamp range")
        known_at_ms = ts.seconds * 1000 + ts.nanos // 1_000_000
    return Feedback(txn, outcome, known_at_ms)


def to_feedback_response(result: FeedbackResult) -> risk_pb2.FeedbackResponse:
    return risk_pb2.FeedbackResponse(
        transaction_id=result.transaction_id,
        duplicate=result.duplicate,
        series_updated=result.series_updated,
        ruleset_version=result.ruleset_version,
    )
