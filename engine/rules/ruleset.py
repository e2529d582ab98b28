"""Loading a rules folder into an immutable, compiled `RuleSet`.

A rules folder holds `*.yaml` files, read in name order and merged:

    version: "2026.11.26-1"          # exactly once; every response carries it
    timezone: UTC                    # for hour / day_of_week / is_night
    currency: {base: USD, rates: {EUR: 1.08}}
    allowed_lateness: 10m            # how late an event may arrive and still be exact
    max_events_per_series: 5000      # cap on the events a sum/min/max/distinct series keeps
    windows:  [ {name, entity, aggregate, field, duration}, ... ]
    model:    {review_at: 0.5, deny_at: 0.9}
    degraded: {review_when: "amount >= 500", deny_when: "..."}
    geoip:    path/to/GeoIP2-Country.mmdb   # optional; the embedded database otherwise
    lists:    {NAME: {kind: string|number|country|cidr, values: [...] | file: lists/x.txt}}
    rules:    [ {id, description, condition, action, reason_code, message,
                 mode: active|shadow|disabled, rollout: 10, owner, tags}, ... ]
    tests:    [ {name, transaction: {...}, windows: {...}, score, expect: {...}}, ... ]

Every problem is reported with file, line and column, all at once
(`RuleSetInvalid.errors`); a set with errors is never half-loaded, and a set
whose rule tests fail is not loaded either (engine.rules.testing).
"""

from __future__ import annotations

import difflib
import hashlib
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.enrich import BOOL, FIELDS, NUMBER, STRING, Enricher, GeoLookup, Money
from engine.iso import COUNTRIES, CURRENCY_EXPONENTS
from engine.rules.errors import RuleError, RuleSetInvalid
from engine.rules.expr import Compiled, Condition, ExprError, Scope, compile_condition
from engine.rules.lists import KINDS, MAX_LIST_SIZE, ListValueError, NamedList, hold, load_list_file, parse_value
from engine.rules.source import Located, LocatedList, YamlError, load_yaml, locate
from engine.transaction import Action, Channel, Transaction
from engine.windows.spec import (
    ANY_LABEL,
    DEFAULT_MAX_EVENTS,
    EXACT_MS,
    LABELS,
    NUMERIC_FIELDS,
    Aggregate,
    WindowPlan,
    WindowSpec,
)

SCORE = "score"
#: Names a window may not take: the score, the attribute map, literals, Python keywords.
RESERVED = frozenset({SCORE, "attributes", "true", "false", *keyword.kwlist, *keyword.softkwlist})
ENTITY_FIELDS = ("user_id", "card_id", "device_id", "ip", "merchant_id", "country", "channel", "currency")
DISTINCT_FIELDS = ENTITY_FIELDS
MIN_WINDOW_MS = 60_000
MAX_WINDOW_MS = 90 * 86_400_000
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_TOP_KEYS = (
    "version",
    "timezone",
    "currency",
    "allowed_lateness",
    "max_events_per_series",
    "windows",
    "features",
    "data_mapping",
    "label_delay",
    "model",
    "degraded",
    "geoip",
    "lists",
    "rules",
    "tests",
)
_WINDOW_KEYS = ("name", "entity", "aggregate", "field", "duration", "filter", "delay", "source", "label", "description")
_FEATURE_KEYS = ("name", "value", "description")
SOURCES = ("transactions", "feedback")
_RULE_KEYS = (
    "id",
    "description",
    "condition",
    "action",
    "reason_code",
    "message",
    "mode",
    "rollout",
    "owner",
    "tags",
)
_LIST_KEYS = ("kind", "values", "file", "description")
MODES = ("active", "shadow", "disabled")
#: Fields whose value is an amount: a rule reading one says in its reason which currency it compared in.
AMOUNT_FIELDS = frozenset({"amount", "amount_base_minor"})
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
    source: str  # file:line of the rule
    mode: str = "active"  # active | shadow (disabled rules are not in RuleSet.rules)
    rollout: float = 100.0  # percent of transactions (by a hash of their id) on which an active rule acts
    reads_amount: bool = False
    owner: str = ""
    tags: tuple[str, ...] = ()
    #: The windows (and derived features built on windows) the condition reads.
    window_reads: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    review_at: float | None
    deny_at: float | None


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


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    digest: str  # hash of the files, to tell two sets with the same version apart
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


def parse_duration(text: Any) -> int | None:
    """'90s', '10m', '24h', '30d' -> milliseconds; None if malformed."""
    if not isinstance(text, str):
        return None
    m = _DURATION.match(text)
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


