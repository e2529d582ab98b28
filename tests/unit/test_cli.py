"""engine.cli: bad arguments and bad files end with a message and exit status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main


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
