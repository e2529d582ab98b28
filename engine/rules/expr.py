"""The condition language: a small, typed expression language compiled once at load.

Grammar (a subset of Python expression syntax, parsed with `ast` and
checked node by node; anything not listed is refused). docs/rules.md has
the full reference:

    expr     := expr "or" expr | expr "and" expr | "not" expr | compare
    compare  := sum (op sum)*            op: < <= > >= == !=
              | sum ("in" | "not in") (list | "lists." NAME)
              | sum "is" ["not"] "missing"
    sum      := sum ("+" | "-" | "*" | "/") sum | "-" sum | atom
    atom     := NAME | "attributes." KEY | NUMBER | STRING | true | false
              | FUNCTION "(" expr ("," expr)* ")" | "(" expr ")"
    list     := "[" literal ("," literal)* "]"

Names come from a catalog (enriched fields, window names, `score`), each
with a type (number, string, bool); a condition must be a bool, `<`-style
comparisons take numbers, `==` compares equal types, `in` takes a list of
literals of the left side's type or a named list of that type (a CIDR list
takes the `ip` field). `x / 0`, like arithmetic on a missing (NaN) value, is
missing: it makes its own comparison false, not the whole condition.

Besides types, the checker refuses conditions that can never be true: a
comparison with a value outside a field's domain (`channel == 'atm'`) and
contradictory bounds joined by `and` (`amount > 100 and amount < 50`).

The checked tree is rebuilt into a new Python AST whose only free names are
the field map `f` and the helpers this module binds (functions, CIDR sets),
and compiled into one function: no user text is ever evaluated, and no
attribute of a Python object is reachable.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.enrich import ADDRESS_FIELD, BOOL, NUMBER, STRING
from engine.iso import COUNTRY_ALIASES, country_hint
from engine.rules.contradiction import COMPARE_SYMBOLS, contradiction
from engine.rules.functions import FUNCTIONS, divide
from engine.rules.lists import CidrSet, ListValueError, NamedList, parse_network

Condition = Callable[[Mapping[str, Any]], bool]


class ExprError(Exception):
    """An error at character `offset` (0-based) of the condition text; `line`/`column` (1-based) within it.

    `others` holds further errors found in the same text (habits from other
    languages are all reported at once).
    """

    def __init__(self, line: int, column: int, message: str, hint: str = "", offset: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message
        self.hint = hint
        self.offset = column - 1 if offset is None else offset
        self.others: list[ExprError] = []


# --- habits from SQL and other languages, recognised before parsing ---------------------------

#: (pattern over the text with its string literals blanked, message, hint); the first group, if any, is shown.
_HABITS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"&&"), "'&&' is not an operator of the rule language", "write 'and'"),
    (re.compile(r"\|\|"), "'||' is not an operator of the rule language", "write 'or'"),
    (re.compile(r"<>"), "'<>' is not an operator of the rule language", "write '!=' for 'not equal'"),
    (re.compile(r"=>"), "'=>' is not an operator of the rule language", "write '>='"),
    (re.compile(r"=<"), "'=<' is not an operator of the rule language", "write '<='"),
    (
        re.compile(r"(?<![<>=!:])=(?![=<>])"),
        "'=' is not a comparison in the rule language",
        "write '==' to compare, e.g. country == 'BR'",
    ),
    (re.compile(r"!(?!=)"), "'!' is not an operator of the rule language", "write 'not', e.g. not ip_is_private"),
    (
        re.compile(r"(?<![\w.])(AND|OR|NOT|And|Or|Not)(?![\w.])"),
        "'{0}' is not a word of the rule language",
        "write '{1}' in lower case",
    ),
    (
        re.compile(r"(?<![\w.])(NULL|null|None|nil)(?![\w.])"),
        "'{0}' is not a value of the rule language",
        "test a value that was not sent with 'is missing', e.g. device_id is missing",
    ),
)
_KEYWORD_ARGUMENT = re.compile(r"[(,]\s*[A-Za-z_]\w*\s*$")
_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w.])")


def _blank_strings(text: str) -> tuple[str, list[int]]:
    """The text with the contents of its string literals replaced by spaces, and the bracket depth at each character."""
    out = []
    depth = []
    quote = ""
    level = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and i + 1 < len(text):
                out.append("  ")
                depth += [level, level]
                i += 2
                continue
            out.append(ch if ch == quote else " ")
            if ch == quote:
                quote = ""
        else:
            if ch in "'\"":
                quote = ch
            elif ch in "([":
                level += 1
            elif ch in ")]":
                level = max(level - 1, 0)
            out.append(ch)
        depth.append(level)
        i += 1
    return "".join(out), depth


def habits(text: str) -> list[ExprError]:
    """Habits from SQL, C-like languages and spreadsheets in a condition, each with a hint: all of them."""
    blank, depth = _blank_strings(text)
    found: list[ExprError] = []
    for pattern, message, hint in _HABITS:
        for m in pattern.finditer(blank):
            word = m.group(1) if m.groups() else m.group(0)
            if word == "=" and _KEYWORD_ARGUMENT.search(blank, 0, m.start()):
                continue  # f(x, key=...): refused later with its own message
            found.append(ExprError(1, m.start() + 1, message.format(word), hint.format(word, word.lower()), m.start()))
    for m in _THOUSANDS.finditer(blank):
        # Inside a list or a call a comma separates items, except before a zero that no one
        # writes as an item: [1,000] would silently be [1, 0].
        if depth[m.start()] == 0 or ",0" in m.group(0):
            number = m.group(0).replace(",", "")
            found.append(
                ExprError(
                    1,
                    m.start() + 1,
                    f"'{m.group(0)}' is not a number: a comma separates list items",
                    f"write {number} or {int(float(number)):_}{'.' + number.split('.')[1] if '.' in number else ''}",
                    m.start(),
                )
            )
    found.sort(key=lambda e: e.offset)
    return found


@dataclass(frozen=True, slots=True)
class Compiled:
    fn: Condition
    names: frozenset[str]  # catalog names the condition reads
    lists: frozenset[str] = frozenset()  # named lists it reads
    #: names read as values, not only tested with `is missing` / `if_missing`: a rule
    #: must be skipped when one of these could not be computed, but not for the others
    valued: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Scope:
    """What a condition may read: typed names, named lists, and the known domain of some fields."""

    catalog: Mapping[str, str]
    lists: Mapping[str, NamedList] = field(default_factory=dict)
    domains: Mapping[str, frozenset[str]] = field(default_factory=dict)


_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_LITERAL_NAMES = {"true": True, "false": False}
MAX_CONDITION_LENGTH = 2000


def _type_of_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    return None


def _alias_hint(code: str) -> str:
    return country_hint(code)


def _nearest(word: str, options: Any) -> str:
    """'did you mean ...?' with up to three close names, or ''."""
    close = [f"'{c}'" for c in difflib.get_close_matches(word, list(options), n=3)]
    if not close:
        return ""
    return f"did you mean {close[0]}?" if len(close) == 1 else f"did you mean {', '.join(close[:-1])} or {close[-1]}?"


class _Checker:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.catalog = scope.catalog
        self.names: set[str] = set()
        self.valued: set[str] = set()
        self.guarded = 0  # > 0 inside `is missing` and the first argument of if_missing()
        self.lists: set[str] = set()
        self.env: dict[str, Any] = {"__builtins__": {}}
        self.to_char: Callable[[int], int] = lambda col: col  # byte column -> character offset
        self.text = ""  # the parsed text (for the analyst's own spelling of a literal in a hint)

    def fail(self, node: ast.AST, message: str, hint: str = "") -> ExprError:
        offset = self.to_char(getattr(node, "col_offset", 0))
        return ExprError(1, offset + 1, message, hint, offset)

    def field(self, name: str) -> ast.expr:
        return ast.Subscript(value=ast.Name(id="f", ctx=ast.Load()), slice=ast.Constant(value=name), ctx=ast.Load())

    def bind(self, value: Any) -> ast.expr:
        """A helper object reachable from the compiled code under a name no rule can write."""
        name = f"_h{len(self.env)}"
        self.env[name] = value
        return ast.Name(id=name, ctx=ast.Load())

    def check(self, node: ast.AST) -> tuple[ast.expr, str]:
        """Return (rebuilt node, type) or raise ExprError."""
        if isinstance(node, ast.BoolOp):
            parts = []
            for value in node.values:
                rebuilt, kind = self.check(value)
                if kind != BOOL:
                    raise self.fail(value, f"'and'/'or' needs true/false on each side, got a {kind}")
                parts.append(rebuilt)
            return ast.BoolOp(op=node.op, values=parts), BOOL
        if isinstance(node, ast.UnaryOp):
            rebuilt, kind = self.check(node.operand)
            if isinstance(node.op, ast.Not):
                if kind != BOOL:
                    raise self.fail(node, f"'not' needs true/false, got a {kind}")
                return ast.UnaryOp(op=ast.Not(), operand=rebuilt), BOOL
            if isinstance(node.op, ast.USub) and kind == NUMBER:
                return ast.UnaryOp(op=ast.USub(), operand=rebuilt), NUMBER
            raise self.fail(node, "only 'not' and unary '-' on a number are allowed")
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _ARITH):
                raise self.fail(node, "only + - * / are allowed in arithmetic")
            left, lk = self.check(node.left)
            right, rk = self.check(node.right)
            if lk != NUMBER or rk != NUMBER:
                raise self.fail(node, f"arithmetic needs numbers, got {lk} and {rk}")
            if isinstance(node.op, ast.Div):
                return ast.Call(func=self.bind(divide), args=[left, right], keywords=[]), NUMBER
            return ast.BinOp(left=left, op=node.op, right=right), NUMBER
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            if node.id in _LITERAL_NAMES:
                return ast.Constant(value=_LITERAL_NAMES[node.id]), BOOL
            if node.id == "missing":
                raise self.fail(node, "'missing' only follows 'is' or 'is not', e.g. 'device_id is missing'")
            found = self.catalog.get(node.id)
            if found is None:
                hint = _nearest(node.id, self.catalog) or "run `risk-engine rules fields PATH` for the catalog"
                if node.id in FUNCTIONS:
                    hint = f"'{node.id}' is a function: call it, e.g. {node.id}(...)"
                elif node.id in COUNTRY_ALIASES:
                    hint = f"a value is quoted, and {_alias_hint(node.id)}"
                elif node.id.isupper():
                    hint = f"a value is quoted: '{node.id}'"
                elif not _nearest(node.id, self.catalog):
                    hint = f"if {node.id} is a value, quote it: '{node.id}'; otherwise {hint}"
                raise self.fail(node, f"unknown field '{node.id}'", hint)
            self.names.add(node.id)
            if not self.guarded:
                self.valued.add(node.id)
            return self.field(node.id), found
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "attributes":
                self.names.add("attributes")
                self.valued.add("attributes")
                getter = ast.Attribute(value=self.field("attributes"), attr="get", ctx=ast.Load())
                call = ast.Call(func=getter, args=[ast.Constant(value=node.attr), ast.Constant(value="")], keywords=[])
                return call, STRING
            if isinstance(node.value, ast.Name) and node.value.id == "lists":
                raise self.fail(node, f"a named list only stands on the right of 'in': 'x in lists.{node.attr}'")
            raise self.fail(node, "only 'attributes.KEY' and 'lists.NAME' may use a dot")
        if isinstance(node, ast.Constant):
            literal = _type_of_value(node.value)
            if literal is None:
                raise self.fail(node, f"unsupported literal {node.value!r}")
            return ast.Constant(value=node.value), literal
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            raise self.fail(node, "a list may only stand on the right of 'in' / 'not in'")
        raise self.fail(node, f"'{type(node).__name__}' is not part of the rule language")

    def call(self, node: ast.Call) -> tuple[ast.expr, str]:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else "this"
            hint = _nearest(name, FUNCTIONS) or f"functions: {', '.join(FUNCTIONS)}"
            raise self.fail(node, f"unknown function '{name}'", hint)
        if node.keywords:
            raise self.fail(node, "functions take plain arguments, not name=value")
        name = node.func.id
        fn = FUNCTIONS[name]
        params = list(fn.params)
        repeat = params[-1] == "*"
        if repeat:
            params.pop()
        n = len(node.args)
        if n < len(params) or (n > len(params) and not repeat):
            want = f"at least {len(params)}" if repeat else str(len(params))
            raise self.fail(node, f"{name}() takes {want} argument(s), got {n}")
        if name == "in_cidr":
            return self.in_cidr(node)
        args = []
        for i, arg in enumerate(node.args):
            want_type = params[min(i, len(params) - 1)]
            guard = name == "if_missing" and i == 0
            self.guarded += guard
            try:
                rebuilt, kind = self.check(arg)
            finally:
                self.guarded -= guard
            if kind != want_type:
                raise self.fail(arg, f"argument {i + 1} of {name}() must be a {want_type}, got a {kind}")
            args.append(rebuilt)
        return ast.Call(func=self.bind(fn.impl), args=args, keywords=[]), fn.returns

    def address(self, node: ast.AST, what: str) -> ast.expr:
        if not (isinstance(node, ast.Name) and node.id == "ip" and "ip" in self.catalog):
            raise self.fail(node, f"{what} matches the 'ip' field, e.g. 'ip in lists.blocked_ranges'")
        self.names.add("ip")
        self.valued.add("ip")
        return self.field(ADDRESS_FIELD)

    def in_cidr(self, node: ast.Call) -> tuple[ast.expr, str]:
        addr = self.address(node.args[0], "in_cidr()")
        networks = []
        for arg in node.args[1:]:
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise self.fail(arg, "in_cidr() takes networks as string literals, e.g. '10.0.0.0/8'")
            try:
                networks.append(parse_network(arg.value))
            except ListValueError as exc:
                raise self.fail(arg, str(exc)) from None
        cidrs = CidrSet(networks)
        return ast.Call(func=self.bind(cidrs.contains), args=[addr], keywords=[]), BOOL

    def literal_list(self, node: ast.AST, want: str) -> tuple[ast.expr, frozenset[Any]]:
        if not isinstance(node, ast.List | ast.Tuple | ast.Set):
            raise self.fail(node, "'in' needs a list of literals, e.g. ['US', 'CA'], or a named list 'lists.NAME'")
        values: list[Any] = []
        for item in node.elts:
            value: Any = item.value if isinstance(item, ast.Constant) else None
            if value is None and isinstance(item, ast.UnaryOp) and isinstance(item.op, ast.USub):
                inner = item.operand
                if isinstance(inner, ast.Constant) and _type_of_value(inner.value) == NUMBER:
                    value = -inner.value  # type: ignore[operator]
            kind = _type_of_value(value)
            if kind is None:
                raise self.fail(item, "list items must be literals (numbers or strings)")
            if kind != want:
                hint = f"quote it: '{value}'" if want == STRING and kind == NUMBER else ""
                raise self.fail(item, f"list item {value!r} is a {kind}, the left side is a {want}", hint)
            values.append(value)
        frozen = frozenset(values)
        return ast.Constant(value=frozen), frozen  # type: ignore[arg-type]  # compile() accepts frozensets

    def named_list(self, node: ast.Attribute) -> NamedList:
        known = self.scope.lists
        found = known.get(node.attr)
        if found is None:
            hint = _nearest(node.attr, known) or (
                f"declared lists: {', '.join(sorted(known))}" if known else "declare it under 'lists:' in a rule file"
            )
            raise self.fail(node, f"unknown list '{node.attr}'", hint)
        self.lists.add(node.attr)
        return found

    def membership(self, node: ast.Compare, left_node: ast.AST, right_node: ast.AST, negate: bool) -> ast.expr:
        symbol = "not in" if negate else "in"
        if isinstance(right_node, ast.Attribute) and isinstance(right_node.value, ast.Name):
            if right_node.value.id == "lists":
                named = self.named_list(right_node)
                if isinstance(named.values, CidrSet):
                    addr = self.address(left_node, f"CIDR list '{named.name}'")
                    test: ast.expr = ast.Call(func=self.bind(named.values.contains), args=[addr], keywords=[])
                    return ast.UnaryOp(op=ast.Not(), operand=test) if negate else test
                left, lk = self.check(left_node)
                if lk != named.value_type:
                    raise self.fail(node, f"list '{named.name}' holds {named.kind} values, the left side is a {lk}")
                op: ast.cmpop = ast.NotIn() if negate else ast.In()
                return ast.Compare(left=left, ops=[op], comparators=[self.bind(named.values)])
        left, lk = self.check(left_node)
        if lk == BOOL:
            raise self.fail(node, f"'{symbol}' needs a number or string on the left")
        right, values = self.literal_list(right_node, lk)
        if not negate:  # `not in` a list of impossible values is merely always true
            self.check_domain(left_node, values, node)
        return ast.Compare(left=left, ops=[ast.NotIn() if negate else ast.In()], comparators=[right])

    def _quote_hint(self, left: ast.AST, right: ast.AST) -> tuple[str, ast.AST | None]:
        """For a string field compared with an unquoted number (an MCC, a code): quote it (hint, the literal)."""
        for name, value in ((left, right), (right, left)):
            if (
                isinstance(name, ast.Name)
                and self.catalog.get(name.id) == STRING
                and isinstance(value, ast.Constant)
                and _type_of_value(value.value) == NUMBER
            ):
                text = self.source_of(value) or str(value.value)
                return f"'{name.id}' is text: quote the value, {name.id} == '{text}'", value
        return "", None

    def source_of(self, node: ast.AST) -> str:
        """The analyst's own spelling of a node (e.g. '0742', not 742), or ''."""
        text = ast.get_source_segment(self.text, node) if self.text else None
        return text or ""

    def check_domain(self, name_node: ast.AST, values: Any, at: ast.AST) -> None:
        """Refuse a comparison with a value the field can never take (an unreachable condition)."""
        if not isinstance(name_node, ast.Name):
            return
        domain = self.scope.domains.get(name_node.id)
        if domain is None:
            return
        for value in values:
            if isinstance(value, str) and value not in domain:
                hint = _nearest(value, domain) or (
                    f"values: {', '.join(sorted(domain))}" if len(domain) <= 12 else "see `risk-engine rules fields`"
                )
                if value in COUNTRY_ALIASES and COUNTRY_ALIASES[value][0] in domain:
                    hint = _alias_hint(value)
                elif value.lower() in domain:
                    hint = f"values are lower case: '{value.lower()}'"
                elif value.upper() in domain:
                    hint = f"codes are upper case: '{value.upper()}'"
                raise self.fail(at, f"'{name_node.id}' is never {value!r}, so this can never be true", hint)

    def missing(self, node: ast.Compare, left_node: ast.AST, negate: bool) -> tuple[ast.expr, str]:
        self.guarded += 1
        try:
            left, kind = self.check(left_node)
        finally:
            self.guarded -= 1
        if kind == BOOL:
            raise self.fail(node, "a true/false field is never missing")
        if kind == STRING:
            test: ast.expr = ast.Compare(left=left, ops=[ast.Eq()], comparators=[ast.Constant(value="")])
        else:  # a number is missing when NaN: the only value not equal to itself
            test = ast.Compare(left=left, ops=[ast.NotEq()], comparators=[left])
            if not isinstance(left, ast.Subscript | ast.Name):
                test = ast.Call(func=self.bind(math.isnan), args=[left], keywords=[])
        return (ast.UnaryOp(op=ast.Not(), operand=test) if negate else test), BOOL

    def compare(self, node: ast.Compare) -> tuple[ast.expr, str]:
        symbols = [COMPARE_SYMBOLS.get(type(op)) for op in node.ops]
        if None in symbols:
            raise self.fail(node, "this comparison operator is not allowed")
        special = [s for s in symbols if s in ("in", "not in", "is", "is not")]
        if special and len(node.ops) > 1:
            raise self.fail(node, f"'{special[0]}' cannot be chained with other comparisons; use 'and'")
        symbol = symbols[0]
        if symbol in ("is", "is not"):
            right = node.comparators[0]
            if not (isinstance(right, ast.Name) and right.id == "missing"):
                raise self.fail(node, "'is' is only used as 'is missing' or 'is not missing'")
            return self.missing(node, node.left, symbol == "is not")
        if symbol in ("in", "not in"):
            return self.membership(node, node.left, node.comparators[0], symbol == "not in"), BOOL
        first, lk = self.check(node.left)
        left_node: ast.AST = node.left
        ops: list[ast.cmpop] = []
        comparators = []
        for op, symbol, right_node in zip(node.ops, symbols, node.comparators, strict=True):
            right, rk = self.check(right_node)
            if symbol in ("<", "<=", ">", ">=") and (lk != NUMBER or rk != NUMBER):
                raise self.fail(node, f"'{symbol}' compares numbers, got {lk} and {rk}")
            if lk != rk:
                hint, literal = self._quote_hint(left_node, right_node)
                raise self.fail(literal or node, f"'{symbol}' compares a {lk} with a {rk}", hint)
            if symbol == "==":
                for name_node, value_node in ((left_node, right_node), (right_node, left_node)):
                    if isinstance(value_node, ast.Constant):
                        self.check_domain(name_node, [value_node.value], value_node)
            ops.append(op)
            comparators.append(right)
            lk = rk
            left_node = right_node
        return ast.Compare(left=first, ops=ops, comparators=comparators), BOOL


