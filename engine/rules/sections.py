"""The parsers of the rule files' list sections: `windows`, `features`, `lists` and `rules`.

Each takes the entries the loader gathered from every file (file, node,
line, column), reports every problem into the `Collector` and returns what
compiled; an entry with an error is left out (the loader then raises).
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Mapping
from pathlib import Path

from engine.enrich import FIELDS, NUMBER, STRING
from engine.rules.errors import ID, Collector, RuleError
from engine.rules.expr import Condition, Scope
from engine.rules.lists import KINDS, MAX_LIST_SIZE, ListValueError, NamedList, hold, load_list_file, parse_value
from engine.rules.messages import compile_message
from engine.rules.ruleset import DOMAINS, SCORE, Rule
from engine.rules.settings import MAX_WINDOW_MS, duration_problem
from engine.rules.source import Located, LocatedList
from engine.transaction import Action
from engine.windows.spec import (
    ANY_LABEL,
    ATTRIBUTE_PREFIX,
    EXACT_MS,
    LABELS,
    NUMERIC_FIELDS,
    TIME_AGGREGATES,
    Aggregate,
    WindowSpec,
)

#: Names a window may not take: the score, the attribute map, literals, Python keywords.
RESERVED = frozenset({SCORE, "attributes", "true", "false", *keyword.kwlist, *keyword.softkwlist})
ENTITY_FIELDS = ("user_id", "card_id", "device_id", "ip", "merchant_id", "country", "channel", "currency")
#: Fields a distinct count may read: every enriched text field (and attributes.NAME).
DISTINCT_FIELDS = tuple(name for name, (kind, _) in FIELDS.items() if kind == STRING)
#: An attribute name (the key of `attributes.NAME`), as validation accepts it.
ID_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MIN_WINDOW_MS = 60_000
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
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
#: Window fields whose aggregates are amounts (a rule reading such a window reads an amount too).
AMOUNT_WINDOW_FIELDS = frozenset({"amount", "amount_original", "amount_minor"})


def _distinct_field(b: Collector, node: Located, name: str) -> str | None:
    """The field a distinct count reads (an enriched text field, or attributes.NAME), or None after reporting."""
    at = node.value_at("field") if "field" in node else node.key_at("name")
    fld = node.get("field")
    examples = "e.g. card_id, ip_country, merchant_category or attributes.NAME"
    if fld is None:
        b.err(
            at,
            f"window '{name}': a distinct count needs a 'field', the value whose different values it counts",
            examples,
        )
        return None
    if not isinstance(fld, str):
        b.err(at, f"window '{name}': 'field' must be a field name, got {fld!r}", examples)
        return None
    if fld.startswith(ATTRIBUTE_PREFIX):
        if ID_KEY.match(fld[len(ATTRIBUTE_PREFIX) :]):
            return fld
        b.err(
            at,
            f"window '{name}': {fld!r} is not an attribute name",
            "attributes.NAME, NAME a letter then letters, digits or _",
        )
        return None
    if fld in DISTINCT_FIELDS:
        return str(fld)
    if fld in FIELDS:
        b.err(
            at,
            f"window '{name}': a distinct count counts text values, and '{fld}' is a {FIELDS[fld][0]}",
            f"text fields: {', '.join(DISTINCT_FIELDS)}, attributes.NAME",
        )
        return None
    close = difflib.get_close_matches(str(fld), DISTINCT_FIELDS, n=1)
    b.err(
        at,
        f"window '{name}': cannot count distinct values of {fld!r}: not a field",
        f"did you mean '{close[0]}'?" if close else examples,
    )
    return None


def parse_windows(b: Collector, nodes: list[tuple[str, Located, int, int]]) -> tuple[list[WindowSpec], set[str]]:
    """The windows, and the names of those with an error (kept in the catalog so rules reading them add no noise)."""
    specs: list[WindowSpec] = []
    broken: set[str] = set()
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _WINDOW_KEYS, "a window")
        name = b.named(node, "name", (line, col), seen, "window")
        if name is None:
            continue
        if name in FIELDS or name in RESERVED:
            b.err(node.value_at("name"), f"window name '{name}' is reserved (a field or a word of the language)")
            continue
        errors_before = len(b.errors)
        spec = _parse_window(b, node, name)
        if spec is None or len(b.errors) > errors_before:
            broken.add(name)
        else:
            specs.append(spec)
    return specs, broken


def _parse_window(b: Collector, node: Located, name: str) -> WindowSpec | None:
    """One window, every problem of it reported; None when it has one."""
    ok = True
    entity_raw = node.get("entity")
    entity = (entity_raw,) if isinstance(entity_raw, str) else tuple(entity_raw) if isinstance(entity_raw, list) else ()
    bad = [e for e in entity if e not in ENTITY_FIELDS]
    if not entity or bad:
        close = difflib.get_close_matches(str(bad[0]), ENTITY_FIELDS, n=1) if bad else []
        b.err(
            node.value_at("entity") if "entity" in node else node.key_at("name"),
            f"window '{name}': 'entity' must be one or more of {', '.join(ENTITY_FIELDS)}",
            f"did you mean '{close[0]}'?" if close else "",
        )
        ok = False
    aggregate: Aggregate | None
    try:
        aggregate = Aggregate(node.get("aggregate"))
    except ValueError:
        close = difflib.get_close_matches(str(node.get("aggregate")), [a.value for a in Aggregate], n=1)
        b.err(
            node.value_at("aggregate") if "aggregate" in node else node.key_at("name"),
            f"window '{name}': 'aggregate' must be one of {', '.join(a.value for a in Aggregate)}",
            f"did you mean '{close[0]}'?" if close else "",
        )
        aggregate = None
    duration, problem, hint = duration_problem(node.get("duration"), MIN_WINDOW_MS, MAX_WINDOW_MS, "1m", "90d")
    if duration is None:
        b.err(
            node.value_at("duration") if "duration" in node else node.key_at("name"),
            f"window '{name}': 'duration' " + (problem if "duration" in node else "is missing"),
            hint if "duration" in node else "like '10m', '24h' or '30d'",
        )
    fld = node.get("field")
    timed = aggregate in TIME_AGGREGATES
    if aggregate is None:
        pass
    elif aggregate is Aggregate.COUNT or timed:
        if fld is not None:
            what = "a count" if aggregate is Aggregate.COUNT else f"a {aggregate.value} window (it reads event times)"
            b.err(node.key_at("field"), f"window '{name}': {what} takes no 'field'")
            ok = False
    elif aggregate is Aggregate.DISTINCT:
        fld = _distinct_field(b, node, name)
        ok = ok and fld is not None
    elif not isinstance(fld, str) or fld not in NUMERIC_FIELDS:
        b.err(
            node.value_at("field") if "field" in node else node.key_at("name"),
            f"window '{name}': '{aggregate.value}' needs a numeric 'field', one of {', '.join(NUMERIC_FIELDS)}",
        )
        ok = False
    delay = 0
    if "delay" in node:
        got_delay, problem, hint = duration_problem(node.get("delay"), 0, MAX_WINDOW_MS, "0s", "90d")
        if got_delay is None:
            b.err(node.value_at("delay"), f"window '{name}': 'delay' {problem}", hint)
            ok = False
        elif timed:
            b.err(node.key_at("delay"), f"window '{name}': a {aggregate.value} window takes no 'delay'")  # type: ignore[union-attr]
            ok = False
        else:
            delay = got_delay
            if (
                duration is not None
                and aggregate is not Aggregate.DISTINCT
                and duration + delay > EXACT_MS
                and duration < EXACT_MS
            ):
                b.err(
                    node.value_at("delay"),
                    f"window '{name}': a window reaching back more than 1d (duration + delay) is kept in hourly "
                    "buckets, so its duration must be at least 1d",
                    "shorten the delay, or lengthen the duration",
                )
                ok = False
    filter_text = None
    filter_fn = None
    if "filter" in node:
        # Over the enriched fields only: no windows, no score, no lists (a list reload
        # would silently change what an existing series holds).
        compiled = b.condition(node, "filter", _FILTER_SCOPE, f"window '{name}' filter")
        if compiled is None:
            ok = False
        else:
            filter_text = " ".join(str(node.get("filter")).split())
            filter_fn = compiled.fn
    label = None
    source = node.get("source", "transactions")
    if source not in SOURCES:
        b.err(node.value_at("source"), f"window '{name}': 'source' must be one of {', '.join(SOURCES)}")
        ok = False
    elif source == "feedback":
        label = node.get("label", ANY_LABEL)
        if label not in (*LABELS, ANY_LABEL):
            b.err(
                node.value_at("label"),
                f"window '{name}': 'label' must be one of {', '.join((*LABELS, ANY_LABEL))}",
            )
            ok = False
        if aggregate is Aggregate.IS_NEW:
            b.err(
                node.value_at("aggregate"),
                f"window '{name}': is_new tells whether the transaction is its entity's first, and a label "
                "window does not hold transactions",
                "first_seen or since_previous read a label window",
            )
            ok = False
    elif "label" in node:
        b.err(node.key_at("label"), f"window '{name}': 'label' needs 'source: feedback'")
        ok = False
    if not ok or aggregate is None or duration is None:
        return None
    return WindowSpec(name, entity, aggregate, duration, fld, filter_text, delay, filter_fn, label)


def parse_features(
    b: Collector,
    nodes: list[tuple[str, Located, int, int]],
    catalog: dict[str, str],
    lists: Mapping[str, NamedList],
    window_names: set[str],
    amount_names: set[str],
) -> list[tuple[str, Condition, str]]:
    """Derived features: named numeric expressions over fields, windows and earlier features.

    Each is added to `catalog` (a number) for the rules and the model. One that
    reads a window (directly or through another feature) is added to
    `window_names`, so that rules reading it are skipped when windows are missing;
    one that reads an amount (a field, a window over an amount, a feature) to
    `amount_names`, so that a rule reading it says which currency it compared in.
    """
    out: list[tuple[str, Condition, str]] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _FEATURE_KEYS, "a feature")
        name = b.named(node, "name", (line, col), seen, "feature")
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
        if compiled is None or SCORE in compiled.names:
            if compiled is not None:
                b.err(
                    node.value_at("value"), f"feature '{name}' may not read the model score: the model reads features"
                )
            catalog[name] = NUMBER  # known, so that rules reading it report no unknown field on top
            window_names.add(name)
            continue
        catalog[name] = NUMBER
        if compiled.names & window_names:
            window_names.add(name)
        if compiled.names & amount_names:
            amount_names.add(name)
        out.append((name, compiled.fn, " ".join(str(node.get("value")).split())))
    return out


_FILTER_SCOPE = Scope({name: kind for name, (kind, _) in FIELDS.items()}, {}, DOMAINS)


def parse_lists(b: Collector, nodes: list[tuple[str, Located]], files: list[str], root: Path) -> dict[str, NamedList]:
    """The named lists. One with an error is kept empty (a placeholder), so that the rules reading it
    report no "unknown list" on top of the list's own error at its file and line."""
    out: dict[str, NamedList] = {}
    seen: dict[str, str] = {}
    for file, mapping in nodes:
        b.file = file
        for name, spec in mapping.items():
            at = mapping.key_at(name)
            if not ID.match(name):
                b.err(at, f"list name '{name}' must be lower-case letters, digits and _")
                continue
            if name in seen:
                b.err(at, f"duplicate list '{name}' (first in {seen[name]})")
                continue
            seen[name] = where = f"{file}:{at[0]}"
            errors_before = len(b.errors)
            parsed = _parse_list(b, file, name, spec, at, files, root)
            b.file = file
            if parsed is None or len(b.errors) > errors_before:
                kind = spec.get("kind", "string") if isinstance(spec, Located) else "string"
                out[name] = _placeholder(name, str(kind), where)
            else:
                out[name] = parsed
        b.file = ""
    return out


