"""Column mappings that transform: a transaction field computed from a row by an expression of the rule language.

A mapping field may be `{expr: "replace(merchant, ' ', '_')"}` instead of a
column name (docs/data.md). The expression is the rules' safe grammar
(`engine.rules.expr`, its functions included: `replace`, `lower`, `concat`,
`text`, `parse_time`, arithmetic), reading the table's columns by name
(numbers, text, booleans; timestamps as epoch milliseconds). It is checked
against the table's columns before any row is read, with errors at the
mapping file's line and column, then evaluated once per row into a new
column that the mapping reads like any other (`Transform.column`).
"""

from __future__ import annotations

import ast
import keyword
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.enrich import BOOL, NUMBER, STRING
from engine.rules.expr import Compiled, ExprError, compile_condition

#: Fields whose expression gives a number (times as epoch milliseconds); every other field gives text.
NUMERIC_FIELDS = frozenset({"event_time", "label_time", "amount", "label"})
#: Fields that hold a time: the expression's number is rounded to whole milliseconds.
TIME_FIELDS = frozenset({"event_time", "label_time"})


class TransformError(ValueError):
    """An expression of a mapping that does not fit the table, or fails on a row (a DatasetError to callers)."""


@dataclass(frozen=True)
class Transform:
    """One mapping field's expression, and where it stands in the mapping file."""

    field: str  # a ColumnMapping field, or `extra.NAME`
    text: str
    where: str  # "FILE:LINE" of the expression (or "mapping")
    line: int = 1
    column: int = 1  # of the expression's first character in the file (1-based)

    @property
    def column_name(self) -> str:
        """The column the transform adds to the table (a name no file column is likely to have)."""
        return f"={self.field}"

    def wants(self) -> str:
        return NUMBER if self.field in NUMERIC_FIELDS else STRING

    def error(self, exc: ExprError) -> TransformError:
        col = self.column + exc.offset if exc.line == 1 else exc.column
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        message = exc.message.replace("a feature must be a number", "this must give a number")
        return TransformError(f"{self.where}:{self.line + exc.line - 1}:{col}: {self.field}: {message}{hint}")


def catalog_of(schema: pa.Schema) -> dict[str, str]:
    """The names an expression may read: the table's columns whose names are identifiers, with their type."""
    out: dict[str, str] = {}
    for f in schema:
        if not f.name.isidentifier() or keyword.iskeyword(f.name) or f.name in ("attributes", "lists"):
            continue
        t = f.type
        if pa.types.is_boolean(t):
            out[f.name] = BOOL
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_timestamp(t):
            out[f.name] = NUMBER
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            out[f.name] = STRING
    return out


def compile_transform(transform: Transform, schema: pa.Schema) -> Compiled:
    """Check and compile one expression against the table's columns; TransformError with file:line:column."""
    try:
        return compile_condition(transform.text, catalog_of(schema), transform.where, want=transform.wants())
    except ExprError as exc:
        raise transform.error(exc) from None


def _values(table: pa.Table, name: str, kind: str) -> list[Any]:
    col = table[name]
    if kind == STRING:
        return [v if v is not None else "" for v in pc.cast(col, pa.string()).to_pylist()]
    if kind == BOOL:
        return [bool(v) for v in col.to_pylist()]
    if pa.types.is_timestamp(col.type):
        col = pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
    values: list[Any] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).tolist()
    return values  # nulls are NaN: missing, as in rules


def names_read(transforms: Mapping[str, Transform]) -> set[str]:
    """The column names the expressions mention (before they are checked: a bad one simply names nothing)."""
    out: set[str] = set()
    for transform in transforms.values():
        try:
            tree = ast.parse(transform.text.strip(), mode="eval")
        except SyntaxError:
            continue
        out.update(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    return out


def apply_transforms(table: pa.Table, transforms: Mapping[str, Transform]) -> pa.Table:
    """The table with one column per transform (`Transform.column_name`), computed row by row."""
    if not transforms:
        return table
    catalog = catalog_of(table.schema)
    n = table.num_rows
    for transform in transforms.values():
        compiled = compile_transform(transform, table.schema)
        names = sorted(compiled.names)
        columns = {name: _values(table, name, catalog[name]) for name in names}
        fn = compiled.fn
        out: list[Any] = [None] * n
        for i in range(n):
            row = {name: values[i] for name, values in columns.items()}
            try:
                out[i] = fn(row)
            except (ArithmeticError, TypeError, ValueError, OverflowError) as exc:
                raise TransformError(
                    f"{transform.where}:{transform.line}: {transform.field}: data row {i + 1}: {exc}"
                ) from None
        if transform.wants() == STRING:
            array = pa.array(out, pa.string())
        else:
            numbers = np.array(out, dtype=np.float64)
            if transform.field in TIME_FIELDS:
                array = pa.array(np.rint(np.nan_to_num(numbers)).astype(np.int64), mask=np.isnan(numbers))
            else:
                array = pa.array(numbers, mask=np.isnan(numbers))
        table = table.append_column(transform.column_name, array)
    return table