class _Builder:
    def __init__(self) -> None:
        self.errors: list[RuleError] = []
        self.file = ""
        self._lines: dict[str, list[str]] = {}

    def err(self, pos: tuple[int, int], message: str, hint: str = "") -> None:
        self.errors.append(RuleError(self.file, pos[0], pos[1], message, hint))

    def unknown_keys(self, node: Located, allowed: tuple[str, ...], what: str) -> None:
        for key in node:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
                self.err(node.key_at(key), f"unknown key '{key}' in {what}", hint)

    def lines(self) -> list[str]:
        if self.file not in self._lines:
            try:
                self._lines[self.file] = Path(self.file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                self._lines[self.file] = []
        return self._lines[self.file]

    def condition(
        self, node: Located, key: str, catalog: Mapping[str, str] | Scope, label: str, want: str = BOOL
    ) -> Compiled | None:
        text = node.get(key)
        line, col = node.value_at(key)
        if not isinstance(text, str):
            what = "a condition" if want == BOOL else "an expression"
            self.err((line, col), f"'{key}' must be a string holding {what}")
            return None
        try:
            return compile_condition(text, catalog, label, want)
        except ExprError as exc:
            style = node.value_style.get(key, "")
            at = locate(self.lines(), line, col, style, text, exc.offset)
            self.err(at, f"in {label}: {exc.message}", exc.hint)
            return None


def _read_files(path: Path, b: _Builder) -> list[tuple[str, Located]]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        b.errors.append(RuleError(str(path), 1, 1, "no *.yaml rule files found"))
    docs = []
    for file in files:
        b.file = str(file)
        try:
            doc = load_yaml(file.read_text(encoding="utf-8"))
        except YamlError as exc:
            b.err((exc.line, exc.column), exc.message)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            b.err((1, 1), f"cannot read file: {exc}")
            continue
        if doc is None:
            continue
        if not isinstance(doc, Located):
            b.err((1, 1), "a rule file must be a mapping of keys such as 'version', 'windows', 'rules'")
            continue
        docs.append((str(file), doc))
    return docs


def load_ruleset(path: str | Path, *, run_tests: bool = True) -> RuleSet:
    """Load, check and compile a rules folder (or a single file), and run its tests.

    Raise RuleSetInvalid with every error, or with every failing rule test.
    """
    path = Path(path)
    b = _Builder()
    docs = _read_files(path, b)
    if b.errors:  # a file that does not parse: what follows would only add noise
        raise RuleSetInvalid(b.errors)
    digest = hashlib.sha256()
    for name, _ in docs:
        digest.update(Path(name).read_bytes())

    settings: dict[str, tuple[str, Located]] = {}
    windows_nodes: list[tuple[str, Located, int, int]] = []
    feature_nodes: list[tuple[str, Located, int, int]] = []
    rule_nodes: list[tuple[str, Located, int, int]] = []
    test_nodes: list[tuple[str, Located, int, int]] = []
    list_nodes: list[tuple[str, Located]] = []
    for file, doc in docs:
        b.file = file
        b.unknown_keys(doc, _TOP_KEYS, "a rule file")
        for key in (
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
        ):
            if key in doc:
                if key in settings:
                    b.err(doc.key_at(key), f"'{key}' is already set in {settings[key][0]}")
                else:
                    settings[key] = (file, doc)
        if "lists" in doc:
            if isinstance(doc["lists"], Located):
                list_nodes.append((file, doc["lists"]))
            else:
                b.err(doc.value_at("lists"), "'lists' must map list names to {kind, values or file}")
        for key, bucket in (
            ("windows", windows_nodes),
            ("features", feature_nodes),
            ("rules", rule_nodes),
            ("tests", test_nodes),
        ):
            items = doc.get(key)
            if items is None:
                continue
            if not isinstance(items, LocatedList):
                b.err(doc.value_at(key), f"'{key}' must be a list")
                continue
            for i, item in enumerate(items):
                if not isinstance(item, Located):
                    b.err(items.item_pos[i], f"each entry of '{key}' must be a mapping")
                    continue
                bucket.append((file, item, *items.item_pos[i]))

    def setting(key: str) -> tuple[Any, tuple[int, int]] | None:
        if key not in settings:
            return None
        b.file, doc = settings[key]
        return doc[key], doc.value_at(key)

    version = ""
    got = setting("version")
    if got is None:
        b.file = str(path)
        b.err((1, 1), "the rule set has no 'version'", 'add e.g. version: "2026.11.26-1" to one file')
    elif not isinstance(got[0], str | int | float) or not str(got[0]).strip():
        b.err(got[1], "'version' must be a non-empty string")
    else:
        version = str(got[0])

    timezone = "UTC"
    got = setting("timezone")
    if got is not None:
        try:
            Enricher(Money("USD", {}), str(got[0]))
            timezone = str(got[0])
        except Exception:  # noqa: BLE001 - zoneinfo raises several kinds
            b.err(got[1], f"unknown time zone {got[0]!r}", "use an IANA name such as 'Asia/Shanghai' or 'UTC'")

    money = Money("USD", {})
    got = setting("currency")
    if got is not None:
        money = _money(b, got[0], got[1]) or money

    lateness = 600_000
    got = setting("allowed_lateness")
    if got is not None:
        ms = parse_duration(got[0])
        if ms is None:
            b.err(got[1], f"'allowed_lateness' must be a duration like '10m', got {got[0]!r}")
        else:
            lateness = ms

    max_events = DEFAULT_MAX_EVENTS
    got = setting("max_events_per_series")
    if got is not None:
        if isinstance(got[0], bool) or not isinstance(got[0], int) or not 10 <= got[0] <= 1_000_000:
            b.err(got[1], f"'max_events_per_series' must be a whole number from 10 to 1000000, got {got[0]!r}")
        else:
            max_events = got[0]

    label_delay = 7 * 86_400_000
    got = setting("label_delay")
    if got is not None:
        ms = parse_duration(got[0])
        if ms is None or ms > MAX_WINDOW_MS:
            b.err(got[1], f"'label_delay' must be a duration from 0s to 90d, like '7d', got {got[0]!r}")
        else:
            label_delay = ms

    files = [name for name, _ in docs]
    data_mapping: list[str] = []
    got = setting("data_mapping")
    if got is not None:
        root = (path if path.is_dir() else path.parent).resolve()
        entries = got[0] if isinstance(got[0], list) else [got[0]]
        for entry in entries:
            if isinstance(entry, str) and _ID.match(entry):
                data_mapping.append(entry)  # a preset; the offline commands check its name
            elif isinstance(entry, str) and entry.endswith((".yaml", ".yml")):
                if not (root / entry).is_file():
                    b.err(got[1], f"'data_mapping': no mapping file {entry!r} beside the rules")
                else:
                    data_mapping.append(str(root / entry))
                    files.append(str(root / entry))
            else:
                b.err(
                    got[1],
                    "'data_mapping' must be a mapping preset (like 'native') or a mapping file "
                    "(like 'mappings/handbook.yaml'), or a list of them",
                )

    geo = None
    got = setting("geoip")
    if got is not None:
        geo = _geoip(b, got[0], got[1], files)
    else:
        from engine.geo import default_geo

        geo = default_geo()

    lists = _lists(b, list_nodes, files, (path if path.is_dir() else path.parent).resolve())
    specs = _windows(b, windows_nodes)
    catalog: dict[str, str] = {name: kind for name, (kind, _) in FIELDS.items()}
    for spec in specs:
        catalog[spec.name] = NUMBER
    lookup_names = {s.name for s in specs}
    features = _features(b, feature_nodes, catalog, lists, lookup_names)
    catalog[SCORE] = NUMBER
    window_names = frozenset(lookup_names)  # windows and the features that read them

    model_policy = ModelPolicy(None, None)
    got = setting("model")
    if got is not None:
        model_policy = _model_policy(b, got[0], got[1])

    degraded = DegradedPolicy(None, None)
    got = setting("degraded")
    if got is not None:
        degraded = _degraded(b, got[0], got[1], catalog, window_names, lists)

    scope = Scope(catalog, lists, DOMAINS)
    rules, disabled = _rules(b, rule_nodes, scope, window_names)
    tests = _tests(b, test_nodes, money, catalog, window_names)

    if b.errors:
        raise RuleSetInvalid(b.errors)
    for extra in files[len(docs) :]:
        digest.update(Path(extra).read_bytes())
    scale = 10.0 ** -CURRENCY_EXPONENTS[money.base]
    ruleset = RuleSet(
        version=version,
        digest=digest.hexdigest()[:16],
        rules=tuple(rules),
        windows=WindowPlan(specs, lateness, scale, max_events),
        enricher=Enricher(money, timezone, geo),
        model_policy=model_policy,
        degraded=degraded,
        catalog=catalog,
        lists=lists,
        disabled=tuple(disabled),
        tests=tuple(tests),
        files=tuple(files),
        features=tuple(features),
        data_mapping=tuple(data_mapping),
        label_delay_ms=label_delay,
    )
    if run_tests and ruleset.tests:
        from engine.rules.testing import run_rule_tests  # testing builds on this module

        failures = [RuleError(*r.where_parts(), r.failure) for r in run_rule_tests(ruleset) if r.failure]
        if failures:
            raise RuleSetInvalid(failures)
    return ruleset


def _money(b: _Builder, node: Any, pos: tuple[int, int]) -> Money | None:
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


def _named(b: _Builder, node: Located, key: str, at: tuple[int, int], seen: dict[str, str], what: str) -> str | None:
    """The unique lower_snake_case name under `key`, or None after reporting why not."""
    name = node.get(key)
    if not isinstance(name, str) or not _ID.match(name):
        b.err(
            node.value_at(key) if key in node else at, f"a {what} needs an '{key}' of lower-case letters, digits and _"
        )
        return None
    if name in seen:
        b.err(node.value_at(key), f"duplicate {what} {key} '{name}' (first in {seen[name]})")
        return None
    seen[name] = f"{b.file}:{node.value_at(key)[0]}"
    return name


def _windows(b: _Builder, nodes: list[tuple[str, Located, int, int]]) -> list[WindowSpec]:
    specs: list[WindowSpec] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _WINDOW_KEYS, "a window")
        name = _named(b, node, "name", (line, col), seen, "window")
        if name is None:
            continue
        if name in FIELDS or name in RESERVED:
            b.err(node.value_at("name"), f"window name '{name}' is reserved (a field or a word of the language)")
            continue
        entity_raw = node.get("entity")
        entity = (
            (entity_raw,) if isinstance(entity_raw, str) else tuple(entity_raw) if isinstance(entity_raw, list) else ()
        )
        bad = [e for e in entity if e not in ENTITY_FIELDS]
        if not entity or bad:
            close = difflib.get_close_matches(str(bad[0]), ENTITY_FIELDS, n=1) if bad else []
            b.err(
                node.value_at("entity") if "entity" in node else node.key_at("name"),
                f"window '{name}': 'entity' must be one or more of {', '.join(ENTITY_FIELDS)}",
                f"did you mean '{close[0]}'?" if close else "",
            )
            continue
        try:
            aggregate = Aggregate(node.get("aggregate"))
        except ValueError:
            b.err(
                node.value_at("aggregate") if "aggregate" in node else node.key_at("name"),
                f"window '{name}': 'aggregate' must be one of {', '.join(a.value for a in Aggregate)}",
            )
            continue
        duration = parse_duration(node.get("duration"))
        if duration is None or not MIN_WINDOW_MS <= duration <= MAX_WINDOW_MS:
            b.err(
                node.value_at("duration") if "duration" in node else node.key_at("name"),
                f"window '{name}': 'duration' must be between 1m and 90d, like '10m', '24h' or '30d'",
            )
            continue
        fld = node.get("field")
        if aggregate is Aggregate.COUNT:
            if fld is not None:
                b.err(node.key_at("field"), f"window '{name}': a count takes no 'field'")
                continue
        elif aggregate is Aggregate.DISTINCT:
            if fld not in DISTINCT_FIELDS:
                b.err(
                    node.value_at("field") if "field" in node else node.key_at("name"),
                    f"window '{name}': a distinct count needs a 'field', one of {', '.join(DISTINCT_FIELDS)}",
                )
                continue
        elif fld not in NUMERIC_FIELDS:
            b.err(
                node.value_at("field") if "field" in node else node.key_at("name"),
                f"window '{name}': '{aggregate.value}' needs a numeric 'field', one of {', '.join(NUMERIC_FIELDS)}",
            )
            continue
        delay = 0
        if "delay" in node:
            got_delay = parse_duration(node.get("delay"))
            if got_delay is None or not 0 <= got_delay <= MAX_WINDOW_MS:
                b.err(
                    node.value_at("delay"),
                    f"window '{name}': 'delay' must be a duration from 0s to 90d, like '1h' or '7d'",
                )
                continue
            delay = got_delay
            if aggregate is not Aggregate.DISTINCT and duration + delay > EXACT_MS and duration < EXACT_MS:
                b.err(
                    node.value_at("delay"),
                    f"window '{name}': a window reaching back more than 1d (duration + delay) is kept in hourly "
                    "buckets, so its duration must be at least 1d",
                    "shorten the delay, or lengthen the duration",
                )
                continue
        filter_text = None
        filter_fn = None
        if "filter" in node:
            # Over the enriched fields only: no windows, no score, no lists (a list reload
            # would silently change what an existing series holds).
            compiled = b.condition(node, "filter", _FILTER_SCOPE, f"window '{name}' filter")
            if compiled is None:
                continue
            filter_text = " ".join(str(node.get("filter")).split())
            filter_fn = compiled.fn
        label = None
        source = node.get("source", "transactions")
        if source not in SOURCES:
            b.err(node.value_at("source"), f"window '{name}': 'source' must be one of {', '.join(SOURCES)}")
            continue
        if source == "feedback":
            label = node.get("label", ANY_LABEL)
            if label not in (*LABELS, ANY_LABEL):
                b.err(
                    node.value_at("label"),
                    f"window '{name}': 'label' must be one of {', '.join((*LABELS, ANY_LABEL))}",
                )
                continue
        elif "label" in node:
            b.err(node.key_at("label"), f"window '{name}': 'label' needs 'source: feedback'")
            continue
        specs.append(WindowSpec(name, entity, aggregate, duration, fld, filter_text, delay, filter_fn, label))
    return specs


