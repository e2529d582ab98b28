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

from engine.enrich import FIELDS, NUMBER
from engine.rules.errors import ID, Collector, RuleError
from engine.rules.expr import Condition, Scope
from engine.rules.lists import KINDS, MAX_LIST_SIZE, ListValueError, NamedList, hold, load_list_file, parse_value
from engine.rules.ruleset import DOMAINS, SCORE, Rule
from engine.rules.settings import MAX_WINDOW_MS, parse_duration
from engine.rules.source import Located, LocatedList
from engine.transaction import Action
from engine.windows.spec import ANY_LABEL, EXACT_MS, LABELS, NUMERIC_FIELDS, Aggregate, WindowSpec

#: Names a window may not take: the score, the attribute map, literals, Python keywords.
RESERVED = frozenset({SCORE, "attributes", "true", "false", *keyword.kwlist, *keyword.softkwlist})
ENTITY_FIELDS = ("user_id", "card_id", "device_id", "ip", "merchant_id", "country", "channel", "currency")
DISTINCT_FIELDS = ENTITY_FIELDS
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


def parse_windows(b: Collector, nodes: list[tuple[str, Located, int, int]]) -> list[WindowSpec]:
    specs: list[WindowSpec] = []
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


def parse_features(
    b: Collector,
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


def parse_lists(b: Collector, nodes: list[tuple[str, Located]], files: list[str], root: Path) -> dict[str, NamedList]:
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


def parse_rules(
    b: Collector, nodes: list[tuple[str, Located, int, int]], scope: Scope, window_names: frozenset[str]
) -> tuple[list[Rule], list[str]]:
    rules: list[Rule] = []
    disabled: list[str] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _RULE_KEYS, "a rule")
        rid = b.named(node, "id", (line, col), seen, "rule")
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
