"""Reasons and model contributions in plain words, for people who decide cases.

A reason says what a rule, the model or the system found: a rule's own
message and description (written by the people who wrote the rule), the
model's score against its threshold, or what was unavailable. A model
contribution names a feature, its value and how hard it pushed the score;
here it becomes a sentence built from the rule set's own definitions:
a window (`card_count_10m`: count of card_id over 10 minutes) reads "5
payments with this card in the last 10 minutes"; a derived ratio
(`amount_to_card_avg_30d`: `amount / card_avg_amount_30d`) reads "the
amount is 12.0× this card's average payment over the last 30 days"; an
enrichment field uses its catalog meaning. How hard it pushed is said in
words relative to the strongest one (strongly, moderately, slightly), never
in log-odds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from engine.enrich import FIELDS
from engine.rules.messages import duration_text
from engine.rules.ruleset import RuleSet
from engine.windows.spec import Aggregate, WindowSpec

_MINUTE, _HOUR, _DAY = 60_000, 3_600_000, 86_400_000
_ENTITY = {
    "card_id": "this card",
    "device_id": "this device",
    "ip": "this IP address",
    "user_id": "this user",
    "merchant_id": "this merchant",
    "country": "this card country",
    "merchant_category": "this merchant category",
}
_THINGS = {
    "card_id": "cards",
    "device_id": "devices",
    "ip": "IP addresses",
    "user_id": "users",
    "merchant_id": "merchants",
    "country": "countries",
    "merchant_category": "merchant categories",
    "ip_country": "IP countries",
    "ip_region": "IP regions",
    "channel": "channels",
    "currency": "currencies",
}
_SYSTEM = {
    "WINDOWS_UNAVAILABLE": "The engine could not read the payment history (its window store did not answer in time): "
    "rules that need history were skipped and the degraded policy decided.",
    "MODEL_UNAVAILABLE": "The model could not score this payment; rules on the score were skipped.",
}
_MODEL_MESSAGE = re.compile(r"model score ([0-9.]+) >= (review|deny) threshold ([0-9.]+)")
_RATIO = re.compile(r"^\s*(?:if_missing\(\s*)?([a-z_][a-z0-9_]*)\s*/\s*([a-z_][a-z0-9_]*)\s*(?:,[^)]*\))?\s*$")


@dataclass(frozen=True)
class ReasonLine:
    code: str
    source: str  # rule | model | system
    action: str  # allow | review | deny
    text: str  # the plain sentence
    detail: str  # the rule's description, or "" (rule id and where it is defined go in `rule_id`)
    rule_id: str


@dataclass(frozen=True)
class ContributionLine:
    feature: str
    text: str  # what the feature says about this payment
    direction: str  # "up" (toward fraud) or "down"
    strength: str  # strongly | moderately | slightly
    share: float  # |contribution| / the largest |contribution| shown, 0..1 (the bar's width)


def duration(ms: int) -> str:
    for unit, name in ((_DAY, "day"), (_HOUR, "hour"), (_MINUTE, "minute")):
        if ms % unit == 0 and ms >= unit:
            n = ms // unit
            return name if n == 1 else f"{n} {name}s"
    return f"{ms / 1000:g} seconds"


def period(spec: WindowSpec) -> str:
    if spec.delay_ms:
        return f"the {duration(spec.duration_ms)} before the last {duration(spec.delay_ms)}"
    return f"the last {duration(spec.duration_ms)}"


def _who(spec: WindowSpec) -> str:
    return " and ".join(_ENTITY.get(e, f"this {e}") for e in spec.entity)


def _things(spec: WindowSpec) -> str:
    """What a distinct count counts: "cards", "IP countries", "values of the attribute shop"."""
    field = spec.field or ""
    if field.startswith("attributes."):
        return f"values of the attribute {field.removeprefix('attributes.')}"
    return _THINGS.get(field, field or "values")


class Wording:
    """Sentences for one rule set (its windows, derived features, rules) and base currency."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.base = ruleset.enricher.money.base
        self.windows = {s.name: s for s in ruleset.windows.specs}
        self.derived = {name: text for name, _, text in ruleset.features}
        self.rules = {r.id: r for r in ruleset.rules}

    def money(self, value: float) -> str:
        return f"{value:,.2f} {self.base}"

    # -- reasons -----------------------------------------------------------------
    def reasons(self, record: dict[str, Any]) -> list[ReasonLine]:
        out = []
        for r in record.get("reasons", []):
            code, source = str(r.get("code", "")), str(r.get("source", ""))
            message, rule_id = str(r.get("message", "")), str(r.get("rule_id") or "")
            action = str(r.get("action", ""))
            detail = ""
            if source == "model":
                m = _MODEL_MESSAGE.search(message)
                if m:
                    score, which, threshold = float(m.group(1)), m.group(2), float(m.group(3))
                    text = (
                        f"The model scores this payment {score:.2f} on its scale of 0 (genuine) to 1 (fraud), "
                        f"at or above its {which} threshold of {threshold:.2f}."
                    )
                else:
                    text = message
            elif source == "system":
                text = _SYSTEM.get(code, message)
            else:
                text = message or code
                rule = self.rules.get(rule_id)
                if rule is not None and rule.description and rule.description != message:
                    detail = rule.description
            out.append(ReasonLine(code, source, action, text, detail, rule_id))
        return out

    # -- model contributions ------------------------------------------------------
    def contributions(self, record: dict[str, Any]) -> list[ContributionLine]:
        features: dict[str, Any] = record.get("features") or {}
        items: list[tuple[str, float | None, float]] = []
        for r in record.get("reasons", []):
            for c in r.get("contributions") or []:
                value = c.get("value")
                items.append((str(c["feature"]), None if value is None else float(value), float(c["contribution"])))
        if not items:
            return []
        largest = max(abs(c) for _, _, c in items) or 1.0
        out = []
        for name, value, contribution in items:
            share = abs(contribution) / largest
            strength = "strongly" if share >= 0.66 else "moderately" if share >= 0.33 else "slightly"
            out.append(
                ContributionLine(
                    name,
                    self.feature(name, value, features),
                    "up" if contribution > 0 else "down",
                    strength,
                    round(share, 3),
                )
            )
        return out

    def feature(self, name: str, value: float | None, features: dict[str, Any]) -> str:
        """What the feature `name` with `value` says about this payment, as a sentence."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{self.noun(name)[:1].upper()}{self.noun(name)[1:]} is unknown (no history to compute it from)."
        spec = self.windows.get(name)
        if spec is not None:
            return self._window_sentence(spec, value)
        expr = self.derived.get(name)
        if expr is not None:
            m = _RATIO.match(expr)
            if m:
                a, b = m.group(1), m.group(2)
                parts = [f"{_cap(self.noun(a))} is {value:.1f}× {self.noun(b)}"]
                known = [(n, float(v)) for n in (a, b) if isinstance(v := features.get(n), int | float)]
                if known:
                    parts.append(" (" + ", ".join(self._value(n, v) for n, v in known) + ")")
                return "".join(parts) + "."
            return f"{name} = {value:g} (computed as {expr})."
        return self._field_sentence(name, value)

    def noun(self, name: str) -> str:
        """A noun phrase for a feature: "this card's average payment over the last 30 days"."""
        spec = self.windows.get(name)
        if spec is not None:
            who, when = _who(spec), period(spec)
            if spec.label is not None:
                return f"the {spec.label}s reported for {who} in {when}"
            agg = spec.aggregate
            if agg is Aggregate.COUNT:
                return f"the number of payments with {who} in {when}"
            if agg is Aggregate.DISTINCT:
                return f"the number of different {_things(spec)} with {who} in {when}"
            if agg is Aggregate.FIRST_SEEN:
                return f"the time since {who} was first seen in {when}"
            if agg is Aggregate.SINCE_PREVIOUS:
                return f"the time since the previous payment with {who} in {when}"
            if agg is Aggregate.IS_NEW:
                return f"whether {who} is new in {when}"
            what = "payment" if spec.field == "amount" else (spec.field or "value")
            words = {
                Aggregate.AVG: f"{who}'s average {what}",
                Aggregate.SUM: f"the total {what}s of {who}",
                Aggregate.MAX: f"the largest {what} of {who}",
                Aggregate.MIN: f"the smallest {what} of {who}",
            }
            return f"{words.get(agg, agg.value)} over {when}"
        if name == "amount":
            return "the amount"
        meaning = FIELDS.get(name, (None, name))[1]
        return meaning.split(" (")[0]

    def _value(self, name: str, value: float) -> str:
        spec = self.windows.get(name)
        amount_like = name == "amount" or (
            spec is not None and spec.field == "amount" and spec.aggregate is not Aggregate.COUNT
        )
        shown = self.money(value) if amount_like else f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
        return f"{_short(self.noun(name))} {shown}"

    def _window_sentence(self, spec: WindowSpec, value: float) -> str:
        who, when = _who(spec), period(spec)
        n = int(value) if float(value).is_integer() else value
        if spec.label is not None:
            kind = spec.label if spec.label in ("fraud", "genuine") else "label"
            return f"{n} {kind}{'' if n == 1 else 's'} reported for {who} in {when}."
        agg = spec.aggregate
        if agg is Aggregate.COUNT:
            return f"{n} payment{'' if n == 1 else 's'} with {who} in {when}."
        if agg is Aggregate.DISTINCT:
            return f"{n} different {_things(spec)} used with {who} in {when}."
        if agg is Aggregate.FIRST_SEEN:
            return f"{_cap(who)} first seen {duration_text(value)} ago (within {when})."
        if agg is Aggregate.SINCE_PREVIOUS:
            return f"The previous payment with {who} was {duration_text(value)} before this one."
        if agg is Aggregate.IS_NEW:
            return f"{_cap(who)}: new, not seen in {when}." if value else f"{_cap(who)}: seen before in {when}."
        shown = self.money(value) if spec.field == "amount" else f"{value:,.2f}"
        return f"{_cap(self.noun(spec.name))}: {shown}."

    def _field_sentence(self, name: str, value: float) -> str:
        flag = bool(value)
        booleans = {
            "is_night": ("Paid at night (before 7:00).", "Paid in the daytime."),
            "is_weekend": ("Paid at the weekend.", "Paid on a weekday."),
            "ip_country_mismatch": (
                "The IP address is in another country than the card.",
                "IP and card countries agree.",
            ),
            "ip_is_private": ("The IP address is private or reserved.", "The IP address is public."),
            "has_device": ("A device fingerprint was sent.", "No device fingerprint was sent."),
            "has_ip": ("An IP address was sent.", "No IP address was sent."),
        }
        if name in booleans:
            return booleans[name][0 if flag else 1]
        if name == "amount":
            return f"The amount, {self.money(value)}."
        if name == "hour":
            return f"Paid at {int(value):02d}:00-{int(value):02d}:59 ({self.ruleset.enricher.timezone})."
        if name == "day_of_week":
            days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
            return f"Paid on a {days[int(value) % 7]}."
        meaning = FIELDS.get(name, (None, name))[1]
        return f"{_cap(meaning)}: {value:g}."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short(noun: str) -> str:
    return noun.removeprefix("the ")
