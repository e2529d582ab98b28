"""What the README promises: its Python example runs against a server, and CI calls its test command."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.service.server import Running, start
from tests.support import ROOT
from tests.support.served import make_config

pytestmark = [pytest.mark.server]


@pytest.fixture
def embedded_server(trained_registry: Path) -> Iterator[Running]:
    """The embedded default: no Redis configured, the in-process store."""
    running = start(make_config(trained_registry))
    assert running.store.name == "memory"
    yield running
    running.stop(0.5)


def test_readme_python_example_runs(embedded_server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no Python example"
    code = blocks[0].replace("127.0.0.1:50051", f"127.0.0.1:{embedded_server.port}")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    decision, score = out[0].split()
    assert decision in {"DECISION_ALLOW", "DECISION_REVIEW", "DECISION_DENY"}
    assert 0.0 <= float(score) <= 1.0


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make serve" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_code_is_formatted_and_lint_clean() -> None:
    import subprocess
    import sys

    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_layout_section_matches_the_tree() -> None:
    """scripts/layout.py prints the README's Layout section from the tree (`--write` updates it)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "layout.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout\n\n```\n") + len("## Layout\n\n```\n")
    assert readme[start : readme.index("```\n", start)] == proc.stdout, "run: python scripts/layout.py --write"
