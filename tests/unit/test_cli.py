"""engine.cli: bad arguments and bad files end with a message and exit status 2, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.model.predictor import resolve_model_dir
from tests.support import ROOT, RULES


def test_simulate_needs_exactly_one_destination(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate"]) == 2
    assert "give --out FILE or --target HOST:PORT" in capsys.readouterr().err


def test_a_backtest_of_a_missing_file_is_an_error_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.parquet"
    assert main(["backtest", "--quiet", "--data", str(missing), "--no-model", "--out", str(tmp_path / "out")]) == 2
    assert f"risk-engine backtest: {missing}: no such file" in capsys.readouterr().err


def test_feedback_import_refuses_a_bad_delay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["feedback", "import", "--data", str(tmp_path / "x.csv"), "--target", "127.0.0.1:1", "--label-delay", "7x"]
    assert main(args) == 2
    assert "is not a duration like 7d" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["models", "list"], "--dir models"),
        (["models", "promote", "v1"], "--dir models"),
        (["models", "challenger", "--clear"], "--dir models"),
        (["backtest", "--data", "x.parquet", "--out", "out"], "--rules rules"),
        (["audit", "--log", "decisions"], "--rules rules"),
        (["train", "--config", "train.yaml", "--data", "x.parquet"], "--rules rules"),
        (["rules", "fields"], "rules"),
        (["serve", "--port", "0", "--metrics-port", "off"], "--rules / RISK_RULES rules"),
    ],
)
def test_paths_default_to_the_current_folder_and_a_missing_one_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    """Run from a folder without rules/ or models/: the install's own are not used, the error names flag and path."""
    monkeypatch.chdir(tmp_path)
    for name in ("RISK_RULES", "RISK_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RISK_CPU_AFFINITY", "off")  # serve would pin this process to one core first
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} (the default): does not exist" in err or f"{flag}: does not exist" in err, err
    assert str(tmp_path) in err
    if argv[0] == "serve":  # every bad setting, a line each
        assert "--model / RISK_MODEL models: does not exist" in err
    else:
        assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_models_commands_read_the_current_folders_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of the project with a model of its own: `models list` run there lists that one."""
    shipped = resolve_model_dir(ROOT / "models")
    shutil.copytree(RULES, tmp_path / "rules")
    shutil.copytree(shipped, tmp_path / "models" / "copy-gbm")
    (tmp_path / "models" / "PROMOTED").write_text("copy-gbm\n")
    monkeypatch.chdir(tmp_path)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "copy-gbm" in out and shipped.name not in out
    assert main(["models", "promote", "copy-gbm"]) == 0  # checked against ./rules
    assert (tmp_path / "models" / "PROMOTED").read_text() == "copy-gbm\n"
    assert not (ROOT / "models" / "copy-gbm").exists()
