"""Loading a rules folder into an immutable, compiled `RuleSet`: read the files, gather, parse, test.

A rules folder holds `*.yaml` files, read in name order and merged:

    version: "2026.11.26-1"          # exactly once; every response carries it
    timezone: UTC                    # for hour / day_of_week / is_night
    currency: {base: USD, rates: {EUR: 1.08}}
    costs:    {review: 5, chargeback_factor: 1.5, false_decline_margin: 0.1}   # backtest money view
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
whose rule tests fail is not loaded either.

The work is split along the YAML's own sections: `engine.rules.settings`
(one small parser per setting, from a table), `engine.rules.sections`
(windows, features, lists, rules), `engine.rules.rule_tests` (the tests, and
running them), into the values of `engine.rules.ruleset`; every parser
reports into one `engine.rules.errors.Collector`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.enrich import BOOL, FIELDS, NUMBER, STRING, Enricher
from engine.geo import default_geo
from engine.iso import CURRENCY_EXPONENTS
from engine.rules import messages
from engine.rules.archive import FileEntry, digest_of, entry
from engine.rules.errors import Collector, RuleError, RuleSetInvalid
from engine.rules.expr import Scope
from engine.rules.rule_tests import parse_tests, run_rule_tests
from engine.rules.ruleset import DOMAINS, SCORE, RuleSet
from engine.rules.sections import (
    AMOUNT_FIELDS,
    AMOUNT_WINDOW_FIELDS,
    parse_features,
    parse_lists,
    parse_rules,
    parse_windows,
)
from engine.rules.settings import KEYS, POLICIES, SETTINGS, Context, Settings, parse_settings
from engine.rules.source import Located, LocatedList, YamlError, load_yaml
from engine.windows.spec import Aggregate, WindowPlan, WindowSpec

#: The keys a rule file may hold.
TOP_KEYS = (
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
    "keep_attributes",
    "costs",
    "lists",
    "rules",
    "tests",
)
#: The sections that are lists of mappings, gathered from every file in file order.
LIST_SECTIONS = ("windows", "features", "rules", "tests")

Entry = tuple[str, Located, int, int]  # file, node, line, column


def _read_files(path: Path, b: Collector, root: Path) -> tuple[list[tuple[str, Located]], list[FileEntry]]:
    """The parsed rule files, and the manifest entries of every YAML file (hashed from the bytes parsed)."""
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        b.errors.append(RuleError(str(path), 1, 1, "no *.yaml rule files found"))
    docs = []
    entries = []
    for file in files:
        b.file = str(file)
        try:
            data = file.read_bytes()
            entries.append(entry(root, file, data))
            doc = load_yaml(data.decode("utf-8"))
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
    return docs, entries


def message_units(specs: list[WindowSpec], broken: set[str], feature_names: list[str]) -> dict[str, str]:
    """How a rule message writes each name it can read (engine.rules.messages): money, count, seconds, ..."""
    units: dict[str, str] = {}
    for name, (kind, _) in FIELDS.items():
        units[name] = messages.TEXT if kind == STRING else messages.YES_NO if kind == BOOL else messages.NUMBER
    units["amount"] = messages.MONEY
    units["amount_original"] = messages.MONEY_AS_SENT
    for name in ("amount_minor", "amount_base_minor", "hour", "day_of_week", "ip_version"):
        units[name] = messages.COUNT
    for spec in specs:
        if spec.aggregate in (Aggregate.COUNT, Aggregate.DISTINCT, Aggregate.IS_NEW):
            units[spec.name] = messages.COUNT
        elif spec.aggregate in (Aggregate.FIRST_SEEN, Aggregate.SINCE_PREVIOUS):
            units[spec.name] = messages.SECONDS
        elif spec.field == "amount":
            units[spec.name] = messages.MONEY
        else:
            units[spec.name] = messages.NUMBER
    for name in [*broken, *feature_names]:
        units.setdefault(name, messages.NUMBER)
    units[SCORE] = messages.SCORE
    return units


def load_ruleset(path: str | Path, *, run_tests: bool = True) -> RuleSet:
    """Load, check and compile a rules folder (or a single file), and run its tests.

    Raise RuleSetInvalid with every error, or with every failing rule test.
    """
    path = Path(path)
    b = Collector()
    root = (path if path.is_dir() else path.parent).resolve()
    docs, manifest = _read_files(path, b, root)
    if b.errors:  # a file that does not parse: what follows would only add noise
        raise RuleSetInvalid(b.errors)

    found, entries, list_nodes = _gather(b, docs)
    if "version" not in found:
        b.file = str(path)
        b.err((1, 1), "the rule set has no 'version'", 'add e.g. version: "2026.11.26-1" to one file')
    files = [name for name, _ in docs]
    settings = Settings()
    parse_settings(b, found, SETTINGS, settings, Context(root, files))
    if "geoip" not in found:
        settings.geoip = default_geo()

    lists = parse_lists(b, list_nodes, files, root)
    specs, broken = parse_windows(b, entries["windows"])
    catalog: dict[str, str] = {name: kind for name, (kind, _) in FIELDS.items()}
    for name in [*(s.name for s in specs), *broken]:  # a broken window is still a name: no noise where it is read
        catalog[name] = NUMBER
    lookup_names = {s.name for s in specs} | broken
    amount_names = set(AMOUNT_FIELDS) | {s.name for s in specs if s.field in AMOUNT_WINDOW_FIELDS}
    features = parse_features(b, entries["features"], catalog, lists, lookup_names, amount_names)
    catalog[SCORE] = NUMBER
    window_names = frozenset(lookup_names)  # windows and the features that read them
    parse_settings(b, found, POLICIES, settings, Context(root, files, catalog, window_names, lists))

    scope = Scope(catalog, lists, DOMAINS)
    units = message_units(specs, broken, [name for name, _, _ in features])
    rules, disabled = parse_rules(
        b, entries["rules"], scope, window_names, units, settings.currency.base, frozenset(amount_names)
    )
    tests = parse_tests(b, entries["tests"], settings.currency, catalog, window_names)

    if b.errors:
        raise RuleSetInvalid(b.errors)
    try:
        manifest += [entry(root, Path(extra)) for extra in files[len(docs) :]]
    except OSError as exc:
        raise RuleSetInvalid([RuleError(str(path), 1, 1, f"cannot read a file of the set: {exc}")]) from None
    money = settings.currency
    scale = 10.0 ** -CURRENCY_EXPONENTS[money.base]
    ruleset = RuleSet(
        version=settings.version,
        digest=digest_of(manifest),
        rules=tuple(rules),
        windows=WindowPlan(specs, settings.allowed_lateness, scale, settings.max_events_per_series),
        enricher=Enricher(money, settings.timezone, settings.geoip),
        model_policy=settings.model,
        degraded=settings.degraded,
        catalog=catalog,
        lists=lists,
        disabled=tuple(disabled),
        tests=tuple(tests),
        files=tuple(files),
        features=tuple(features),
        data_mapping=tuple(settings.data_mapping),
        label_delay_ms=settings.label_delay,
        keep_attributes=frozenset(settings.keep_attributes),
        root=str(root),
        manifest=tuple(manifest),
        costs=settings.costs,
    )
    if run_tests:
        outcomes = run_rule_tests(ruleset)
        failures = [RuleError(*r.where_parts(), r.failure) for r in outcomes if r.failure]
        if failures:
            raise RuleSetInvalid(failures)
        fired = {rule_id for r in outcomes for rule_id in r.fired}
        ruleset = replace(ruleset, without_example=tuple(r.id for r in ruleset.rules if r.id not in fired))
    return ruleset


def _gather(
    b: Collector, docs: list[tuple[str, Located]]
) -> tuple[dict[str, tuple[str, Located]], dict[str, list[Entry]], list[tuple[str, Located]]]:
    """(setting -> the file that sets it and its document, section -> its entries from every file, the lists)."""
    found: dict[str, tuple[str, Located]] = {}
    entries: dict[str, list[Entry]] = {key: [] for key in LIST_SECTIONS}
    list_nodes: list[tuple[str, Located]] = []
    for file, doc in docs:
        b.file = file
        b.unknown_keys(doc, TOP_KEYS, "a rule file")
        for key in KEYS:
            if key in doc:
                if key in found:
                    b.err(doc.key_at(key), f"'{key}' is already set in {found[key][0]}")
                else:
                    found[key] = (file, doc)
        if "lists" in doc:
            if isinstance(doc["lists"], Located):
                list_nodes.append((file, doc["lists"]))
            else:
                b.err(doc.value_at("lists"), "'lists' must map list names to {kind, values or file}")
        for key in LIST_SECTIONS:
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
                entries[key].append((file, item, *items.item_pos[i]))
    return found, entries, list_nodes


__all__ = ["RuleSet", "load_ruleset"]