def _parse_list(
    b: Collector, file: str, name: str, spec: object, at: tuple[int, int], files: list[str], root: Path
) -> NamedList | None:
    """One list declaration and its values, every problem reported; None when it has one."""
    if not isinstance(spec, Located):
        b.err(at, f"list '{name}' must be a mapping with 'kind' and 'values' or 'file'")
        return None
    b.unknown_keys(spec, _LIST_KEYS, f"list '{name}'")
    kind = spec.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        b.err(
            spec.value_at("kind") if "kind" in spec else at,
            f"list '{name}': 'kind' must be one of {', '.join(KINDS)}",
            f"did you mean '{close[0]}'?" if close else "",
        )
        return None
    if ("values" in spec) == ("file" in spec):
        b.err(at, f"list '{name}' needs exactly one of 'values' (inline) or 'file' (a text file beside the rules)")
        return None
    if "values" in spec:
        raw = spec["values"]
        if not isinstance(raw, LocatedList):
            b.err(spec.value_at("values"), f"list '{name}': 'values' must be a list")
            return None
        if len(raw) > MAX_LIST_SIZE:
            b.err(at, f"list '{name}' has {len(raw)} values, the limit is {MAX_LIST_SIZE}")
            return None
        values = []
        for i, value in enumerate(raw):
            try:
                values.append(parse_value(kind, value))
            except ListValueError as exc:
                b.err(raw.item_pos[i], f"list '{name}': {exc}", exc.hint)
        if len(values) < len(raw):
            return None
        held = hold(kind, values)
    else:
        rel = str(spec["file"])
        path = (Path(file).parent / rel).resolve()
        if not path.is_relative_to(root):
            b.err(spec.value_at("file"), f"list '{name}': the file must be inside the rules folder {root}")
            return None
        try:
            held, count, problems = load_list_file(path, kind)
        except (OSError, UnicodeDecodeError) as exc:
            b.err(spec.value_at("file"), f"list '{name}': cannot read {path}: {exc}")
            return None
        files.append(str(path))
        for line, column, message, hint in problems:  # each at its own line of the list file
            b.errors.append(RuleError(str(path), line, column, f"list '{name}': {message}", hint))
        if problems:
            return None
        if count > MAX_LIST_SIZE:
            b.err(at, f"list '{name}' has {count} values, the limit is {MAX_LIST_SIZE}")
            return None
    return NamedList(name, kind, held, f"{file}:{at[0]}")