def _features(
    b: _Builder,
    nodes: list[tuple[str, Located, int, int]],
    catalog: dict[str, str],
    lists: Mapping[str, NamedList],
    window_names: set[str],
) -> list[tuple[str, Condition, str]]:
    """Derived features: named numeric expressions over fields, windows and earlier features.

    Each is added to `catalog` (a number) for the rules and the model. One that
    reads a window (directly or through another feature) is added to
    `window_names`, so that rules reading it are skipped when windows are missing.
    """
    out: list[tuple[str, Condition, str]] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _FEATURE_KEYS, "a feature")
        name = _named(b, node, "name", (line, col), seen, "feature")
        if name is None:
            continue
        if name in catalog or name in RESERVED:
            b.err(
                node.value_at("name"), f"feature name '{name}' is taken (a field, a window or a word of the language)"
            )
            continue
        # `score` is in scope only to refuse it with a clear message below.
        scope = Scope({**catalog, SCORE: NUMBER}, lists, DOMAINS)
        compiled = b.condition(node, "value", scope, f"feature '{name}'", want=NUMBER)
        if compiled is None:
            continue
        if SCORE in compiled.names:
            b.err(node.value_at("value"), f"feature '{name}' may not read the model score: the model reads features")
            continue
        catalog[name] = NUMBER
        if compiled.names & window_names:
            window_names.add(name)
        out.append((name, compiled.fn, " ".join(str(node.get("value")).split())))
    return out


