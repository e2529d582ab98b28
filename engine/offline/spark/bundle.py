"""The rule set and model an offline Spark job runs, shipped to its executors as files.

A rule set is compiled code (conditions, filters, lists) and a model a
native LightGBM handle: neither travels well as pickles. The driver reads
the rules folder and the model's two files into a `Bundle` (broadcast once
per job); each executor's Python worker writes it to a private folder and
loads it with the same loaders as the driver, once per bundle (workers are
reused across tasks). The rule set's digest is that of its YAML bytes, so
it is the same on both sides.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.model.predictor import Model, load_model, resolve_model_dir
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import RuleSet

#: Files of a model folder a Model is loaded from.
MODEL_FILES = ("model.txt", "metadata.json")


@dataclass(frozen=True)
class Bundle:
    """Rules (a folder's files, or one file) and optionally a model folder's files, as bytes."""

    rules: tuple[tuple[str, bytes], ...]  # path relative to the rules folder -> content
    rules_is_file: bool
    model: tuple[tuple[str, bytes], ...] | None
    digest: str

    @classmethod
    def of(cls, rules: str | Path, model: str | Path | None = None) -> Bundle:
        rules = Path(rules)
        if rules.is_dir():
            files = tuple((str(p.relative_to(rules)), p.read_bytes()) for p in sorted(rules.rglob("*")) if p.is_file())
        else:
            files = ((rules.name, rules.read_bytes()),)
        model_files = None
        if model is not None:
            folder = resolve_model_dir(model)
            model_files = tuple((name, (folder / name).read_bytes()) for name in MODEL_FILES)
        digest = hashlib.sha256()
        for name, content in files + (model_files or ()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
        return cls(files, not rules.is_dir(), model_files, digest.hexdigest()[:16])

    def load(self) -> tuple[RuleSet, Model | None]:
        """The rule set and model, loaded once per process (see the module docstring)."""
        with _lock:
            loaded = _loaded.get(self.digest)
            if loaded is None:
                loaded = _loaded[self.digest] = self._load()
            return loaded

    def _load(self) -> tuple[RuleSet, Model | None]:
        root = Path(tempfile.mkdtemp(prefix="risk-engine-bundle-"))
        atexit.register(shutil.rmtree, root, True)
        for name, content in self.rules:
            path = root / "rules" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        rules_path = root / "rules" / self.rules[0][0] if self.rules_is_file else root / "rules"
        ruleset = load_ruleset(rules_path, run_tests=False)  # the driver ran its tests
        model = None
        if self.model is not None:
            folder = root / "model"
            folder.mkdir()
            for name, content in self.model:
                (folder / name).write_bytes(content)
            model = load_model(folder, ruleset)
        return ruleset, model


_lock = threading.Lock()
_loaded: dict[str, tuple[RuleSet, Model | None]] = {}
