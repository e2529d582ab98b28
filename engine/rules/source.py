"""YAML with positions: mappings remember where each key and value stood.

PyYAML's composer gives every node a start mark; the loader below keeps the
marks of mapping keys and values so that every error can name its line and
column. Only the safe YAML subset is accepted (no tags that build objects).
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

    def key_at(self, key: str) -> tuple[int, int]:
        return self.key_pos.get(key, (self.line, self.column))

    def value_at(self, key: str) -> tuple[int, int]:
        line, col, _ = self.value_pos.get(key, (self.line, self.column, 0))
        return line, col


class LocatedList(list[Any]):
    line: int = 1
    column: int = 1
    item_pos: list[tuple[int, int]]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Located:
    loader.flatten_mapping(node)
    out = Located()
    out.line, out.column = node.start_mark.line + 1, node.start_mark.column + 1
    out.key_pos = {}
    out.value_pos = {}
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
