"""Live reload: watching the rules folder, accepting a new rule set only when it is sound, swapping it in.

A `Reloader` polls the files of the rule set (the YAML, the list files, the
geoip database, the model registry's PROMOTED and CHALLENGER files) once per interval. When
they change, it waits until they have stayed unchanged for one more
interval (an analyst copying several files is not caught half-way), then
loads the new set: parse, type-check, compile, run the rule tests, and load
the model (and the challenger, if the registry names one) against it. Only
if all of that succeeds does it swap the new rule set and models into the
pipeline, in one reference assignment between
requests. A refused set is logged with its errors and the old one keeps
serving; `status` says which version is active and what the last failure was.

`reload_now()` does the same at once (SIGHUP, tests, an admin call).

With an archive folder, every rule set the reloader serves (the first one
and each one swapped in) is kept there by digest (`engine.rules.archive`),
so that the digest of any answer leads back to the rule text that decided it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from engine.model.predictor import PROMOTED, Model, ModelInvalid, load_model
from engine.model.registry import CHALLENGER, Challenger, load_challenger
from engine.pipeline import Pipeline
from engine.rules.archive import archive as archive_set
from engine.rules.errors import RuleSetInvalid
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import RuleSet

log = logging.getLogger("risk_engine.reload")


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """What is serving and how the last reload went."""

    ruleset_version: str
    ruleset_digest: str
    model_version: str
    loaded_at: float  # unix time the active set was swapped in
    reloads_ok: int = 0
    reloads_failed: int = 0
    last_failure_at: float = 0.0  # 0: never
    last_failure: str = ""  # the errors of the last refused set ('' when the last attempt succeeded)
    last_attempt_ok: bool = True
    challenger: str = ""  # the challenger model and its mode, e.g. "v2 (split 10%)" ('' when none)


def load_serving(rules: Path, model_path: Path, *, explain: bool = True) -> tuple[RuleSet, Model, Challenger | None]:
    """The rule set, the promoted model and the challenger a server runs, each checked against the rules.

    Raises RuleSetInvalid or ModelInvalid. With `explain`, the models' explanations
    are set up now, so that no request waits for them (about 0.4 s).
    """
    ruleset = load_ruleset(rules)
    model = load_model(model_path, ruleset)
    challenger = load_challenger(model_path, ruleset)
    if explain:
        model.prepare_explanations()
        if challenger is not None:
            challenger.model.prepare_explanations()
    return ruleset, model, challenger


def _watched_files(rules: Path, ruleset: RuleSet, model: Path) -> list[Path]:
    """Files outside the rules folder that the set reads (e.g. a geoip database), PROMOTED and CHALLENGER."""
    files = {Path(f) for f in ruleset.files}
    files.add(model / PROMOTED)
    files.add(model / CHALLENGER)
    return sorted(files)


def _fingerprint(files: list[Path], rules: Path) -> str:
    """Changes when a file of the rules folder (at any depth) or a watched file is added, removed or rewritten."""
    h = hashlib.sha256()
    current = set(files)
    if rules.is_dir():
        current.update(f for f in rules.rglob("*") if not f.is_dir())
    else:
        current.add(rules)
    for path in sorted(current):
        try:
            st = path.stat()
            h.update(f"{path}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def _describe(challenger: Challenger | None) -> str:
    return "" if challenger is None else f"{challenger.model.version} ({challenger.describe()})"


def keep(archive: Path | None, ruleset: RuleSet) -> Path | None:
    """Keep a copy of a served rule set in the archive (once per digest); its folder, or None (logged)."""
    if archive is None:
        return None
    try:
        where = archive_set(archive, Path(ruleset.root), ruleset.version, ruleset.digest, ruleset.manifest)
    except OSError as exc:
        log.warning(
            "cannot keep rule set %s (%s) in the archive %s: %s",
            ruleset.version,
            ruleset.digest,
            archive,
            exc,
            extra={"event": "archive", "result": "failed", "ruleset_digest": ruleset.digest},
        )
        return None
    if where is None:
        log.warning(
            "rule set %s (%s) changed on disk while it was loaded: not archived (the reload that follows is)",
            ruleset.version,
            ruleset.digest,
            extra={"event": "archive", "result": "changed", "ruleset_digest": ruleset.digest},
        )
    return where


class Reloader:
    """Reloads the rule set (and the promoted model) of a running pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        rules: Path,
        model: Path,
        *,
        interval_s: float = 1.0,
        on_change: Callable[[ReloadStatus], None] | None = None,
        archive: Path | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.rules = rules
        self.model_path = model
        self.interval_s = interval_s
        self.on_change = on_change or (lambda status: None)
        #: Where every rule set served is kept by digest (None: nowhere).
        self.archive = archive
        snap = pipeline.snapshot
        keep(archive, snap.ruleset)
        self.status = ReloadStatus(
            ruleset_version=snap.ruleset.version,
            ruleset_digest=snap.ruleset.digest,
            model_version=snap.model.version if snap.model is not None else "",
            loaded_at=time.time(),
            challenger=_describe(snap.challenger),
        )
        self._lock = threading.Lock()  # one reload at a time (watcher and SIGHUP)
        self._files = _watched_files(rules, snap.ruleset, model)
        self._seen = _fingerprint(self._files, rules)
        self._pending: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def changed_on_disk(self) -> bool:
        """Whether a watched file changed since the rule set and model serving now were loaded (or refused)."""
        with self._lock:
            return _fingerprint(self._files, self.rules) != self._seen

    def reload_now(self) -> bool:
        """Load, check and test the rule set and model on disk; swap them in if sound. True when swapped.

        Files that change while they are being loaded could give a mix of old and
        new files: such a load is thrown away and done again (three tries).
        """
        with self._lock:
            for _ in range(3):
                before = _fingerprint(self._files, self.rules)
                try:
                    ruleset, model, challenger = load_serving(self.rules, self.model_path)  # before the swap
                    failure = ""
                except RuleSetInvalid as exc:
                    failure = f"rule set refused ({len(exc.errors)} error(s)):\n{exc}"
                except ModelInvalid as exc:
                    failure = f"model refused: {exc}"
                except Exception as exc:
                    log.exception("reload failed unexpectedly")
                    failure = f"reload failed: {type(exc).__name__}: {exc}"
                if _fingerprint(self._files, self.rules) == before:
                    break
                time.sleep(self.interval_s / 4)
            else:
                return self._refused(before, "the rule files kept changing while they were loaded; try again")
            if failure:
                return self._refused(before, failure)
            self.pipeline.swap(ruleset, model, challenger)
            keep(self.archive, ruleset)
            files = _watched_files(self.rules, ruleset, self.model_path)
            self._seen = before if files == self._files else _fingerprint(files, self.rules)
            self._files = files
            old = self.status
            self.status = replace(
                old,
                ruleset_version=ruleset.version,
                ruleset_digest=ruleset.digest,
                model_version=model.version,
                loaded_at=time.time(),
                challenger=_describe(challenger),
                reloads_ok=old.reloads_ok + 1,
                last_attempt_ok=True,
            )
            log.info(
                "reloaded: rule set %s (%s, %d rules, %d tests passed), model %s, challenger %s",
                ruleset.version,
                ruleset.digest,
                len(ruleset.rules),
                len(ruleset.tests),
                model.version,
                self.status.challenger or "none",
                extra={
                    "event": "reload",
                    "result": "ok",
                    "ruleset_version": ruleset.version,
                    "ruleset_digest": ruleset.digest,
                    "model_version": model.version,
                },
            )
        self.on_change(self.status)
        return True

    def _refused(self, fingerprint: str, why: str) -> bool:
        self._seen = fingerprint  # do not retry the same broken files every interval
        old = self.status
        self.status = replace(
            old,
            reloads_failed=old.reloads_failed + 1,
            last_failure_at=time.time(),
            last_failure=why,
            last_attempt_ok=False,
        )
        log.error(
            "%s; still serving rule set %s, model %s",
            why,
            old.ruleset_version,
            old.model_version,
            extra={
                "event": "reload",
                "result": "failed",
                "ruleset_version": old.ruleset_version,
                "model_version": old.model_version,
            },
        )
        self.on_change(self.status)
        return False

    def poll(self) -> bool | None:
        """One watcher step: reload when the files changed and then held still. None: nothing to do."""
        current = _fingerprint(self._files, self.rules)
        if current == self._seen:
            self._pending = None
            return None
        if self._pending != current:  # changed since the last look: wait until it settles
            self._pending = current
            return None
        self._pending = None
        return self.reload_now()

    def start(self) -> None:
        """Watch in a daemon thread until `stop()`."""

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.poll()
                except Exception:
                    log.exception("rule watcher step failed")

        self._thread = threading.Thread(target=loop, name="rules-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
