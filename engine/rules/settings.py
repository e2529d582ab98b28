"""The rule files' settings: one small parser per top-level key, applied from a table.

A setting (`version`, `timezone`, `currency`, `allowed_lateness`,
`max_events_per_series`, `label_delay`, `data_mapping`, `geoip`, `model`,
`degraded`, `costs`) is set in exactly one file. Each parser takes the value and its
position, reports what is wrong into the `Collector`, and returns the parsed
value (None after an error, leaving the default). `SETTINGS` runs before the
sections (whose parsers need the money and the lists' folder), `POLICIES`
after them (the degraded policy reads the catalog of fields, windows and
features).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.enrich import Enricher, GeoLookup, Money
from engine.iso import CURRENCY_EXPONENTS
from engine.rules.errors import ID, Collector
from engine.rules.expr import Condition, Scope
from engine.rules.lists import NamedList
from engine.rules.ruleset import DOMAINS, SCORE, Costs, DegradedPolicy, ModelPolicy
from engine.rules.source import Located
from engine.windows.spec import DEFAULT_MAX_EVENTS

MAX_WINDOW_MS = 90 * 86_400_000
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
#: Settings each file may hold, in the order they are checked (and errors reported).
KEYS = (
    "version",
    "timezone",
    "currency",
    "allowed_lateness",
    "max_events_per_series",
    "data_mapping",
    "label_delay",
    "model",
    "degraded",
    "geoip",
    "keep_attributes",
    "costs",
)

Pos = tuple[int, int]


def parse_duration(text: Any) -> int | None:
    """'90s', '10m', '24h', '30d' -> milliseconds; None if malformed."""
    if not isinstance(text, str):
        return None
    m = _DURATION.match(text)
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


_LOOSE_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
#: Units people write, as the one-letter units of the rule files (w: a week, 7d).
_UNIT_WORDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("d", "day", "days"), "d"),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), "w"),
}


def duration_hint(text: Any) -> str:
    """What to write instead of a malformed duration ('1hr' -> "write '1h'"), or a reminder of the form."""
    form = "a whole number and one of s, m, h, d: '90s', '10m', '24h', '30d'"
    if isinstance(text, str) and text.strip().isdigit():
        text = int(text)
    if isinstance(text, int | float) and not isinstance(text, bool):
        return f"add a unit: '{text}m', '{text}h' or '{text}d' ({form})"
    m = _LOOSE_DURATION.match(text) if isinstance(text, str) else None
    unit = _UNIT_WORDS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        return form
    value = float(m.group(1))
    if unit == "w":
        value, unit = value * 7, "d"
    if value == int(value):
        return f"write '{int(value)}{unit}'"
    ms = round(value * _UNITS[unit])
    for name in ("d", "h", "m", "s"):
        if ms % _UNITS[name] == 0:
            return f"write '{ms // _UNITS[name]}{name}' (whole numbers only)"
    return form


def duration_problem(value: Any, low_ms: int, high_ms: int, low: str, high: str) -> tuple[int | None, str, str]:
    """(milliseconds, '', '') for a duration within [low, high], else (None, what is wrong, hint)."""
    ms = parse_duration(value)
    if ms is None:
        return None, f"{value!r} is not a duration", duration_hint(value)
    if not low_ms <= ms <= high_ms:
        return None, f"{value!r} is out of range: it must be between {low} and {high}", ""
    return ms, "", ""


@dataclass(slots=True)
class Settings:
    """The parsed settings, each at its default until a file sets it."""

    version: str = ""
    timezone: str = "UTC"
    currency: Money = field(default_factory=lambda: Money("USD", {}))
    allowed_lateness: int = 600_000
    max_events_per_series: int = DEFAULT_MAX_EVENTS
    label_delay: int = 7 * 86_400_000
    data_mapping: list[str] = field(default_factory=list)
    geoip: GeoLookup | None = None
    model: ModelPolicy = field(default_factory=lambda: ModelPolicy(None, None))
    degraded: DegradedPolicy = field(default_factory=lambda: DegradedPolicy(None, None))
    keep_attributes: tuple[str, ...] = ()
    costs: Costs = field(default_factory=Costs)


@dataclass(frozen=True, slots=True)
class Context:
    """What some parsers need beyond the value: the rules folder, the files read, and (after the sections) scope."""

    root: Path  # the rules folder (a file's own folder for a single file)
    files: list[str]  # every file the set is read from; parsers add the files they read
    catalog: Mapping[str, str] = field(default_factory=dict)
    window_names: frozenset[str] = frozenset()
    lists: Mapping[str, NamedList] = field(default_factory=dict)


Parser = Callable[[Collector, Any, Pos, Context], Any]


def _version(b: Collector, value: Any, pos: Pos, _: Context) -> str | None:
    if not isinstance(value, str | int | float) or not str(value).strip():
        b.err(pos, "'version' must be a non-empty string")
        return None
    return str(value)


def _timezone(b: Collector, value: Any, pos: Pos, _: Context) -> str | None:
    try:
        Enricher(Money("USD", {}), str(value))
    except Exception:  # noqa: BLE001 - zoneinfo raises several kinds
        b.err(pos, f"unknown time zone {value!r}", "use an IANA name such as 'Asia/Shanghai' or 'UTC'")
        return None
    return str(value)


def _currency(b: Collector, node: Any, pos: Pos, _: Context) -> Money | None:
    return _money(b, node, pos)


def _allowed_lateness(b: Collector, value: Any, pos: Pos, _: Context) -> int | None:
    ms, problem, hint = duration_problem(value, 0, MAX_WINDOW_MS, "0s", "90d")
    if ms is None:
        b.err(pos, f"'allowed_lateness': {problem}", hint)
    return ms


def _max_events_per_series(b: Collector, value: Any, pos: Pos, _: Context) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= 1_000_000:
        b.err(pos, f"'max_events_per_series' must be a whole number from 10 to 1000000, got {value!r}")
        return None
    return value


def _label_delay(b: Collector, value: Any, pos: Pos, _: Context) -> int | None:
    ms, problem, hint = duration_problem(value, 0, MAX_WINDOW_MS, "0s", "90d")
    if ms is None:
        b.err(pos, f"'label_delay': {problem}", hint)
    return ms


def _keep_attributes(b: Collector, value: Any, pos: Pos, _: Context) -> tuple[str, ...] | None:
    """The attributes the decision log keeps (every other attribute is left out of it)."""
    names = value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) and n.isidentifier() and n.isascii() for n in names):
        b.err(pos, f"'keep_attributes' must be a list of attribute names, got {value!r}")
        return None
    return tuple(names)


def _data_mapping(b: Collector, value: Any, pos: Pos, ctx: Context) -> list[str]:
    out: list[str] = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, str) and ID.match(entry):
            out.append(entry)  # a preset; the offline commands check its name
        elif isinstance(entry, str) and entry.endswith((".yaml", ".yml")):
            if not confined(ctx.root / entry, ctx.root):
                b.err(
                    pos, f"'data_mapping': {entry!r} must be inside the rules folder ({ALLOWED_DIRS_ENV} allows more)"
                )
            elif not (ctx.root / entry).is_file():
                b.err(pos, f"'data_mapping': no mapping file {entry!r} beside the rules")
            else:
                out.append(str(ctx.root / entry))
                ctx.files.append(str(ctx.root / entry))
        else:
            b.err(
                pos,
                "'data_mapping' must be a mapping preset (like 'native') or a mapping file "
                "(like 'mappings/handbook.yaml'), or a list of them",
            )
    return out


#: Folders besides the rules folder that files a rule set names (geoip, mapping files) may be in,
#: separated by ':' (an operator's choice, e.g. /usr/share/GeoIP); any other path is refused.
ALLOWED_DIRS_ENV = "RISK_RULES_ALLOWED_DIRS"


def confined(path: Path, root: Path) -> bool:
    """Whether `path` (resolved: no `..`, no symlink out) lies in the rules folder or a folder of ALLOWED_DIRS_ENV."""
    resolved = path.resolve()
    allowed = [root.resolve()] + [Path(d).resolve() for d in os.environ.get(ALLOWED_DIRS_ENV, "").split(":") if d]
    return any(resolved.is_relative_to(folder) for folder in allowed)


def _geoip(b: Collector, value: Any, pos: Pos, ctx: Context) -> GeoLookup | None:
    from engine.geo import GeoDB, GeoError

    if not isinstance(value, str) or not value.strip():
        b.err(pos, "'geoip' must be the path of a MaxMind-format .mmdb file")
        return None
    path = Path(b.file).parent / value
    if not confined(path, ctx.root):
        b.err(
            pos,
            "'geoip': the file must be inside the rules folder",
            f"or in a folder the operator allows with {ALLOWED_DIRS_ENV}",
        )
        return None
    try:
        db = GeoDB.open(path)
    except GeoError as exc:
        b.err(pos, f"cannot open the geoip database: {exc}", "the path is relative to the rule file")
        return None
    ctx.files.append(str(path))
    return db


def _model(b: Collector, node: Any, pos: Pos, _: Context) -> ModelPolicy:
    return _model_policy(b, node, pos)


def _money(b: Collector, node: Any, pos: tuple[int, int]) -> Money | None:
    if not isinstance(node, Located):
        b.err(pos, "'currency' must be a mapping with 'base' and 'rates'")
        return None
    b.unknown_keys(node, ("base", "rates"), "'currency'")
    base = node.get("base", "USD")
    if base not in CURRENCY_EXPONENTS:
        b.err(node.value_at("base"), f"base currency {base!r} is not an ISO 4217 code")
        return None
    rates: dict[str, float] = {}
    raw = node.get("rates")
    if raw is None:
        return Money(base, rates)
    if not isinstance(raw, Located):
        b.err(node.value_at("rates"), "'rates' must map currency codes to numbers")
        return None
    for code, rate in raw.items():
        if code not in CURRENCY_EXPONENTS:
            b.err(raw.key_at(code), f"{code!r} is not an ISO 4217 currency code")
        elif isinstance(rate, bool) or not isinstance(rate, int | float) or not (0 < rate < math.inf):
            b.err(raw.value_at(code), f"the rate of {code} must be a positive, finite number, got {rate!r}")
        else:
            rates[code] = float(rate)
    return Money(base, rates)


def _threshold(b: Collector, node: Located, key: str) -> float | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        b.err(node.value_at(key), f"'{key}' must be a probability between 0 and 1, got {value!r}")
        return None
    return float(value)


def _model_policy(b: Collector, node: Any, pos: tuple[int, int]) -> ModelPolicy:
    if not isinstance(node, Located):
        b.err(pos, "'model' must be a mapping with 'review_at' and/or 'deny_at'")
        return ModelPolicy(None, None)
    b.unknown_keys(node, ("review_at", "deny_at"), "'model'")
    review, deny = _threshold(b, node, "review_at"), _threshold(b, node, "deny_at")
    if review is not None and deny is not None and review > deny:
        b.err(node.value_at("review_at"), "'review_at' must not be above 'deny_at'")
    return ModelPolicy(review, deny)


def _degraded(b: Collector, node: Any, pos: Pos, ctx: Context) -> DegradedPolicy:
    if not isinstance(node, Located):
        b.err(pos, "'degraded' must be a mapping with 'review_when' and/or 'deny_when'")
        return DegradedPolicy(None, None)
    b.unknown_keys(node, ("review_when", "deny_when"), "'degraded'")
    # The fallback runs exactly when windows are missing: it may not read them, nor the score.
    window_names = ctx.window_names
    plain = Scope({k: v for k, v in ctx.catalog.items() if k not in window_names and k != SCORE}, ctx.lists, DOMAINS)
    conds: dict[str, Condition | None] = {"review_when": None, "deny_when": None}
    for key in conds:
        if key in node:
            got = b.condition(node, key, plain, f"degraded.{key}")
            conds[key] = got.fn if got else None
    return DegradedPolicy(conds["review_when"], conds["deny_when"])


#: The keys of `costs:`: (smallest allowed, largest allowed or None, what it is).
COST_KEYS: dict[str, tuple[float, float | None, str]] = {
    "review": (0.0, None, "the cost of one manual review, in the base currency"),
    "chargeback_factor": (0.0, None, "a missed fraud costs its amount times this"),
    "false_decline_margin": (0.0, 1.0, "the share of a declined genuine payment's amount lost (margin)"),
    "review_capacity": (0.0, None, "reviews a day the team can work"),
    "max_decline_rate": (0.0, 1.0, "the largest share of transactions that may be declined"),
}


def _costs(b: Collector, node: Any, pos: Pos, _: Context) -> Costs | None:
    if not isinstance(node, Located):
        b.err(pos, "'costs' must be a mapping, e.g. {review: 5, chargeback_factor: 1.5, false_decline_margin: 0.1}")
        return None
    b.unknown_keys(node, tuple(COST_KEYS), "'costs'")
    values: dict[str, float] = {}
    for key, (low, high, meaning) in COST_KEYS.items():
        if key not in node:
            continue
        value = node.get(key)
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not ok or not isinstance(value, int | float) or value < low or (high is not None and value > high):
            bounds = f"from {low:g} to {high:g}" if high is not None else f"{low:g} or more"
            b.err(node.value_at(key), f"'costs.{key}' ({meaning}) must be a number {bounds}, got {value!r}")
            continue
        values[key] = float(value)
    default = Costs()
    return Costs(
        review=values.get("review", default.review),
        chargeback_factor=values.get("chargeback_factor", default.chargeback_factor),
        false_decline_margin=values.get("false_decline_margin", default.false_decline_margin),
        review_capacity=values.get("review_capacity"),
        max_decline_rate=values.get("max_decline_rate"),
        given=tuple(values),
    )


#: Parsed before the sections, in this order.
SETTINGS: dict[str, Parser] = {
    "version": _version,
    "timezone": _timezone,
    "currency": _currency,
    "allowed_lateness": _allowed_lateness,
    "max_events_per_series": _max_events_per_series,
    "label_delay": _label_delay,
    "data_mapping": _data_mapping,
    "geoip": _geoip,
    "keep_attributes": _keep_attributes,
    "costs": _costs,
}
#: Parsed after the sections (they read the catalog of fields, windows and features).
POLICIES: dict[str, Parser] = {"model": _model, "degraded": _degraded}


def parse_settings(
    b: Collector, found: Mapping[str, tuple[str, Located]], table: Mapping[str, Parser], into: Settings, ctx: Context
) -> None:
    """Parse each setting of `table` that a file sets (`found`: key -> that file and its document) into `into`."""
    for key, parse in table.items():
        if key not in found:
            continue
        b.file, doc = found[key]
        value = parse(b, doc[key], doc.value_at(key), ctx)
        if value is not None:
            setattr(into, key, value)
