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
from sklearn.metrics import roc_auc_score

from engine.cli import main
from engine.model.predictor import load_model
from engine.offline import replay as replay_module
from engine.offline.backtest import backtest
from engine.offline.synthetic import generate, to_other_schema, write_parquet
from engine.offline.train import train
from engine.rules.loader import load_ruleset
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


# --------------------------------------------------------------------------- another schema, from a mapping alone

OTHER_MAPPING = """\
# The simulator's other schema (engine.offline.synthetic.to_other_schema); docs/data.md explains each line.
transaction_id: trans_num
event_time: {expr: "parse_time(trans_time, '%Y-%m-%d %H:%M:%S', 'America/New_York')"}
amount: {expr: "amt_thousands * 1000"}
amount_in_minor_units: false
currency: ccy
user_id: customer
card_id: cc_num
device_id: device
ip: ip_address
country: country_code
merchant_id: MERCHANT
channel: channel
label: {expr: "is_fraud == 'yes'"}
extra:
  category: {expr: "lower(replace(category, ' ', '_'))"}
"""

OTHER_TRAIN = """\
name: other-gbm
mapping: MAPPING
features: [FEATURES]
categorical: [CATEGORICAL]
split:
  train: ["2026-01-01", "2026-01-18"]
  early_stopping: ["2026-01-19", "2026-01-22"]
  test: ["2026-01-23", "2026-01-30"]
params: {metric: average_precision, learning_rate: 0.1, num_leaves: 15, min_data_in_leaf: 20}
num_boost_round: 200
early_stopping_rounds: 20
"""
WINDOW_FEATURES = (
    "amount, hour, is_night, card_count_10m, card_count_1d, card_avg_amount_7d, card_max_amount_30d, "
    "device_distinct_cards_1d, device_count_1h, ip_distinct_cards_1h, user_distinct_devices_1d"
)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 days of the simulator's traffic, written in the other schema: no native column name in it."""
    return write_parquet(
        to_other_schema(generate(days=30, users=300)), tmp_path_factory.mktemp("other") / "cards.parquet"
    )


def _other_config(tmp_path: Path, merchant: str, features: str, categorical: str) -> Path:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(OTHER_MAPPING.replace("MERCHANT", merchant))
    config = tmp_path / f"train-{len(features)}.yaml"
    text = OTHER_TRAIN.replace("MAPPING", str(mapping)).replace("FEATURES", features)
    config.write_text(text.replace("CATEGORICAL", categorical))
    return config


def test_another_schema_trains_and_backtests_from_a_mapping_alone(
    default_parallel: None, other_data: Path, tmp_path: Path
) -> None:
    """Other names, text times in a zone, another amount unit, text labels, merchant names with spaces and
    string categories: train (with the category as a LightGBM categorical feature) and backtest run from the
    mapping, serve the model's scores exactly, and beat the amount-only model."""
    assert "merchant" in pq.read_schema(other_data).names and "merchant_id" not in pq.read_schema(other_data).names
    underscores = "{expr: \"replace(merchant, ' ', '_')\"}"
    config = _other_config(tmp_path, underscores, WINDOW_FEATURES, "category")
    folder = train(other_data, RULES, config, tmp_path / "models", quiet=True)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["training_data"]["rejected"] == 0
    assert metadata["features"][-1] == "category"
    values = metadata["categorical"]["category"]["values"]
    assert "grocery_store" in values and values[-1] == "other"
    assert "cat_threshold=" in (folder / "model.txt").read_text()  # the trees split on it as a category

    baseline = train(
        other_data, RULES, _other_config(tmp_path, underscores, "amount", ""), tmp_path / "baseline", quiet=True
    )
    base = json.loads((baseline / "metadata.json").read_text())["metrics"]["test"]
    test = metadata["metrics"]["test"]
    assert test["auc_roc"] > base["auc_roc"] + 0.01
    assert test["average_precision"] > base["average_precision"] + 0.3

    # Serving: the backtest scores through the pipeline with the model; on the test period they are the
    # training's own held-out scores (the same AUC), so the category map is applied as in training.
    out = tmp_path / "backtest"
    result = backtest(other_data, RULES, out, model=folder, mapping=tmp_path / "mapping.yaml", progress=False)
    assert result.summary["population"]["rejected"] == 0
    table = pq.read_table(out / "transactions.parquet").to_pandas()
    day = table["event_time"].dt.tz_convert("UTC")
    in_test = (day >= "2026-01-23") & (day < "2026-01-31")
    assert int(in_test.sum()) == test["rows"]
    assert round(float(roc_auc_score(table["label"][in_test], table["score"][in_test])), 4) == test["auc_roc"]

    # A category serving has never seen is "other"; no category at all is missing.
    model = load_model(folder, load_ruleset(RULES))
    numbers = dict.fromkeys(metadata["features"][:-1], 1.0)
    unseen, other = ({**numbers, "attributes": {"category": v}} for v in ("never_seen", "other"))
    assert model.vector(unseen)[0][-1] == model.vector(other)[0][-1] == len(values) - 1
    assert model.predict(unseen) == model.predict(other)
    assert np.isnan(model.vector({**numbers, "attributes": {}})[0][-1])


def test_merchant_names_with_spaces_are_ids_as_they_are(
    default_parallel: None, other_data: Path, tmp_path: Path
) -> None:
    """The mapping names the merchant column itself: names with spaces are ids (the card-data id rules, issue 17)."""
    config = _other_config(tmp_path, "merchant", WINDOW_FEATURES, "category")
    folder = train(other_data, RULES, config, tmp_path / "models", quiet=True)
    assert json.loads((folder / "metadata.json").read_text())["training_data"]["rejected"] == 0