_FILTER_SCOPE = Scope({name: kind for name, (kind, _) in FIELDS.items()}, {}, DOMAINS)


def _threshold(b: _Builder, node: Located, key: str) -> float | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        b.err(node.value_at(key), f"'{key}' must be a probability between 0 and 1, got {value!r}")
        return None
    return float(value)


def _model_policy(b: _Builder, node: Any, pos: tuple[int, int]) -> ModelPolicy:
    if not isinstance(node, Located):
        b.err(pos, "'model' must be a mapping with 'review_at' and/or 'deny_at'")
        return ModelPolicy(None, None)
    b.unknown_keys(node, ("review_at", "deny_at"), "'model'")
    review, deny = _threshold(b, node, "review_at"), _threshold(b, node, "deny_at")
    if review is not None and deny is not None and review > deny:
        b.err(node.value_at("review_at"), "'review_at' must not be above 'deny_at'")
    return ModelPolicy(review, deny)


def _degraded(
    b: _Builder,
    node: Any,
    pos: tuple[int, int],
    catalog: Mapping[str, str],
    window_names: frozenset[str],
    lists: Mapping[str, NamedList],
) -> DegradedPolicy:
    if not isinstance(node, Located):
        b.err(pos, "'degraded' must be a mapping with 'review_when' and/or 'deny_when'")
        return DegradedPolicy(None, None)
    b.unknown_keys(node, ("review_when", "deny_when"), "'degraded'")
    # The fallback runs exactly when windows are missing: it may not read them, nor the score.
    plain = Scope({k: v for k, v in catalog.items() if k not in window_names and k != SCORE}, lists, DOMAINS)
    conds: dict[str, Condition | None] = {"review_when": None, "deny_when": None}
    for key in conds:
        if key in node:
            got = b.condition(node, key, plain, f"degraded.{key}")
            conds[key] = got.fn if got else None
    return DegradedPolicy(conds["review_when"], conds["deny_when"])


