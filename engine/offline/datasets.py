"""Reading labeled transaction history (Parquet or CSV) into domain transactions.

A `ColumnMapping` says which column holds each transaction field; presets
cover the project's own schema (`native`) and the handbook data set
(`handbook`, see ../shared/data/README.md). Rows come back sorted by event
time (stable, so ties keep file order), which is the order replay needs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet as pq

from engine.transaction import Channel, Transaction


@dataclass(frozen=True)
class ColumnMapping:
    """Where each transaction field comes from. None: not in the data ('' in the transaction)."""

    transaction_id: str
    event_time: str  # a timestamp column (naive = UTC) or integer milliseconds since the epoch
    amount: str
    amount_in_minor_units: bool
    currency: str | None = None
    default_currency: str = "EUR"
    user_id: str | None = None
    card_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    country: str | None = None
    merchant_id: str | None = None
    merchant_category: str | None = None
    channel: str | None = None
    label: str | None = None
    #: When each label became known (a timestamp or epoch ms column); None: the rule set's label_delay after the event.
    label_time: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # attribute name -> column


PRESETS: dict[str, ColumnMapping] = {
    # The schema the project's own generator writes.
    "native": ColumnMapping(
        transaction_id="transaction_id",
        event_time="event_time_ms",
        amount="amount_minor",
        amount_in_minor_units=True,
        currency="currency",
        user_id="user_id",
        card_id="card_id",
        device_id="device_id",
        ip="ip",
        country="country",
        merchant_id="merchant_id",
        merchant_category="merchant_category",
        channel="channel",
        label="label",
    ),
    # Fraud-Detection-Handbook simulated data: a customer is a card (and its
    # holder), a terminal is a merchant terminal; amounts in EUR major units.
    "handbook": ColumnMapping(
        transaction_id="TRANSACTION_ID",
        event_time="TX_DATETIME",
        amount="TX_AMOUNT",
        amount_in_minor_units=False,
        default_currency="EUR",
        user_id="CUSTOMER_ID",
        card_id="CUSTOMER_ID",
        merchant_id="TERMINAL_ID",
        label="TX_FRAUD",
    ),
}


@dataclass
class Dataset:
    transactions: list[Transaction]
    labels: np.ndarray | None  # float 0/1 per transaction (NaN: not labeled), when the mapping has a label
    #: When each label became known, epoch ms (-1: unknown), when the mapping has a label time column.
    label_times_ms: np.ndarray | None = None


class DatasetError(ValueError):
    pass


def _read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path)
    if suffix in (".csv", ".gz"):
        return pyarrow.csv.read_csv(path)
    raise DatasetError(f"{path}: expected a .parquet or .csv file")


def _strings(table: pa.Table, column: str | None) -> list[str]:
    if column is None:
        return [""] * table.num_rows
    if column not in table.column_names:
        raise DatasetError(f"column {column!r} not in the data (columns: {', '.join(table.column_names)})")
    col = pc.cast(table[column], pa.string())
    return [v if v is not None else "" for v in col.to_pylist()]


def _event_ms(table: pa.Table, column: str, missing: int | None = None) -> np.ndarray:
    """A time column as epoch milliseconds; nulls become `missing` (None: nulls are an error)."""
    if column not in table.column_names:
        raise DatasetError(f"column {column!r} not in the data")
    col = table[column]
    if pa.types.is_timestamp(col.type):
        col = pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(pc.strptime(col, format="%Y-%m-%dT%H:%M:%SZ", unit="ms"), pa.int64())
    else:
        col = pc.cast(col, pa.int64())
    if col.null_count:
        if missing is None:
            raise DatasetError(f"column {column!r} has {col.null_count} empty values")
        col = pc.fill_null(col, missing)
    return col.to_numpy(zero_copy_only=False)


def read_dataset(path: str | Path, mapping: ColumnMapping, limit: int | None = None) -> Dataset:
    """Read a file into transactions sorted by event time (and labels, if mapped)."""
    table = _read_table(Path(path))
    if limit is not None:
        table = table.slice(0, limit)
    return table_to_dataset(table, mapping)


@contextmanager
def paused_cycle_collector() -> Iterator[None]:
    """Pause Python's cycle collector for a bulk job, then restore it as it was.

    Reading and replaying history build millions of small objects and keep
    many alive (the transactions, the window state), so the collector walks an
    ever larger heap over and over: a quarter of replay time, two thirds of
    reading time. Neither makes reference cycles (reference counting frees
    everything), so pausing it loses nothing; it resumes when the job ends
    (or is abandoned).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def optional_fields(mapping: ColumnMapping) -> frozenset[str]:
    """Fields whose column a file may lack under this mapping.

    The presets name `merchant_category`, which files written before the
    column existed do not have; a mapping written by hand means what it says.
    """
    return frozenset({"merchant_category"}) if any(mapping is p for p in PRESETS.values()) else frozenset()