# --- unreachable conditions -------------------------------------------------------------------


def compile_condition(text: str, scope: Scope | Mapping[str, str], label: str = "<rule>", want: str = BOOL) -> Compiled:
    """Parse, type-check and compile a condition; raise ExprError with a position.

    With `want=NUMBER` the text is a numeric expression instead (a derived
    feature): a number, or a bool read as 1 or 0.
    """
    if not isinstance(scope, Scope):
        scope = Scope(scope)
    if not isinstance(text, str) or not text.strip():
        raise ExprError(1, 1, "the condition is empty")
    if len(text) > MAX_CONDITION_LENGTH:
        raise ExprError(1, 1, f"the condition is {len(text)} characters long, the limit is {MAX_CONDITION_LENGTH}")
    # One line, same length: a newline becomes a space, so a character offset in the
    # parsed line is the same offset in the analyst's text (mapped back to lines later).
    source = text.replace("\r", " ").replace("\n", " ")
    found = habits(source)
    if found:
        found[0].others = found[1:]
        raise found[0]
    lead = len(source) - len(source.lstrip())
    body_text = source.strip()
    encoded = body_text.encode("utf-8")

    def to_char(byte_col: int) -> int:
        return lead + len(encoded[: max(byte_col, 0)].decode("utf-8", errors="ignore"))

    try:
        tree = ast.parse(body_text, mode="eval")
    except SyntaxError as exc:
        # SyntaxError offsets are 1-based characters (not bytes) in Python 3.10+
        offset = lead + max((exc.offset or 1) - 1, 0)
        hint = ""
        if "leading zeros" in exc.msg:
            hint = "a code with a leading zero (an MCC such as '0742') is text: quote it"
        elif "unterminated string" in exc.msg:
            hint = "close the quote"
        elif "was never closed" in exc.msg or "does not match" in exc.msg:
            hint = "check the parentheses and brackets"
        raise ExprError(1, offset + 1, f"syntax error: {exc.msg}", hint, offset=offset) from None
    except (RecursionError, MemoryError):
        raise ExprError(1, 1, "the condition is nested too deeply") from None
    checker = _Checker(scope)
    checker.to_char = to_char
    checker.text = body_text
    try:
        body, kind = checker.check(tree.body)
    except RecursionError:
        raise ExprError(1, 1, "the condition is nested too deeply") from None
    if want == BOOL and kind != BOOL:
        raise ExprError(1, 1, f"a condition must be true or false, this one is a {kind}")
    if want == NUMBER and kind not in (NUMBER, BOOL):
        raise ExprError(1, 1, f"a feature must be a number (or true/false), this one is a {kind}")
    if want == STRING and kind != STRING:
        raise ExprError(1, 1, f"this must give text, it gives a {kind} (text(x) turns a number into text)")
    try:
        why = contradiction(text) if want == BOOL else None
    except RecursionError:
        why = None
    if why is not None:
        raise ExprError(1, 1, f"unreachable: {why}", "the rule could never fire; fix or remove it")
    args = ast.arguments(posonlyargs=[], args=[ast.arg(arg="f")], kwonlyargs=[], kw_defaults=[], defaults=[])
    lam = ast.Expression(body=ast.Lambda(args=args, body=body))
    ast.fix_missing_locations(lam)
    try:
        code = compile(lam, label, "eval")
    except (RecursionError, MemoryError):
        raise ExprError(1, 1, "the condition is nested too deeply") from None
    fn = eval(code, checker.env)  # noqa: S307 - evaluates the AST built above, never user text
    return Compiled(
        fn=fn, names=frozenset(checker.names), lists=frozenset(checker.lists), valued=frozenset(checker.valued)
    )
