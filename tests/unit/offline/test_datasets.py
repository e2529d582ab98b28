"""A rule folder names the column mappings of its data: the backtest picks the one that fits the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.rules.errors import RuleSetInvalid
from engine.rules.loader import load_ruleset
from tests.support import RULES

T0 = 1_767_225_600_000


def handbook_shaped(path: Path, rows: int = 50) -> Path:
    """A file with the handbook's columns (not the handbook's data)."""
    table = pa.table(
        {
            "TRANSACTION_ID": pa.array(range(rows), pa.int64()),
            "TX_DATETIME": pa.array([T0 + i * 60_000 for i in range(rows)], pa.timestamp("ms")),
            "CUSTOMER_ID": pa.array([i % 7 for i in range(rows)], pa.int64()),
            "TERMINAL_ID": pa.array([i % 3 for i in range(rows)], pa.int64()),
            "TX_AMOUNT": pa.array([10.0 + i for i in range(rows)]),
            "TX_FRAUD": pa.array([int(i % 10 == 0) for i in range(rows)], pa.int8()),
        }
    )
    pq.write_table(table, path)
    return path


def test_shipped_rules_backtest_both_schemas_without_a_mapping_flag(
    tmp_path: Path, synthetic_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [Path(m).name for m in load_ruleset(RULES).data_mapping] == ["native", "handbook.yaml"]
    data = handbook_shaped(tmp_path / "hb.parquet")
    out = tmp_path / "bt"
    assert main(["backtest", "--quiet", "--no-model", "--data", str(data), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "(mapping handbook.yaml)" in summary and "| rows | 50 |" in summary
    assert "| frauds | 5 |" in summary
    out2 = tmp_path / "bt2"
    argv = ["backtest", "--quiet", "--no-model", "--data", str(synthetic_data), "--limit", "200", "--out", str(out2)]
    assert main(argv) == 0
    assert "(mapping native)" in (out2 / "summary.md").read_text()


def test_a_file_no_mapping_fits_is_refused_with_what_each_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": [1], "when": [T0]}), path)
    assert main(["backtest", "--quiet", "--no-model", "--data", str(path), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "no mapping of the rule set fits the data" in err
    assert "native:" in err and "handbook.yaml:" in err and "'TRANSACTION_ID'" in err


def test_a_missing_mapping_file_is_a_rule_error_with_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    text = (folder / "engine.yaml").read_text()
    (folder / "engine.yaml").write_text(text.replace("mappings/handbook.yaml", "mappings/nope.yaml"))
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith("data_mapping:"))
    with pytest.raises(RuleSetInvalid) as err:
        load_ruleset(folder)
    (e,) = err.value.errors
    assert e.line == line and "no mapping file 'mappings/nope.yaml'" in e.message
