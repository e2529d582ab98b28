"""Mappings that transform: the other schema maps back to native transactions; errors point at the line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from engine.offline.datasets import PRESETS, DatasetError, load_dataset, load_mapping, table_to_dataset
from engine.offline.synthetic import generate, to_other_schema

OTHER_MAPPING = """\
# the simulator's other schema
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
merchant_id: {expr: "replace(merchant, ' ', '_')"}
channel: channel
label: {expr: "is_fraud == 'yes'"}
extra:
  category: {expr: "lower(replace(category, ' ', '_'))"}
"""


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return generate(days=3, users=40, seed=5)


def test_the_other_schema_maps_back_to_the_native_transactions(rows: list[dict[str, object]]) -> None:
    native = table_to_dataset(pa.Table.from_pylist(rows), PRESETS["native"])
    other = table_to_dataset(pa.Table.from_pylist(to_other_schema(rows)), load_mapping(OTHER_MAPPING))
    assert len(other.transactions) == len(native.transactions) == len(rows)
    for a, b in zip(other.transactions, native.transactions, strict=True):
        assert a.transaction_id == b.transaction_id
        assert a.event_time_ms == b.event_time_ms // 1000 * 1000  # the other schema keeps whole seconds
        assert (a.amount_minor, a.currency, a.card_id, a.user_id, a.ip, a.country, a.channel) == (
            b.amount_minor,
            b.currency,
            b.card_id,
            b.user_id,
            b.ip,
            b.country,
            b.channel,
        )
        assert " " not in a.merchant_id and a.merchant_id.startswith("Shop_" + b.merchant_id.removeprefix("m-") + "_")
        ((key, value),) = a.attributes
        assert key == "category" and value == value.lower() and " " not in value
    assert other.labels is not None and native.labels is not None
    assert other.labels.tolist() == native.labels.tolist()


def _error(mapping: str, tmp_path: Path, rows: list[dict[str, object]]) -> str:
    data = tmp_path / "other.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(to_other_schema(rows)), data)
    path = tmp_path / "mapping.yaml"
    path.write_text(mapping)
    with pytest.raises(DatasetError) as info:
        load_dataset(data, [(str(path), load_mapping(path))])
    return str(info.value).replace(str(path), "mapping.yaml")


def test_every_bad_expression_is_reported_at_its_line_and_column(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    bad = (
        OTHER_MAPPING.replace("amt_thousands * 1000", "amt_thousand * 1000")
        .replace("lower(replace", "lowr(replace")
        .replace("is_fraud == 'yes'", "is_fraud")
    )
    message = _error(bad, tmp_path, rows)
    lines = message.splitlines()
    assert lines[0] == "mapping.yaml:4:17: amount: unknown field 'amt_thousand' (hint: did you mean 'amt_thousands'?)"
    assert lines[1] == "mapping.yaml:14:16: label: this must give a number (or true/false), this one is a string"
    assert lines[2] == "mapping.yaml:16:21: extra.category: unknown function 'lowr' (hint: did you mean 'lower'?)"
    assert lines[3].startswith("(the data's columns: trans_num, trans_time, amt_thousands")


def test_a_text_field_must_get_text(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    message = _error(OTHER_MAPPING.replace("ccy", '{expr: "amt_thousands * 2"}'), tmp_path, rows)
    assert message.startswith("mapping.yaml:6:19: currency: this must give text, it gives a number")


def test_a_row_the_expression_fails_on_is_named(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    message = _error(OTHER_MAPPING.replace("%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M"), tmp_path, rows)
    assert message.endswith(
        ": mapping.yaml:3: event_time: data row 1: "
        "time data '2025-12-31 11:53:00' does not match format '%d/%m/%Y %H:%M'"
    )


def test_a_computed_field_must_be_one_expr(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(OTHER_MAPPING.replace('{expr: "replace(merchant', '{exp: "replace(merchant'))
    with pytest.raises(DatasetError, match=r"m.yaml:12: 'merchant_id': a computed field is \{expr: TEXT\}"):
        load_mapping(path)
    path.write_text(OTHER_MAPPING + "transforms: {}\n")
    with pytest.raises(DatasetError, match="unknown key"):
        load_mapping(path)


def test_a_csv_file_maps_like_the_parquet_one(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    """CSV has no types: Arrow guesses `trans_time` is a timestamp, but the expression reads the text."""
    import pyarrow.csv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(to_other_schema(rows))
    pq.write_table(table, tmp_path / "other.parquet")
    pyarrow.csv.write_csv(table, tmp_path / "other.csv")
    assert pa.types.is_timestamp(pyarrow.csv.read_csv(tmp_path / "other.csv").schema.field("trans_time").type)
    candidates = [("other.yaml", load_mapping(OTHER_MAPPING))]
    _, from_parquet = load_dataset(tmp_path / "other.parquet", candidates)
    _, from_csv = load_dataset(tmp_path / "other.csv", candidates)
    assert from_csv.transactions == from_parquet.transactions