def table_to_dataset(table: pa.Table, mapping: ColumnMapping, sort: bool = True) -> Dataset:
    """Map an Arrow table (e.g. `pa.Table.from_pylist(rows)`) into transactions, sorted by event time.

    `sort=False` keeps the table's row order: the Spark engine maps each batch
    of a distributed table with this very function and orders rows itself.
    """
    with paused_cycle_collector():
        return _table_to_dataset(table, mapping, sort)


def _table_to_dataset(table: pa.Table, mapping: ColumnMapping, sort: bool = True) -> Dataset:
    n = table.num_rows
    event_ms = _event_ms(table, mapping.event_time)
    if mapping.amount not in table.column_names:
        raise DatasetError(f"column {mapping.amount!r} not in the data")
    if sort:
        # Sort once, on the Arrow side: every column below comes out in event-time order.
        order = np.argsort(event_ms, kind="stable")
        table = table.take(pa.array(order))
        event_ms = event_ms[order]
    amounts = table[mapping.amount].to_numpy(zero_copy_only=False).astype(np.float64)
    currencies = _strings(table, mapping.currency) if mapping.currency else [mapping.default_currency] * n
    ids = _strings(table, mapping.transaction_id)
    users = _strings(table, mapping.user_id)
    cards = _strings(table, mapping.card_id)
    devices = _strings(table, mapping.device_id)
    ips = _strings(table, mapping.ip)
    countries = _strings(table, mapping.country)
    merchants = _strings(table, mapping.merchant_id)
    mcc_column = mapping.merchant_category
    if mcc_column not in table.column_names and "merchant_category" in optional_fields(mapping):
        mcc_column = None
    categories = _strings(table, mcc_column)
    channel_of = {c.value: c for c in Channel}
    if mapping.channel is None:
        channels = [Channel.UNSPECIFIED] * n
    else:
        channels = [channel_of.get(c.lower(), Channel.UNSPECIFIED) for c in _strings(table, mapping.channel)]
    extras = {name: _strings(table, col) for name, col in mapping.extra.items()}
    if extras:
        attributes = [tuple((k, v[i]) for k, v in extras.items() if v[i]) for i in range(n)]
    else:
        attributes = [()] * n
    labels = None
    if mapping.label is not None:
        # Nulls become NaN: an unknown label is not "genuine".
        labels = pc.cast(table[mapping.label], pa.float64()).to_numpy(zero_copy_only=False)
    label_times = None
    if mapping.label_time is not None:
        label_times = _event_ms(table, mapping.label_time, missing=-1)

    minors = _minor_units(amounts, currencies, mapping.amount_in_minor_units)
    out = list(
        map(
            Transaction,
            ids,
            event_ms.tolist(),
            minors,
            currencies,
            users,
            cards,
            devices,
            ips,
            countries,
            merchants,
            channels,
            attributes,
            categories,
        )
    )
    return Dataset(out, labels, label_times)


def _minor_units(amounts: np.ndarray, currencies: list[str], in_minor_units: bool) -> list[int]:
    """Each amount as an integer in minor units of its currency.

    Minor units are truncated to integers, major units multiplied by 10^exponent
    and rounded half to even (Python's `round`). Whole columns at once where
    float64 holds every value exactly; otherwise (NaN, huge amounts: refused
    or raising later) one by one, with the same results and errors.
    """
    from engine.iso import CURRENCY_EXPONENTS

    if in_minor_units:
        scaled = amounts
    elif len(set(currencies)) <= 1:
        scaled = amounts * float(10 ** CURRENCY_EXPONENTS.get(currencies[0] if currencies else "", 2))
    else:
        powers = {c: float(10 ** CURRENCY_EXPONENTS.get(c, 2)) for c in set(currencies)}
        scaled = amounts * np.array([powers[c] for c in currencies], dtype=np.float64)
    if bool(np.all(np.abs(scaled) < 2.0**53)):  # False for NaN and infinities too
        whole = np.trunc(scaled) if in_minor_units else np.rint(scaled)
        return whole.astype(np.int64).tolist()  # type: ignore[no-any-return]
    if in_minor_units:
        return [int(a) for a in amounts.tolist()]
    return [round(a) for a in scaled.tolist()]


def default_data_path(*parts: str) -> Path | None:
    """../shared/data/<parts> beside the project, when it is there."""
    root = Path(__file__).resolve().parents[2]
    candidate = root.parent / "shared" / "data" / Path(*parts)
    return candidate if candidate.exists() else None
