"""Errors found in a rule set, each with its file, line and column, and the collector that gathers them.

A rule set is checked whole: every parser reports into one `Collector`
(`err`), which knows the file being read, so that the loader raises
`RuleSetInvalid` once with every error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.enrich import BOOL
from engine.rules.expr import Compiled, ExprError, Scope, compile_condition
from engine.rules.source import Located, locate

#: A name analysts give (a window, feature, list, rule): lower_snake_case, at most 64 characters.
ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class RuleError:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class RuleSetInvalid(Exception):
    """A rule set with at least one error; `errors` lists them all."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class Collector:
    """The errors found so far, and the file being read (each parser sets `file` before reporting)."""

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

    def at_offset(self, node: Located, key: str, text: str, offset: int) -> tuple[int, int]:
        """The file position of character `offset` of the string value under `key` (its text as YAML gave it)."""
        line, col = node.value_at(key)
        return locate(self.lines(), line, col, node.value_style.get(key, ""), text, offset)

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
            for one in (exc, *exc.others):
                at = locate(self.lines(), line, col, style, text, one.offset)
                self.err(at, f"in {label}: {one.message}", one.hint)
            return None

    def named(self, node: Located, key: str, at: tuple[int, int], seen: dict[str, str], what: str) -> str | None:
        """The unique lower_snake_case name under `key`, or None after reporting why not."""
        name = node.get(key)
        if not isinstance(name, str) or not ID.match(name):
            self.err(
                node.value_at(key) if key in node else at,
                f"a {what} needs an '{key}' of lower-case letters, digits and _",
            )
            return None
        if name in seen:
            self.err(node.value_at(key), f"duplicate {what} {key} '{name}' (first in {seen[name]})")
            return None
        seen[name] = f"{self.file}:{node.value_at(key)[0]}"
        return name
