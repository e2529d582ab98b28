"""--since / --until: the bounds parsed, the rows of the period kept, and training on a period."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.offline.datasets import Dataset, DatasetError
from engine.offline.period import Period, parse_period, select_period
from engine.offline.train import train
from engine.transaction import Transaction
from tests.support import RULES

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def dataset() -> Dataset:
    txns = [Transaction(f"t{k}", T0 + k * DAY // 2, 100, "EUR", card_id="c") for k in range(6)]  # every 12 h
    return Dataset(txns, np.array([0.0, 1.0, np.nan, 0.0, 1.0, 0.0]), np.array([-1, 5, -1, -1, 9, -1]))


def test_bounds() -> None:
    assert parse_period(None, "") == Period(None, None)
    assert parse_period("2026-01-01", "2026-01-02T12:00:00Z") == Period(T0, T0 + DAY + DAY // 2)
    assert parse_period(str(T0), None) == Period(T0, None)
    with pytest.raises(DatasetError, match="--since: not a date or time: 'soon'"):
        parse_period("soon", None)
    with pytest.raises(DatasetError, match="must be after --since"):
        parse_period("2026-01-02", "2026-01-02")


def test_rows_of_the_period_with_their_labels() -> None:
    got = select_period(dataset(), Period(T0 + DAY // 2, T0 + 2 * DAY))  # [12:00 day 1, day 3)
    assert [t.transaction_id for t in got.transactions] == ["t1", "t2", "t3"]
    assert got.labels is not None and got.label_times_ms is not None
    np.testing.assert_array_equal(got.labels, [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(got.label_times_ms, [5, -1, -1])
    limited = select_period(dataset(), Period(T0 + DAY, None), limit=2)
    assert [t.transaction_id for t in limited.transactions] == ["t2", "t3"]
    with pytest.raises(DatasetError, match="no row of the data lies in the period"):
        select_period(dataset(), Period(T0 + 10 * DAY, None))


def test_train_replays_only_the_period(synthetic_data: Path, train_config: Path, tmp_path: Path) -> None:
    # The test config trains on 2026-01-01..18: a period from the 25th leaves it no rows, and says so.
    with pytest.raises(ValueError, match=r"the train period \('2026-01-01', '2026-01-18'\) has no rows"):
        train(synthetic_data, RULES, train_config, tmp_path, quiet=True, period=parse_period("2026-01-25", None))
