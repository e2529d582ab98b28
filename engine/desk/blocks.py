"""Block lists from the desk: "block this card / device / IP" adds a line to a list file the engine reloads.

The rule set names its lists (`rules/lists.yaml`); those kept in a file
(`file: lists/blocked_devices.txt`) are read again by the engine when the
file changes (docs/rules.md, "Live reload"). Blocking:
1. checks the value as the engine will (an id token: printable ASCII without
   spaces, at most 128 characters; a network for a `cidr` list) and that it
   is not on the list already;
2. appends `VALUE  # <who> <when UTC> case <id>: <why>` to the file, under
   an exclusive lock on the file (two blocks at once never lose a line);
3. loads the whole rule set again with its tests, as the engine will: if it
   is refused, the line is taken out again and the error shown, so a block
   never leaves the engine on an old set;
4. records the entry (who, when, why, which case) and its audit entry in
   one transaction;
5. with `--engine-admin`, asks the engine to reload now (`Admin.Reload`)
   and reports what it says; otherwise the engine's watcher picks the file
   up within its reload interval.
Unblocking (leads) removes the value's lines from the file the same way.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
from sqlalchemy import Engine, insert, select, update

from engine.desk import schema as t
from engine.desk.audit import audit_write
from engine.desk.auth import User
from engine.desk.cases import Refused
from engine.desk.db import now_ms
from engine.desk.rules_view import ListFile, RulesView
from engine.rules.errors import RuleSetInvalid
from engine.rules.lists import ListValueError, parse_value, read_list_file
from engine.rules.loader import load_ruleset

#: What a case page can block, and the list each goes to by default (the console's --card-list, ...).
KINDS = ("card", "device", "ip")
DEFAULT_LISTS = {"card": "blocked_cards", "device": "blocked_devices", "ip": "blocked_ip_ranges"}
_TOKEN = re.compile(r"^[!-~]{1,128}$")


@dataclass(frozen=True)
class BlockResult:
    list_name: str
    value: str
    path: Path
    engine_reload: str  # what the engine said, or "" without --engine-admin


class Blocks:
    def __init__(
        self,
        engine: Engine,
        rules: RulesView,
        lists: dict[str, str] | None = None,
        admin_target: str | None = None,
        admin_timeout_s: float = 10.0,
        admin_token: str = "",
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.lists = dict(lists or DEFAULT_LISTS)
        self.admin_target = admin_target
        self.admin_timeout_s = admin_timeout_s
        self.admin_token = admin_token  # the engine's admin bearer token

    def list_for(self, kind: str) -> ListFile:
        if kind not in self.lists:
            raise Refused(f"cannot block a {kind!r}: one of {', '.join(self.lists)}")
        name = self.lists[kind]
        found = self.rules.list_files().get(name)
        if found is None:
            raise Refused(f"the rules folder has no list {name!r} kept in a file: add it to rules/lists.yaml")
        return found

    def block(self, kind: str, value: str, user: User, reason: str, case_id: int | None = None) -> BlockResult:
        target = self.list_for(kind)
        value = value.strip()
        reason = " ".join(reason.split())  # one line: it becomes a comment in the file
        if len(reason) < 3:
            raise Refused("say why (a few words): it is kept with the entry")
        if len(reason) > 500:
            raise Refused("the reason has at most 500 characters")
        if not _TOKEN.match(value) or "#" in value:
            raise Refused(
                f"{value[:40]!r} cannot go on a list: printable characters without spaces or '#', at most 128"
            )
        try:
            parse_value(target.kind, value)
        except ListValueError as exc:
            raise Refused(f"{value!r} cannot go on {target.name}: {exc}") from None
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{value}  # {user.name} {stamp}{f' case {case_id}' if case_id else ''}: {reason}\n"
        with self.engine.begin() as conn:
            with _locked(target.path) as f:
                text = f.read()
                if value in {v for _, _, v in read_list_file(text)}:
                    raise Refused(f"{value} is on {target.name} already")
                f.seek(0, os.SEEK_END)
                f.write(line if not text or text.endswith("\n") else "\n" + line)
                f.flush()
                os.fsync(f.fileno())
                problem = self._check()
                if problem:
                    _remove_lines(f, lambda v, raw: raw == line.rstrip("\n"))
                    raise Refused(
                        f"the engine would refuse the rule set with this entry, so it was not added: {problem}"
                    )
            conn.execute(
                insert(t.list_entries).values(
                    list_name=target.name,
                    value=value,
                    added_by=user.name,
                    added_at_ms=now_ms(),
                    reason=reason,
                    case_id=case_id,
                )
            )
            audit_write(
                conn,
                user.name,
                "block",
                case_id=case_id,
                target=f"{target.name}:{value}",
                before={"listed": False},
                after={"listed": True, "list": target.name, "value": value},
                detail=reason,
            )
        self.rules.refresh()
        return BlockResult(target.name, value, target.path, self._reload())

    def unblock(self, list_name: str, value: str, user: User, reason: str) -> BlockResult:
        if not user.is_lead:
            raise Refused("only leads manage lists")
        reason = " ".join(reason.split())
        if len(reason) < 3:
            raise Refused("say why (a few words)")
        target = self.rules.list_files().get(list_name)
        if target is None or list_name not in self.lists.values():
            raise Refused(f"{list_name!r} is not a list the desk manages")
        with self.engine.begin() as conn:
            with _locked(target.path) as f:
                removed = _remove_lines(f, lambda v, raw: v == value)
                if not removed:
                    raise Refused(f"{value} is not on {list_name}")
                problem = self._check()
                if problem:
                    f.seek(0, os.SEEK_END)
                    f.write("".join(removed))
                    f.flush()
                    raise Refused(f"the engine would refuse the rule set without this entry: {problem}")
            conn.execute(
                update(t.list_entries)
                .where(
                    t.list_entries.c.list_name == list_name,
                    t.list_entries.c.value == value,
                    t.list_entries.c.removed_at_ms.is_(None),
                )
                .values(removed_by=user.name, removed_at_ms=now_ms())
            )
            audit_write(
                conn,
                user.name,
                "unblock",
                target=f"{list_name}:{value}",
                before={"listed": True, "list": list_name, "value": value},
                after={"listed": False},
                detail=reason,
            )
        self.rules.refresh()
        return BlockResult(list_name, value, target.path, self._reload())

    def entries(self) -> list[tuple[ListFile, list[tuple[str, str]], dict[str, Any]]]:
        """Each managed list: its file's values with their comments, and the desk's records by value."""
        out = []
        files = self.rules.list_files()
        with self.engine.connect() as conn:
            for name in dict.fromkeys(self.lists.values()):
                lf = files.get(name)
                if lf is None:
                    continue
                try:
                    text = lf.path.read_text(encoding="utf-8")
                except OSError:
                    text = ""
                values = []
                for raw in text.splitlines():
                    value, _, comment = raw.partition("#")
                    if value.strip():
                        values.append((value.strip(), comment.strip()))
                records = {
                    str(r.value): r
                    for r in conn.execute(
                        select(t.list_entries)
                        .where(t.list_entries.c.list_name == name, t.list_entries.c.removed_at_ms.is_(None))
                        .order_by(t.list_entries.c.id)
                    ).all()
                }
                out.append((lf, values, dict(records)))
        return out

    def _check(self) -> str:
        try:
            load_ruleset(self.rules.folder, run_tests=True)
        except RuleSetInvalid as exc:
            return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "refused"
        except OSError as exc:
            return str(exc)
        return ""

    def _reload(self) -> str:
        if not self.admin_target:
            return ""
        from engine.service.pb import admin_pb2, admin_pb2_grpc

        with grpc.insecure_channel(self.admin_target) as channel:
            try:
                answer = admin_pb2_grpc.AdminStub(channel).Reload(
                    admin_pb2.ReloadRequest(),
                    timeout=self.admin_timeout_s,
                    metadata=(("authorization", f"Bearer {self.admin_token}"),) if self.admin_token else None,
                )
            except grpc.RpcError as exc:
                return f"the engine did not answer the reload ({exc.code().name}); its watcher will pick the file up"
        if answer.reloaded:
            return f"the engine reloaded: rule set {answer.status.ruleset_version} ({answer.status.ruleset_digest})"
        if answer.status.last_reload_ok:
            return f"the engine already serves this list (rule set {answer.status.ruleset_digest})"
        return f"the engine refused the reload: {answer.status.last_failure[:300]}"


@contextmanager
def _locked(path: Path) -> Iterator[TextIO]:
    """The list file opened for reading and appending, under an exclusive lock."""
    with open(path, "r+", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.seek(0)
            yield f
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_lines(f: TextIO, drop: Callable[[str, str], bool]) -> list[str]:
    """Rewrite the locked file without the lines `drop(value, raw line)` picks; the removed lines."""
    f.seek(0)
    lines = f.read().splitlines(keepends=True)
    keep, removed = [], []
    for raw in lines:
        value = raw.split("#", 1)[0].strip()
        if value and drop(value, raw.rstrip("\n")):
            removed.append(raw if raw.endswith("\n") else raw + "\n")
        else:
            keep.append(raw)
    if removed:
        f.seek(0)
        f.truncate()
        f.write("".join(keep))
        f.flush()
        os.fsync(f.fileno())
    return removed
