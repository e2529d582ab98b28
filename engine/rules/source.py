"""YAML with positions: mappings remember where each key and value stood.

PyYAML's composer gives every node a start mark; the loader below keeps the
marks of mapping keys and values so that every error can name its line and
column. Only the safe YAML subset is accepted (no tags that build objects),
without anchors and aliases (`&a` / `*a`): a rule file has no use for them,
and nested aliases can expand a few lines into billions of values.
"""

from __future__ import annotations

from typing import Any

import yaml


class Located(dict[str, Any]):
    """A YAML mapping that knows the position of the mapping, each key and each value."""

    line: int = 1
    column: int = 1
    key_pos: dict[str, tuple[int, int]]
    value_pos: dict[str, tuple[int, int, int]]  # line, column, and the value's quote offset
    value_style: dict[str, str]  # scalar style of the value: '' plain, "'" '"' quoted, '|' '>' block

    def key_at(self, key: str) -> tuple[int, int]:
        return self.key_pos.get(key, (self.line, self.column))

    def value_at(self, key: str) -> tuple[int, int]:
        line, col, _ = self.value_pos.get(key, (self.line, self.column, 0))
        return line, col


def locate(lines: list[str], line: int, column: int, style: str, text: str, offset: int) -> tuple[int, int]:
    """The file position (1-based) of character `offset` of a scalar's text.

    The scalar starts at (`line`, `column`) with the given style. Its text is
    matched back onto the file line by line: YAML folds plain, quoted and `>`
    scalars' line breaks into spaces and keeps `|` ones, and removes the
    indentation, so each file line's content appears in order in the text.
    Escapes in double-quoted scalars can shift the answer by a few columns.
    """
    start = (line, column)
    pos = 0
    rest = range(line, min(line + 500, len(lines)))  # the lines after the scalar's first
    if style not in ("|", ">"):  # content begins on the scalar's own line
        quote = 1 if style in ("'", '"') else 0
        first = lines[line - 1][column - 1 + quote :] if 0 < line <= len(lines) else ""
        common = 0
        while common < min(len(first), len(text)) and first[common] == text[common]:
            common += 1
        if offset < common:
            return line, column + quote + offset
        pos = common
    for n in rest:
        if pos >= len(text):
            break
        raw = lines[n]
        content = raw.strip()
        if not content:
            continue
        piece = content[: len(text) - pos]
        found = text.find(piece, pos)
        if found < 0:
            continue
        if found <= offset < found + len(piece):
            return n + 1, len(raw) - len(raw.lstrip()) + 1 + (offset - found)
        pos = found + len(piece)
    return start


class LocatedList(list[Any]):
    line: int = 1
    column: int = 1
    item_pos: list[tuple[int, int]]


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in rule files", event.start_mark
            )
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors (&name) are not allowed in rule files", event.start_mark
            )
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Located:
    loader.flatten_mapping(node)
    out = Located()
    out.line, out.column = node.start_mark.line + 1, node.start_mark.column + 1
    out.key_pos = {}
    out.value_pos = {}
    out.value_style = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_pos[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        quote = 1 if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("'", '"') else 0
        out.value_pos[key] = (value_node.start_mark.line + 1, value_node.start_mark.column + 1, quote)
        if isinstance(value_node, yaml.ScalarNode):
            out.value_style[key] = value_node.style or ""
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    out = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    out.line, out.column = node.start_mark.line + 1, node.start_mark.column + 1
    out.item_pos = [(c.start_mark.line + 1, c.start_mark.column + 1) for c in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)  # type: ignore[arg-type]


class YamlError(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message


def load_yaml(text: str) -> Any:
    """Parse YAML text; raise YamlError with a position on malformed input."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlError(line, col, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(1, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlError(1, 1, "invalid YAML: nested too deeply") from None
