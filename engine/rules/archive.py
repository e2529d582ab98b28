"""The audit trail of rule sets: the content digest of a set, the archive of every set served, and their diff.

**Digest.** A rule set is its files: the YAML files of the folder and every
file they name (list files, mapping files, a geoip database). Its *manifest*
lists each file by its path relative to the folder with the SHA-256 of its
bytes; the set's digest is the first 16 hex digits of the SHA-256 of that
manifest. Two sets with the same files give the same digest whatever their
`version:` says; change one byte, rename a file, and the digest changes.
Every answer carries the digest of the set that decided it
(`ScoreResponse.ruleset_digest`), and so does the decision log.

**Archive.** A server keeps a copy of every set it loads, by digest:
`ARCHIVE/<digest>/manifest.json` (version, digest, when, the files) and
`ARCHIVE/<digest>/files/<path>` for each text file of the set (a binary
file, such as a geoip database, is recorded by its hash only). Written once
per digest, into a temporary folder renamed into place, and checked against
the digest before (a file that changed while the set was loaded is not
archived under a digest it does not have). `risk-engine rules show --digest D`
prints an archived set; `risk-engine rules diff A B` compares two sets
(archived digests or folders) rule by rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.rules.source import Located, LocatedList, YamlError, load_yaml

MANIFEST = "manifest.json"
FILES = "files"
#: Extensions archived as text (everything else is recorded by hash only).
TEXT_SUFFIXES = (".yaml", ".yml", ".txt", ".csv", ".json")


class ArchiveError(Exception):
    """A digest not in the archive, an ambiguous prefix, or an unreadable set."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a rule set: its path (relative to the folder, or as written when outside it), hash and size."""

    name: str
    sha256: str
    size: int


def file_name(root: Path, path: Path) -> str:
    """A file's name in the manifest: its path relative to the rules folder (absolute when outside it)."""
    resolved = path.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)


def entry(root: Path, path: Path, data: bytes | None = None) -> FileEntry:
    """The manifest entry of a file (read now unless its bytes are given)."""
    data = path.read_bytes() if data is None else data
    return FileEntry(file_name(root, path), hashlib.sha256(data).hexdigest(), len(data))


def digest_of(entries: Iterable[FileEntry]) -> str:
    """The digest of a set: the SHA-256 of its manifest lines (name, tab, file hash), first 16 hex digits."""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.name}\t{e.sha256}\n".encode())
    return h.hexdigest()[:16]


# --- the archive ---------------------------------------------------------------------------------------