def _geoip(b: _Builder, value: Any, pos: tuple[int, int], files: list[str]) -> GeoLookup | None:
    from engine.geo import GeoDB, GeoError

    if not isinstance(value, str) or not value.strip():
        b.err(pos, "'geoip' must be the path of a MaxMind-format .mmdb file")
        return None
    path = Path(b.file).parent / value
    try:
        db = GeoDB.open(path)
    except GeoError as exc:
        b.err(pos, f"cannot open the geoip database: {exc}", "the path is relative to the rule file")
        return None
    files.append(str(path))
    return db


def _lists(b: _Builder, nodes: list[tuple[str, Located]], files: list[str], root: Path) -> dict[str, NamedList]:
    out: dict[str, NamedList] = {}
    seen: dict[str, str] = {}
    for file, mapping in nodes:
        b.file = file
        for name, spec in mapping.items():
            at = mapping.key_at(name)
            if not _ID.match(name):
                b.err(at, f"list name '{name}' must be lower-case letters, digits and _")
                continue
            if name in seen:
                b.err(at, f"duplicate list '{name}' (first in {seen[name]})")
                continue
            seen[name] = f"{file}:{at[0]}"
            if not isinstance(spec, Located):
                b.err(mapping.value_at(name), f"list '{name}' must be a mapping with 'kind' and 'values' or 'file'")
                continue
            b.unknown_keys(spec, _LIST_KEYS, f"list '{name}'")
            kind = spec.get("kind")
            if kind not in KINDS:
                b.err(
                    spec.value_at("kind") if "kind" in spec else at,
                    f"list '{name}': 'kind' must be one of {', '.join(KINDS)}",
                )
                continue
            if ("values" in spec) == ("file" in spec):
                b.err(
                    at, f"list '{name}' needs exactly one of 'values' (inline) or 'file' (a text file beside the rules)"
                )
                continue
            if "values" in spec:
                raw = spec["values"]
                if not isinstance(raw, LocatedList):
                    b.err(spec.value_at("values"), f"list '{name}': 'values' must be a list")
                    continue
                if len(raw) > MAX_LIST_SIZE:
                    b.err(at, f"list '{name}' has {len(raw)} values, the limit is {MAX_LIST_SIZE}")
                    continue
                values = []
                for i, value in enumerate(raw):
                    try:
                        values.append(parse_value(kind, value))
                    except ListValueError as exc:
                        b.err(raw.item_pos[i], f"list '{name}': {exc}")
                if len(values) < len(raw):
                    continue
                held = hold(kind, values)
            else:
                rel = str(spec["file"])
                path = (Path(file).parent / rel).resolve()
                if not path.is_relative_to(root):
                    b.err(spec.value_at("file"), f"list '{name}': the file must be inside the rules folder {root}")
                    continue
                try:
                    held, count, problems = load_list_file(path, kind)
                except (OSError, UnicodeDecodeError) as exc:
                    b.err(spec.value_at("file"), f"list '{name}': cannot read {path}: {exc}")
                    continue
                files.append(str(path))
                for line, message in problems:
                    b.errors.append(RuleError(str(path), line, 1, f"list '{name}': {message}"))
                if problems:
                    continue
                if count > MAX_LIST_SIZE:
                    b.err(at, f"list '{name}' has {count} values, the limit is {MAX_LIST_SIZE}")
                    continue
            out[name] = NamedList(name, kind, held, f"{file}:{at[0]}")
        b.file = ""
    return out


