"""Bring your own labeled data: tables with rejected rows and tables of another schema, through train and backtest.

Everything here runs the project's commands end to end on data its simulator
writes (`engine.offline.synthetic`), with the default multi-process replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.offline import replay as replay_module
from engine.offline.backtest import backtest
from engine.offline.synthetic import generate, write_parquet
from engine.offline.train import train
from tests.support import RULES
from tests.support.served import TEST_TRAIN_CONFIG

pytestmark = pytest.mark.slow


@pytest.fixture
def default_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default replay as on a long file: the windows pass in a second process (here from the first row)."""
    monkeypatch.delenv("RISK_REPLAY_PROCESSES", raising=False)
    monkeypatch.setattr(replay_module, "PARALLEL_MIN_ROWS", 0)
    assert replay_module.parallel_by_default(1), "this machine cannot fork a second replay process"


@pytest.fixture(scope="module")
def rejected_rows_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """30 days of synthetic traffic where one row in 20 has a merchant id the engine rejects."""
    rows = generate(days=30, users=300)
    for i, row in enumerate(rows):
        if i % 20 == 3:
            row["merchant_id"] = "\x07" + row["merchant_id"]  # a control character: rejected by every id rule
    rejected = sum(1 for i in range(len(rows)) if i % 20 == 3)
    return write_parquet(rows, tmp_path_factory.mktemp("rejected") / "data.parquet"), rejected


def test_backtest_with_rejected_rows_in_the_default_parallel_replay(
    default_parallel: None, rejected_rows_data: tuple[Path, int], tmp_path: Path
) -> None:
    data, rejected = rejected_rows_data
    result = backtest(data, RULES, tmp_path / "out", progress=False, max_rejected=0.10)
    population = result.summary["population"]
    assert population["rejected"] == rejected
    assert population["scored"] == pq.read_metadata(tmp_path / "out" / "transactions.parquet").num_rows


def test_train_with_rejected_rows_in_the_default_parallel_replay(
    default_parallel: None, rejected_rows_data: tuple[Path, int], tmp_path: Path
) -> None:
    data, rejected = rejected_rows_data
    config = tmp_path / "train.yaml"
    config.write_text(TEST_TRAIN_CONFIG)
    folder = train(data, RULES, config, tmp_path / "models", quiet=True, max_rejected=0.10)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["training_data"]["rejected"] == rejected
    assert metadata["metrics"]["test"]["auc_roc"] > 0.8
    assert np.isfinite(metadata["metrics"]["test"]["average_precision"])


def test_train_over_the_rejection_threshold_fits_nothing(
    rejected_rows_data: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 % of the rows rejected, over the default 1 %: the command fails with the summary and writes no model."""
    data, rejected = rejected_rows_data
    config = tmp_path / "train.yaml"
    config.write_text(TEST_TRAIN_CONFIG)
    code = main(["train", "--data", str(data), "--config", str(config), "--out", str(tmp_path / "models")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"rejected by validation: {rejected:,} of " in err
    assert "more than the allowed 1.00%" in err
    assert "  merchant_id: " in err and "e.g. row 4 (" in err  # the file's 4th row (i % 20 == 3)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