def _placeholder(name: str, kind: str, at: str) -> NamedList:
    """A list whose declaration or values have an error: empty, so that rules reading it report nothing more."""
    return NamedList(name, kind if kind in KINDS else "string", hold(kind if kind in KINDS else "string", []), at)


def parse_rules(
    b: Collector,
    nodes: list[tuple[str, Located, int, int]],
    scope: Scope,
    window_names: frozenset[str],
    units: Mapping[str, str],
    base: str,
    amount_names: frozenset[str] = AMOUNT_FIELDS,
) -> tuple[list[Rule], list[str]]:
    """The rules (disabled ones by id); every problem of every rule is reported, each key checked on its own.

    `units` says how each name a message can read is written (engine.rules.messages).
    """
    rules: list[Rule] = []
    disabled: list[str] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _RULE_KEYS, "a rule")
        rid = b.named(node, "id", (line, col), seen, "rule")
        label = f"rule '{rid}'" if rid is not None else "a rule"
        errors_before = len(b.errors)
        for key in ("condition", "action", "reason_code", "message"):
            if key not in node:
                b.err(node.key_at("id") if "id" in node else (line, col), f"{label} has no '{key}'", _RULE_HINTS[key])
        action: Action | None = None
        if "action" in node:
            action_text = node["action"]
            action = Action[str(action_text).upper()] if str(action_text) in ("allow", "review", "deny") else None
            if action is None:
                b.err(node.value_at("action"), f"{label}: 'action' must be allow, review or deny, got {action_text!r}")
        code = node.get("reason_code", "")
        if "reason_code" in node and (not isinstance(code, str) or not _CODE.match(code)):
            b.err(node.value_at("reason_code"), f"{label}: 'reason_code' must be UPPER_SNAKE_CASE, got {code!r}")
        message = node.get("message", "")
        template = None
        if "message" in node:
            if not isinstance(message, str) or not message.strip():
                b.err(node.value_at("message"), f"{label}: 'message' must be a non-empty string")
                message = ""
            else:
                template, problems = compile_message(message.strip(), units, base)
                for problem in problems:
                    b.err(
                        b.at_offset(node, "message", message, problem.offset),
                        f"{label}: {problem.message}",
                        problem.hint,
                    )
        mode = node.get("mode", "active")
        if mode not in MODES:
            b.err(node.value_at("mode"), f"{label}: 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        rollout = node.get("rollout", 100)
        if isinstance(rollout, bool) or not isinstance(rollout, int | float) or not 0 < rollout <= 100:
            b.err(node.value_at("rollout"), f"{label}: 'rollout' must be a percentage above 0 and at most 100")
        elif rollout < 100 and mode != "active":
            b.err(
                node.value_at("rollout"),
                f"{label}: 'rollout' applies to active rules (a shadow rule acts on none)",
            )
        owner = node.get("owner", "")
        tags = node.get("tags", [])
        if not isinstance(owner, str):
            b.err(node.value_at("owner"), f"{label}: 'owner' must be a string")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            b.err(node.value_at("tags"), f"{label}: 'tags' must be a list of strings")
        description = node.get("description", "")
        got = b.condition(node, "condition", scope, label) if "condition" in node else None
        if got is None or rid is None or action is None or len(b.errors) > errors_before:
            continue
        if mode == "disabled":
            disabled.append(rid)
            continue
        fn, names = got.fn, got.names
        id_line, id_col = node.value_at("id")
        rules.append(
            Rule(
                id=rid,
                description=str(description),
                action=action,
                reason_code=code,
                message=message.strip() if template else message.strip().replace("{{", "{").replace("}}", "}"),
                condition=fn,
                reads=names,
                uses_windows=bool(got.valued & window_names),
                uses_score=SCORE in got.valued,
                source=f"{file}:{id_line}:{id_col}",
                mode=mode,
                rollout=float(rollout),
                reads_amount=bool(names & amount_names),
                owner=owner,
                tags=tuple(tags),
                window_reads=frozenset(got.valued & window_names),
                template=template,
            )
        )
    return rules, disabled


_RULE_HINTS = {
    "condition": 'e.g. condition: "card_count_10m >= 5 and amount < 5"',
    "action": "allow, review or deny",
    "reason_code": "a stable UPPER_SNAKE_CASE code, e.g. CARD_TESTING",
    "message": 'a sentence for the reviewer; it may show values: "{card_count_10m} payments in 10 minutes"',
}