def archive(folder: Path, root: Path, version: str, digest: str, entries: Sequence[FileEntry]) -> Path | None:
    """Keep a copy of a set under `folder/<digest>/` (once per digest); returns its folder.

    None when the files no longer match the digest (they changed since the set
    was loaded: the reload that follows archives the new set). Raises OSError
    when the archive cannot be written.
    """
    target = folder / digest
    if (target / MANIFEST).is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=folder))
    try:
        copied = []
        for e in entries:
            path = Path(e.name) if Path(e.name).is_absolute() else root / e.name
            text = path.suffix.lower() in TEXT_SUFFIXES and not Path(e.name).is_absolute()
            if text:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != e.sha256:
                    return None  # changed since it was loaded
                out = staging / FILES / e.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
            copied.append({"name": e.name, "sha256": e.sha256, "size": e.size, "archived": text})
        manifest = {
            "digest": digest,
            "version": version,
            "archived_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(root),
            "files": copied,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(staging, target)
        except OSError:
            if (target / MANIFEST).is_file():  # another process archived the same set meanwhile
                return target
            raise
        return target
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def find(folder: Path, digest: str) -> Path:
    """The archived set of a digest (or of a unique prefix of at least 6 digits)."""
    digest = digest.strip().lower()
    if len(digest) < 6 or any(c not in "0123456789abcdef" for c in digest):
        raise ArchiveError(f"{digest!r} is not a rule set digest (16 hex digits, or a prefix of at least 6)")
    if not folder.is_dir():
        raise ArchiveError(f"no rule set archive at {folder}")
    found = sorted(p for p in folder.iterdir() if p.name.startswith(digest) and (p / MANIFEST).is_file())
    if not found:
        raise ArchiveError(f"no rule set with digest {digest} in {folder}")
    if len(found) > 1:
        raise ArchiveError(f"digest prefix {digest} is ambiguous: {', '.join(p.name for p in found)}")
    return found[0]


def manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    return data


def show(path: Path) -> str:
    """An archived set as text: its manifest, then each archived file."""
    m = manifest(path)
    lines = [f"# rule set {m['version']} ({m['digest']}), archived {m['archived_at']} from {m['source']}"]
    for f in m["files"]:
        kept = "" if f["archived"] else "  (recorded by hash only)"
        lines.append(f"#   {f['name']}  sha256 {f['sha256'][:16]}  {f['size']:,} bytes{kept}")
    for f in m["files"]:
        if f["archived"]:
            lines += ["", f"# --- {f['name']}", (path / FILES / f["name"]).read_text(encoding="utf-8").rstrip("\n")]
    return "\n".join(lines) + "\n"


# --- comparing two sets, rule by rule ------------------------------------------------------------------

#: What `diff` compares of each rule, in this order.
RULE_KEYS = ("condition", "action", "mode", "rollout", "reason_code", "message", "description", "owner", "tags")
_DEFAULTS: dict[str, Any] = {"mode": "active", "rollout": 100}


@dataclass(frozen=True, slots=True)
class RuleTable:
    """A set's rules as written (not compiled: a set that no longer loads can still be compared)."""

    label: str  # the folder, or 'digest (version)'
    version: str
    rules: dict[str, dict[str, Any]]


def read_rules(folder: Path, label: str) -> RuleTable:
    """The `version` and the rules of the YAML files of a folder, by id."""
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else [folder]
    if not files:
        raise ArchiveError(f"no *.yaml rule files in {folder}")
    version = ""
    rules: dict[str, dict[str, Any]] = {}
    for file in files:
        try:
            doc = load_yaml(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, YamlError) as exc:
            raise ArchiveError(f"{file}: {exc}") from None
        if not isinstance(doc, Located):
            continue
        version = str(doc.get("version", version))
        items = doc.get("rules")
        for item in items if isinstance(items, LocatedList) else []:
            if isinstance(item, Located) and isinstance(item.get("id"), str):
                rules[item["id"]] = {key: _plain(item.get(key, _DEFAULTS.get(key))) for key in RULE_KEYS}
    return RuleTable(label, version, rules)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split())  # a condition folded over lines is the same condition
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def diff(a: RuleTable, b: RuleTable) -> list[str]:
    """The rules added, removed and changed from `a` to `b` (each change: key, before, after); [] when none."""
    out: list[str] = []
    for rid in sorted(b.rules.keys() - a.rules.keys()):
        r = b.rules[rid]
        out.append(f"+ added    {rid}: {r['action']} when {r['condition']} (mode {r['mode']}, rollout {r['rollout']})")
    for rid in sorted(a.rules.keys() - b.rules.keys()):
        r = a.rules[rid]
        out.append(f"- removed  {rid}: {r['action']} when {r['condition']} (mode {r['mode']}, rollout {r['rollout']})")
    for rid in sorted(a.rules.keys() & b.rules.keys()):
        before, after = a.rules[rid], b.rules[rid]
        changes = [key for key in RULE_KEYS if before[key] != after[key]]
        if changes:
            out.append(f"~ changed  {rid}:")
            out.extend(f"    {key}: {before[key]!r} -> {after[key]!r}" for key in changes)
    return out


__all__ = [
    "ArchiveError",
    "FileEntry",
    "RuleTable",
    "archive",
    "diff",
    "digest_of",
    "entry",
    "find",
    "read_rules",
    "show",
]
