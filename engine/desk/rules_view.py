"""What the desk reads of the rule set the engine serves: enrichment, windows, list files.

The console is given the engine's rules folder (`--rules`). From it the desk
takes, through the engine's own loader (`load_ruleset`, tests not run):
- the enrichment of a transaction as the engine computed it (IP country and
  region from the same geoip database, amount in the base currency);
- the windows and derived features, to say what a model feature means;
- the rule set's version and digest (the decision log carries the version
  only: a case takes the digest of the set the console has loaded when the
  versions agree, and leaves it empty otherwise);
- the named lists backed by a file, where "block this card / device / IP"
  writes (`engine.desk.blocks`).

It reloads the set when one of its files changes (checked at most every
`check_s` seconds), as the engine does; a set that does not load keeps the
last good one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.rules.errors import RuleSetInvalid
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import RuleSet
from engine.transaction import Channel, Transaction
from engine.validation import InvalidTransaction

log = logging.getLogger("risk_engine.desk")


@dataclass(frozen=True)
class ListFile:
    name: str
    kind: str  # string | cidr | number | country
    path: Path
    description: str


class RulesView:
    """The engine's rule set as the desk needs it (module docstring)."""

    def __init__(self, folder: Path, *, check_s: float = 5.0) -> None:
        self.folder = Path(folder)
        self.check_s = check_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._ruleset = self._load()
        self._stamp = self._stamps()

    def _load(self) -> RuleSet:
        return load_ruleset(self.folder, run_tests=False)

    def _stamps(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for name in sorted({*self._ruleset.files, *(str(p) for p in self.folder.glob("*.yaml"))}):
            try:
                st = Path(name).stat()
            except OSError:
                out.append((name, -1, -1))
                continue
            out.append((name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    @property
    def ruleset(self) -> RuleSet:
        now = time.monotonic()
        if now - self._checked >= self.check_s:
            with self._lock:
                if now - self._checked >= self.check_s:
                    self._checked = now
                    stamp = self._stamps()
                    if stamp != self._stamp:
                        try:
                            self._ruleset = self._load()
                        except (RuleSetInvalid, OSError) as exc:
                            log.warning(
                                "the rules folder %s does not load; keeping the last good set: %s", self.folder, exc
                            )
                        self._stamp = stamp
        return self._ruleset

    def refresh(self) -> None:
        """Check the files on the next access (after the desk wrote a list file)."""
        self._checked = 0.0

    def digest_of(self, version: str) -> str:
        rs = self.ruleset
        return rs.digest if rs.version == version else ""

    def locate(self, txn: dict[str, Any]) -> tuple[str, str, float | None]:
        """(IP country, IP region, amount in base-currency major units) of a logged transaction."""
        try:
            fields = self.ruleset.enricher.enrich(transaction_of(txn))
        except (InvalidTransaction, KeyError, TypeError, ValueError):
            return "", "", None
        return str(fields["ip_country"]), str(fields["ip_region"]), float(fields["amount"])

    @property
    def base_currency(self) -> str:
        return self.ruleset.enricher.money.base

    def list_files(self) -> dict[str, ListFile]:
        """The named lists of the rules folder that live in a file, by name."""
        out: dict[str, ListFile] = {}
        for path in sorted(self.folder.glob("*.yaml")):
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            lists = doc.get("lists") if isinstance(doc, dict) else None
            if not isinstance(lists, dict):
                continue
            for name, spec in lists.items():
                if isinstance(spec, dict) and isinstance(spec.get("file"), str):
                    out[str(name)] = ListFile(
                        str(name),
                        str(spec.get("kind", "string")),
                        (self.folder / spec["file"]).resolve(),
                        str(spec.get("description", "")),
                    )
        return out


def transaction_of(txn: dict[str, Any]) -> Transaction:
    """The engine's Transaction from a decision log record's `transaction` object."""
    attributes = txn.get("attributes") or {}
    return Transaction(
        transaction_id=str(txn["transaction_id"]),
        event_time_ms=int(txn["event_time_ms"]),
        amount_minor=int(txn["amount_minor"]),
        currency=str(txn["currency"]),
        user_id=str(txn.get("user_id") or ""),
        card_id=str(txn.get("card_id") or ""),
        device_id=str(txn.get("device_id") or ""),
        ip=str(txn.get("ip") or ""),
        country=str(txn.get("country") or ""),
        merchant_id=str(txn.get("merchant_id") or ""),
        channel=_channel(txn.get("channel")),
        attributes=tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
        merchant_category=str(txn.get("merchant_category") or ""),
    )


def _channel(value: Any) -> Channel:
    try:
        return Channel(str(value or "unspecified"))
    except ValueError:
        return Channel.UNSPECIFIED