def _rules(
    b: _Builder, nodes: list[tuple[str, Located, int, int]], scope: Scope, window_names: frozenset[str]
) -> tuple[list[Rule], list[str]]:
    rules: list[Rule] = []
    disabled: list[str] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _RULE_KEYS, "a rule")
        rid = _named(b, node, "id", (line, col), seen, "rule")
        if rid is None:
            continue
        ok = True
        for key in ("condition", "action", "reason_code", "message"):
            if key not in node:
                b.err(node.key_at("id"), f"rule '{rid}' has no '{key}'")
                ok = False
        if not ok:
            continue
        action_text = node["action"]
        try:
            action = Action[str(action_text).upper()] if str(action_text).islower() else None
        except KeyError:
            action = None
        if action is None:
            b.err(node.value_at("action"), f"rule '{rid}': 'action' must be allow, review or deny, got {action_text!r}")
            ok = False
        code = node["reason_code"]
        if not isinstance(code, str) or not _CODE.match(code):
            b.err(node.value_at("reason_code"), f"rule '{rid}': 'reason_code' must be UPPER_SNAKE_CASE, got {code!r}")
            ok = False
        message = node["message"]
        if not isinstance(message, str) or not message.strip():
            b.err(node.value_at("message"), f"rule '{rid}': 'message' must be a non-empty string")
            ok = False
        mode = node.get("mode", "active")
        if mode not in MODES:
            b.err(node.value_at("mode"), f"rule '{rid}': 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
            ok = False
        rollout = node.get("rollout", 100)
        if isinstance(rollout, bool) or not isinstance(rollout, int | float) or not 0 < rollout <= 100:
            b.err(node.value_at("rollout"), f"rule '{rid}': 'rollout' must be a percentage above 0 and at most 100")
            ok = False
        elif rollout < 100 and mode != "active":
            b.err(
                node.value_at("rollout"),
                f"rule '{rid}': 'rollout' applies to active rules (a shadow rule acts on none)",
            )
            ok = False
        owner = node.get("owner", "")
        tags = node.get("tags", [])
        if not isinstance(owner, str):
            b.err(node.value_at("owner"), f"rule '{rid}': 'owner' must be a string")
            ok = False
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            b.err(node.value_at("tags"), f"rule '{rid}': 'tags' must be a list of strings")
            ok = False
        description = node.get("description", "")
        got = b.condition(node, "condition", scope, f"rule '{rid}'")
        if got is None or not ok or action is None:
            continue
        if mode == "disabled":
            disabled.append(rid)
            continue
        fn, names = got.fn, got.names
        rules.append(
            Rule(
                id=rid,
                description=str(description),
                action=action,
                reason_code=code,
                message=message.strip(),
                condition=fn,
                reads=names,
                uses_windows=bool(got.valued & window_names),
                uses_score=SCORE in got.valued,
                source=f"{file}:{node.value_at('id')[0]}",
                mode=mode,
                rollout=float(rollout),
                reads_amount=bool(names & AMOUNT_FIELDS) or bool(names & window_names),
                owner=owner,
                tags=tuple(tags),
                window_reads=frozenset(got.valued & window_names),
            )
        )
    return rules, disabled


_TEST_KEYS = ("name", "transaction", "windows", "fields", "score", "expect")
_TXN_KEYS = (
    "transaction_id",
    "event_time",
    "amount",
    "currency",
    "user_id",
    "card_id",
    "device_id",
    "ip",
    "country",
    "merchant_id",
    "merchant_category",
    "channel",
    "attributes",
)
_TEST_EPOCH_MS = 1_767_268_800_000  # 2026-01-01T12:00:00Z, when a test gives no event_time


def _test_transaction(b: _Builder, node: Located, tname: str, money: Money) -> Transaction | None:
    from datetime import datetime

    b.unknown_keys(node, _TXN_KEYS, f"the transaction of test '{tname}'")
    currency = str(node.get("currency", money.base))
    if currency not in CURRENCY_EXPONENTS:
        b.err(node.value_at("currency"), f"test '{tname}': {currency!r} is not an ISO 4217 currency code")
        return None
    amount = node.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount < 1e15:
        b.err(
            node.value_at("amount") if "amount" in node else (node.line, node.column),
            f"test '{tname}': the transaction needs an 'amount' in major units (e.g. 12.50)",
        )
        return None
    when = node.get("event_time")
    event_ms = _TEST_EPOCH_MS
    if when is not None:
        try:
            parsed = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise ValueError("no time zone")
            event_ms = int(parsed.timestamp() * 1000)
        except ValueError:
            b.err(
                node.value_at("event_time"),
                f"test '{tname}': 'event_time' must be ISO 8601 with a zone, e.g. 2026-01-01T03:00:00Z",
            )
            return None
    channel_text = str(node.get("channel", "unspecified"))
    channel = next((c for c in Channel if c.value == channel_text), None)
    if channel is None:
        b.err(
            node.value_at("channel"), f"test '{tname}': 'channel' must be one of {', '.join(c.value for c in Channel)}"
        )
        return None
    attrs = node.get("attributes", {})
    if not isinstance(attrs, dict) or not all(isinstance(v, str | int | float) for v in attrs.values()):
        b.err(node.value_at("attributes"), f"test '{tname}': 'attributes' must map names to plain values")
        return None
    strings = {
        k: str(node.get(k, ""))
        for k in ("user_id", "card_id", "device_id", "ip", "country", "merchant_id", "merchant_category")
    }
    if not strings["user_id"] and not strings["card_id"]:
        strings["card_id"] = "test-card"
    return Transaction(
        transaction_id=str(node.get("transaction_id", "test-" + hashlib.sha256(tname.encode()).hexdigest()[:16])),
        event_time_ms=event_ms,
        amount_minor=round(float(amount) * 10 ** CURRENCY_EXPONENTS[currency]),
        currency=currency,
        channel=channel,
        attributes=tuple(sorted((str(k), str(v)) for k, v in attrs.items())),
        **strings,
    )


def _tests(
    b: _Builder,
    nodes: list[tuple[str, Located, int, int]],
    money: Money,
    catalog: Mapping[str, str],
    window_names: frozenset[str],
) -> list[RuleTest]:
    out: list[RuleTest] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _TEST_KEYS, "a rule test")
        tname = node.get("name")
        if not isinstance(tname, str) or not tname.strip():
            b.err((line, col), "a rule test needs a 'name'")
            continue
        if tname in seen:
            b.err(node.value_at("name"), f"duplicate test name '{tname}' (first in {seen[tname]})")
            continue
        seen[tname] = f"{file}:{node.value_at('name')[0]}"
        txn_node = node.get("transaction")
        if not isinstance(txn_node, Located):
            b.err(node.key_at("name"), f"test '{tname}' needs a 'transaction' mapping (amount, currency, card_id, ...)")
            continue
        txn = _test_transaction(b, txn_node, tname, money)
        windows: dict[str, float] = {}
        raw_windows = node.get("windows")
        if raw_windows is None:
            raw_windows = Located()
            raw_windows.key_pos, raw_windows.value_pos = {}, {}
        elif not isinstance(raw_windows, Located):
            b.err(node.value_at("windows"), f"test '{tname}': 'windows' must map window names to values")
            raw_windows = Located()
            raw_windows.key_pos, raw_windows.value_pos = {}, {}
        for wname, value in raw_windows.items():
            if wname not in window_names:
                close = difflib.get_close_matches(wname, list(window_names), n=1)
                b.err(
                    raw_windows.key_at(wname),
                    f"test '{tname}': unknown window '{wname}'",
                    f"did you mean '{close[0]}'?" if close else "",
                )
            elif isinstance(value, bool) or not isinstance(value, int | float):
                b.err(raw_windows.value_at(wname), f"test '{tname}': window '{wname}' must be a number")
            else:
                windows[wname] = float(value)
        fields: dict[str, Any] = {}
        raw_fields = node.get("fields")
        if raw_fields is None:
            pass
        elif isinstance(raw_fields, Located):
            for fname, value in raw_fields.items():
                kind = catalog.get(fname)
                if kind is None or fname in window_names or fname == SCORE:
                    close = difflib.get_close_matches(fname, [n for n in FIELDS], n=1)
                    b.err(
                        raw_fields.key_at(fname),
                        f"test '{tname}': '{fname}' is not a derived field",
                        f"did you mean '{close[0]}'?"
                        if close
                        else "windows go under 'windows', the score under 'score'",
                    )
                elif _kind_of(value) != kind:
                    b.err(raw_fields.value_at(fname), f"test '{tname}': '{fname}' is a {kind}, got {value!r}")
                else:
                    fields[fname] = value
        else:
            b.err(node.value_at("fields"), f"test '{tname}': 'fields' must map field names to values")
        score = node.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
            b.err(node.value_at("score"), f"test '{tname}': 'score' must be a probability between 0 and 1")
            continue
        expect = node.get("expect")
        if not isinstance(expect, Located) or not expect:
            b.err(node.key_at("name"), f"test '{tname}' needs an 'expect' mapping with 'decision' and/or 'reasons'")
            continue
        b.unknown_keys(expect, ("decision", "reasons", "shadow"), f"the expectation of test '{tname}'")
        decision = None
        if "decision" in expect:
            text = str(expect["decision"])
            decision = Action[text.upper()] if text in ("allow", "review", "deny") else None
            if decision is None:
                b.err(expect.value_at("decision"), f"test '{tname}': 'decision' must be allow, review or deny")
                continue
        sets: dict[str, frozenset[str] | None] = {"reasons": None, "shadow": None}
        for key in sets:
            if key in expect:
                items = expect[key]
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    b.err(expect.value_at(key), f"test '{tname}': '{key}' must be a list (of reason codes / rule ids)")
                    continue
                sets[key] = frozenset(items)
        if txn is None:
            continue
        out.append(
            RuleTest(
                name=tname,
                where=f"{file}:{node.value_at('name')[0]}:{node.value_at('name')[1]}",
                transaction=txn,
                windows=windows,
                fields=fields,
                score=None if score is None else float(score),
                decision=decision,
                reasons=sets["reasons"],
                shadow=sets["shadow"],
            )
        )
    return out


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    return STRING


__all__ = ["STRING", "RuleSet", "load_ruleset", "parse_duration"]
