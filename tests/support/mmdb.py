"""A tiny writer of MaxMind DB (`.mmdb`) files, so tests build their own databases.

Format (https://maxmind.github.io/MaxMind-DB/): a binary search tree over the address bits
(`node_count` nodes of two records each, 24, 28 or 32 bits per record), 16 zero bytes, the data
section, then b"\\xab\\xcd\\xefMaxMind.com" and the metadata map. A record below `node_count`
points to a node, equal to it means "no data", above it points into the data section at
`record - node_count - 16`.

Supported values: dict (string keys), list, str, bytes, bool, float (double), int (the smallest of
uint16/32/64/128 that fits, int32 when negative) and `Uint(value, bits)` for an exact unsigned type
(the metadata needs one: libmaxminddb insists that `build_epoch` is a uint64, for example).

IPv6 trees (`ip_version=6`) hold IPv4 networks at ::/96, as MaxMind's own databases do; IPv4 trees
(`ip_version=4`) hold IPv4 only. Later inserts win where networks overlap.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_EXTENDED = {"int32": 8, "array": 11, "bool": 14}


class Uint:
    """An unsigned integer written as exactly uint16, uint32, uint64 or uint128."""

    __slots__ = ("bits", "value")

    def __init__(self, value: int, bits: int) -> None:
        if bits not in (16, 32, 64, 128) or not 0 <= value < 1 << bits:
            raise ValueError(f"{value} is no uint{bits}")
        self.value, self.bits = value, bits


_UINT_TYPES = {16: 5, 32: 6, 64: 9, 128: 10}


def _control(type_num: int, size: int) -> bytes:
    """Control byte(s): 3 type bits (0 = extended, type in the next byte) and the size."""
    if size < 29:
        first, extra = size, b""
    elif size < 285:
        first, extra = 29, bytes([size - 29])
    elif size < 65_821:
        first, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        first, extra = 31, (size - 65_821).to_bytes(3, "big")
    if type_num <= 7:
        return bytes([(type_num << 5) | first]) + extra
    return bytes([first, type_num - 7]) + extra


def encode(value: Any) -> bytes:
    """One value in the MaxMind DB data format (no pointers)."""
    if isinstance(value, bool):
        return _control(_EXTENDED["bool"], int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, bytes):
        return _control(4, len(value)) + value
    if isinstance(value, Uint):
        raw = value.value.to_bytes((value.value.bit_length() + 7) // 8, "big")
        return _control(_UINT_TYPES[value.bits], len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        if value < 0:
            raw = value.to_bytes(4, "big", signed=True)
            return _control(_EXTENDED["int32"], 4) + raw
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        for bits, type_num in _UINT_TYPES.items():
            if len(raw) * 8 <= bits:
                return _control(type_num, len(raw)) + raw
        raise ValueError(f"integer too large for the format: {value}")
    if isinstance(value, dict):
        parts = [_control(7, len(value))]
        for key, item in value.items():
            parts += [encode(str(key)), encode(item)]
        return b"".join(parts)
    if isinstance(value, list | tuple):
        return _control(_EXTENDED["array"], len(value)) + b"".join(encode(item) for item in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class _Node:
    __slots__ = ("children",)

    def __init__(self) -> None:
        # Each child: None (no data), a _Node, or bytes (an encoded record).
        self.children: list[_Node | bytes | None] = [None, None]


class MMDBWriter:
    """Collect networks with their records, then `write(path)` a valid `.mmdb` file."""

    def __init__(
        self,
        *,
        ip_version: int = 6,
        record_size: int = 24,
        database_type: str = "Test-Country",
        build_epoch: int | None = None,
        description: str = "test database",
    ) -> None:
        if ip_version not in (4, 6) or record_size not in (24, 28, 32):
            raise ValueError("ip_version must be 4 or 6 and record_size 24, 28 or 32")
        self.ip_version = ip_version
        self.record_size = record_size
        self.database_type = database_type
        self.build_epoch = int(time.time()) if build_epoch is None else build_epoch
        self.description = description
        self._bits = 128 if ip_version == 6 else 32
        self._root = _Node()

    def insert(self, network: str, record: Any) -> None:
        """Map every address of `network` (CIDR text, IPv4 or IPv6) to `record`."""
        net = ipaddress.ip_network(network)
        value, length = int(net.network_address), net.prefixlen
        if net.version == 6 and self.ip_version == 4:
            raise ValueError(f"{network}: an IPv6 network in an IPv4 tree")
        if net.version == 4 and self.ip_version == 6:
            length += 96  # IPv4 lives at ::/96 in an IPv6 tree
        if length == 0:
            raise ValueError("a network of the whole address space is not supported")
        data = encode(record)
        node = self._root
        for depth in range(length):
            bit = (value >> (self._bits - 1 - depth)) & 1
            if depth == length - 1:
                node.children[bit] = data
                return
            child = node.children[bit]
            if not isinstance(child, _Node):
                split = _Node()
                split.children = [child, child]  # a broader record stays on both sides
                node.children[bit] = split
                child = split
            node = child

    def write(self, path: str | Path) -> Path:
        """Serialize the tree, data section and metadata to `path`."""
        nodes: list[_Node] = []
        numbers: dict[int, int] = {}
        stack = [self._root]
        while stack:  # depth-first numbering; the root is node 0
            node = stack.pop()
            numbers[id(node)] = len(nodes)
            nodes.append(node)
            stack.extend(child for child in reversed(node.children) if isinstance(child, _Node))
        node_count = len(nodes)

        data = bytearray()
        offsets: dict[bytes, int] = {}  # identical records are stored once

        def record_value(child: _Node | bytes | None) -> int:
            if child is None:
                return node_count
            if isinstance(child, _Node):
                return numbers[id(child)]
            if child not in offsets:
                offsets[child] = len(data)
                data.extend(child)
            return node_count + 16 + offsets[child]

        tree = bytearray()
        for node in nodes:
            left, right = (record_value(child) for child in node.children)
            if max(left, right) >= 1 << self.record_size:
                raise ValueError(f"record_size {self.record_size} is too small for this database")
            if self.record_size == 24:
                tree += left.to_bytes(3, "big") + right.to_bytes(3, "big")
            elif self.record_size == 28:
                middle = ((left >> 24) << 4) | (right >> 24)
                tree += (left & 0xFFFFFF).to_bytes(3, "big") + bytes([middle]) + (right & 0xFFFFFF).to_bytes(3, "big")
            else:
                tree += left.to_bytes(4, "big") + right.to_bytes(4, "big")

        metadata = {
            "node_count": Uint(node_count, 32),
            "record_size": Uint(self.record_size, 16),
            "ip_version": Uint(self.ip_version, 16),
            "database_type": self.database_type,
            "languages": ["en"],
            "binary_format_major_version": Uint(2, 16),
            "binary_format_minor_version": Uint(0, 16),
            "build_epoch": Uint(self.build_epoch, 64),
            "description": {"en": self.description},
        }
        out = Path(path)
        out.write_bytes(bytes(tree) + bytes(16) + bytes(data) + METADATA_MARKER + encode(metadata))
        return out


def write_mmdb(path: str | Path, networks: dict[str, Any], **options: Any) -> Path:
    """Shorthand: a database of `networks` (CIDR -> record) written to `path`."""
    writer = MMDBWriter(**options)
    for network, record in networks.items():
        writer.insert(network, record)
    return writer.write(path)
