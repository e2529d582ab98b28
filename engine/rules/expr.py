"""The condition language: a small, typed expression language compiled once at load.

Grammar (a subset of Python expression syntax, parsed with `ast` and
checked node by node; anything not listed is refused):

    expr     := expr "or" expr | expr "and" expr | "not" expr | compare
    compare  := sum (op sum)*        op: < <= > >= == != in "not in"
    sum      := sum ("+" | "-" | "*" | "/") sum | "-" sum | atom
    atom     := NAME | "attributes." KEY | NUMBER | STRING | true | false
              | "[" literal ("," literal)* "]" | "(" expr ")"

Names come from a catalog (enriched fields, window names, `score`), each
with a type (number, string, bool); a condition must be a bool, `<`-style
comparisons take numbers, `==` compares equal types, `in` takes a list of
literals of the left side's type. Division by zero, or arithmetic on a
missing (NaN) value, makes the condition false.

The checked tree is rebuilt into a new Python AST whose only free name is
the field map `f`, and compiled into one function: no user text is ever
evaluated, and no attribute of a Python object is reachable.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.enrich import BOOL, NUMBER, STRING

Condition = Callable[[Mapping[str, Any]], bool]


class ExprError(Exception):
    """An error at (line, column) of the condition text, both 1-based."""

    def __init__(self, line: int, column: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Compiled:
    fn: Condition
    names: frozenset[str]  # catalog names the condition reads


_COMPARE = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
}
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


class _Checker:
    def __init__(self, catalog: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.names: set[str] = set()

    def fail(self, node: ast.AST, message: str, hint: str = "") -> ExprError:
        return ExprError(getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1, message, hint)

    def field(self, name: str) -> ast.expr:
        return ast.Subscript(value=ast.Name(id="f", ctx=ast.Load()), slice=ast.Constant(value=name), ctx=ast.Load())

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
            return ast.BinOp(left=left, op=node.op, right=right), NUMBER
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):
            if node.id in _LITERAL_NAMES:
                return ast.Constant(value=_LITERAL_NAMES[node.id]), BOOL
            found = self.catalog.get(node.id)
            if found is None:
                close = difflib.get_close_matches(node.id, list(self.catalog), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "run `risk-engine rules fields` for the catalog"
                raise self.fail(node, f"unknown field '{node.id}'", hint)
            self.names.add(node.id)
            return self.field(node.id), found
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "attributes":
                self.names.add("attributes")
                getter = ast.Attribute(value=self.field("attributes"), attr="get", ctx=ast.Load())
                call = ast.Call(func=getter, args=[ast.Constant(value=node.attr), ast.Constant(value="")], keywords=[])
                return call, STRING
            raise self.fail(node, "only 'attributes.KEY' may use a dot")
        if isinstance(node, ast.Constant):
            literal = _type_of_value(node.value)
            if literal is None:
                raise self.fail(node, f"unsupported literal {node.value!r}")
            return ast.Constant(value=node.value), literal
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            raise self.fail(node, "a list may only stand on the right of 'in' / 'not in'")
        raise self.fail(node, f"'{type(node).__name__}' is not part of the rule language")

    def literal_list(self, node: ast.AST, want: str) -> ast.expr:
        if not isinstance(node, ast.List | ast.Tuple | ast.Set):
            raise self.fail(node, "'in' needs a list of literals, e.g. ['US', 'CA']")
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
                raise self.fail(item, f"list item {value!r} is a {kind}, the left side is a {want}")
            values.append(value)
        return ast.Constant(value=frozenset(values))  # type: ignore[arg-type]  # compile() accepts frozensets

    def compare(self, node: ast.Compare) -> tuple[ast.expr, str]:
        first, lk = self.check(node.left)
        ops = []
        comparators = []
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            symbol = _COMPARE.get(type(op))
            if symbol is None:
                raise self.fail(node, f"operator '{type(op).__name__}' is not allowed")
            if symbol in ("in", "not in"):
                if len(node.ops) > 1:
                    raise self.fail(node, f"'{symbol}' cannot be chained with other comparisons; use 'and'")
                if lk == BOOL:
                    raise self.fail(node, "'in' needs a number or string on the left")
                right = self.literal_list(right_node, lk)
                rk = lk
            else:
                right, rk = self.check(right_node)
                if symbol in ("<", "<=", ">", ">=") and (lk != NUMBER or rk != NUMBER):
                    raise self.fail(node, f"'{symbol}' compares numbers, got {lk} and {rk}")
                if lk != rk:
                    raise self.fail(node, f"'{symbol}' compares a {lk} with a {rk}")
            ops.append(op)
            comparators.append(right)
            lk = rk
        return ast.Compare(left=first, ops=ops, comparators=comparators), BOOL


def compile_condition(text: str, catalog: Mapping[str, str], label: str = "<rule>") -> Compiled:
    """Parse, type-check and compile a condition; raise ExprError with a position."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError(1, 1, "the condition is empty")
    if len(text) > MAX_CONDITION_LENGTH:
        raise ExprError(1, 1, f"the condition is {len(text)} characters long, the limit is {MAX_CONDITION_LENGTH}")
    source = " ".join(text.split("\n")) if "\n" in text else text
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(exc.lineno or 1, exc.offset or 1, f"syntax error: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExprError(1, 1, "the condition is nested too deeply") from None
    checker = _Checker(catalog)
    try:
        body, kind = checker.check(tree.body)
    except RecursionError:
        raise ExprError(1, 1, "the condition is nested too deeply") from None
    if kind != BOOL:
        raise ExprError(1, 1, f"a condition must be true or false, this one is a {kind}")
    args = ast.arguments(posonlyargs=[], args=[ast.arg(arg="f")], kwonlyargs=[], kw_defaults=[], defaults=[])
    lam = ast.Expression(body=ast.Lambda(args=args, body=body))
    ast.fix_missing_locations(lam)
    try:
        code = compile(lam, label, "eval")
    except (RecursionError, MemoryError):
        raise ExprError(1, 1, "the condition is nested too deeply") from None
    fn = eval(code, {"__builtins__": {}})  # noqa: S307 - evaluates the AST built above, never user text
    return Compiled(fn=fn, names=frozenset(checker.names))
