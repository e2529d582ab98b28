"""Conditions that can never be true: contradictory bounds on one field joined by `and` (`amount > 100 and
amount < 50`), found on the parsed tree before a rule set loads (`engine.rules.expr`)."""

from __future__ import annotations

import ast
import math
from typing import Any

#: The comparison operators of the language, by AST node type.
COMPARE_SYMBOLS = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}


def _conjuncts(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [part for value in node.values for part in _conjuncts(value)]
    return [node]


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        try:
            return float(node.value)
        except OverflowError:  # an integer literal beyond float range
            return math.inf if node.value > 0 else -math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return -inner if inner is not None else None
    return None


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def contradiction(text: str) -> str | None:
    """Why an already-checked condition can never be true, or None.

    Looks at the comparisons of one field with constants joined by `and`
    (bounds like `amount > 100 and amount < 50`, two different `==`
    values, `==` outside an `in` list) and at a constant `false`.
    """
    source = text.replace("\r", " ").replace("\n", " ")
    body = ast.parse(source.strip(), mode="eval").body
    if isinstance(body, ast.Name) and body.id == "false":
        return "the condition is always false"
    lows: dict[str, tuple[float, bool]] = {}  # name -> (bound, inclusive)
    highs: dict[str, tuple[float, bool]] = {}
    allowed: dict[str, set[Any]] = {}
    for part in _conjuncts(body):
        if isinstance(part, ast.Name) and part.id == "false":
            return "one of the conditions joined by 'and' is always false"
        if not (isinstance(part, ast.Compare) and len(part.ops) == 1):
            continue
        symbol = COMPARE_SYMBOLS.get(type(part.ops[0]))
        left, right = part.left, part.comparators[0]
        if symbol in ("in",) and isinstance(left, ast.Name) and isinstance(right, ast.List | ast.Tuple | ast.Set):
            values = {_number(e) if _number(e) is not None else getattr(e, "value", None) for e in right.elts}
            allowed[left.id] = allowed[left.id] & values if left.id in allowed else values
            continue
        if symbol not in _FLIP:
            continue
        if isinstance(right, ast.Name) and not isinstance(left, ast.Name):
            left, right, symbol = right, left, _FLIP[symbol]
        if not isinstance(left, ast.Name):
            continue
        value: Any = _number(right)
        if value is None and isinstance(right, ast.Constant) and isinstance(right.value, str):
            value = right.value
        if value is None:
            continue
        name = left.id
        if symbol == "==":
            allowed[name] = allowed[name] & {value} if name in allowed else {value}
        elif isinstance(value, float):
            if symbol in (">", ">="):
                bound = (value, symbol == ">=")
                old = lows.get(name)
                if old is None or bound[0] > old[0] or (bound[0] == old[0] and not bound[1]):
                    lows[name] = bound
            elif symbol in ("<", "<="):
                bound = (value, symbol == "<=")
                old = highs.get(name)
                if old is None or bound[0] < old[0] or (bound[0] == old[0] and not bound[1]):
                    highs[name] = bound
    for name in set(lows) | set(highs) | set(allowed):
        lo, hi = lows.get(name), highs.get(name)
        if lo and hi and (lo[0] > hi[0] or (lo[0] == hi[0] and not (lo[1] and hi[1]))):
            return f"the bounds on '{name}' contradict each other: no value is above {lo[0]:g} and below {hi[0]:g}"
        if name in allowed:
            left_values = {
                v
                for v in allowed[name]
                if not isinstance(v, float)
                or (
                    (lo is None or v > lo[0] or (v == lo[0] and lo[1]))
                    and (hi is None or v < hi[0] or (v == hi[0] and hi[1]))
                )
            }
            if not left_values:
                return f"no value of '{name}' satisfies all the conditions on it joined by 'and'"
    return None
