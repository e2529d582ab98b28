"""Reading labeled transaction history (Parquet or CSV) into domain transactions.

A `ColumnMapping` says which column holds each transaction field; presets
cover the project's own schema (`native`) and the handbook data set
(`handbook`, see ../shared/data/README.md), and `load_mapping` reads one
from YAML. Rows come back sorted by event time (stable, so ties keep file
order), which is the order replay needs.

The one reader of data files for every command (backtest, training, label
import, decision export) is `read_table`: `.parquet`/`.pq` or
`.csv`/`.csv.gz`. `load_dataset` picks the first mapping of a rule set that
fits a file. Every problem with the data or a mapping is a `DatasetError`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet as pq
import yaml

from engine.iso import CURRENCY_EXPONENTS
from engine.offline.transforms import Transform, TransformError, apply_transforms, compile_transform, names_read
from engine.rules.ruleset import RuleSet
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
    #: Fields computed by an expression (`engine.offline.transforms`), by field (`extra.NAME` for attributes);
    #: the field's column above is then the transform's own column.
    transforms: dict[str, Transform] = field(default_factory=dict)


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
    #: Each transaction's row in the file (from 0): rows are sorted by event time. None: file order.
    file_rows: np.ndarray | None = None


class DatasetError(ValueError):
    """Data that cannot be read or mapped (file, column mapping, columns, values): reported without a traceback."""


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
    table = read_table(path)
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
    try:
        table = apply_transforms(table, mapping.transforms)
    except TransformError as exc:
        raise DatasetError(str(exc)) from None
    n = table.num_rows
    event_ms = _event_ms(table, mapping.event_time)
    if mapping.amount not in table.column_names:
        raise DatasetError(f"column {mapping.amount!r} not in the data")
    order = None
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
    return Dataset(out, labels, label_times, order)


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


# --------------------------------------------------------------------------- mappings and files


_MAPPING_FIELDS = {f.name: f for f in fields(ColumnMapping)}
_REQUIRED = ("transaction_id", "event_time", "amount", "amount_in_minor_units")


def load_mapping(text_or_path: str | Path) -> ColumnMapping:
    """A column mapping from a preset name, a YAML file, or YAML text.

    The YAML is a mapping of `ColumnMapping` fields (`transaction_id`,
    `event_time`, `amount`, `amount_in_minor_units`, `currency`,
    `default_currency`, `user_id`, `card_id`, `device_id`, `ip`, `country`,
    `merchant_id`, `channel`, `label`, `extra`), optionally starting from a
    preset with `preset: NAME` (its fields are then defaults).
    """
    spec = str(text_or_path)
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    where = spec
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise DatasetError(f"mapping {spec}: no such file (presets: {', '.join(PRESETS)})")
        text = path.read_text()
    elif ":" in spec:
        text, where = spec, "mapping"
    else:
        raise DatasetError(f"mapping {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    try:
        raw = yaml.safe_load(text)
        positions = _value_positions(text)
    except yaml.YAMLError as exc:
        raise DatasetError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected a mapping of field: column, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    preset = raw.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise DatasetError(f"{where}: unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
        base = PRESETS[preset]
        values = {name: getattr(base, name) for name in _MAPPING_FIELDS}
    unknown = sorted((set(raw) - set(_MAPPING_FIELDS)) | ({"transforms"} & set(raw)))
    if unknown:
        raise DatasetError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: preset, {', '.join(_MAPPING_FIELDS)})"
        )
    transforms: dict[str, Transform] = {}

    def transform(name: str, value: dict[Any, Any]) -> str:
        """An `{expr: TEXT}` value: its Transform, and the column it gives."""
        text = value.get("expr")
        if set(value) != {"expr"} or not isinstance(text, str) or not text.strip():
            line = positions.get(name, (0, 0))[0]
            raise DatasetError(f"{where}:{line}: {name!r}: a computed field is {{expr: TEXT}}, got {value!r}")
        line, column = positions.get(f"{name}.expr", (1, 1))
        transforms[name] = Transform(name, text, where, line, column)
        return transforms[name].column_name

    for key, value in raw.items():
        if isinstance(value, dict) and key not in ("extra", "amount_in_minor_units", "default_currency"):
            value = transform(key, value)
        if key == "amount_in_minor_units":
            if not isinstance(value, bool):
                raise DatasetError(f"{where}: 'amount_in_minor_units' must be true or false, got {value!r}")
        elif key == "extra":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str | dict) for k, v in value.items()
            ):
                raise DatasetError(f"{where}: 'extra' must map attribute names to column names (or {{expr: TEXT}})")
            value = {k: transform(f"extra.{k}", v) if isinstance(v, dict) else v for k, v in value.items()}
        elif key == "default_currency":
            if value not in CURRENCY_EXPONENTS:
                raise DatasetError(f"{where}: 'default_currency' {value!r} is not an ISO 4217 currency code")
        elif value is not None and not isinstance(value, str | int):
            raise DatasetError(f"{where}: {key!r} must be a column name, got {value!r}")
        values[key] = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    missing = [k for k in _REQUIRED if values.get(k) is None]
    if missing:
        raise DatasetError(f"{where}: missing required key(s): {', '.join(missing)}")
    values["transforms"] = {**values.get("transforms", {}), **transforms}
    return ColumnMapping(**values)


def _value_positions(text: str) -> dict[str, tuple[int, int]]:
    """(line, column) (1-based) of each value of a mapping's YAML, by key path (`field`, `extra.NAME.expr`).

    A quoted value's column is that of its first character inside the quotes.
    """
    out: dict[str, tuple[int, int]] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            path = f"{prefix}{key.value}"
            quoted = isinstance(value, yaml.ScalarNode) and value.style in ("'", '"')
            out[path] = (value.start_mark.line + 1, value.start_mark.column + 1 + quoted)
            walk(value, path + ".")

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return out


def read_table(path: str | Path, strings: Sequence[str] = ()) -> pa.Table:
    """A Parquet (`.parquet`, `.pq`) or CSV (`.csv`, `.csv.gz`) file as an Arrow table.

    `strings` names CSV columns read as text whatever they hold (ids such as
    `0012`). Raises DatasetError for a missing, unreadable or unknown file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix in (".csv", ".csv.gz"):
            types = {name: pa.string() for name in strings}
            return pyarrow.csv.read_csv(path, convert_options=pyarrow.csv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    raise DatasetError(f"{path}: expected a .parquet or .csv file")


def mapping_candidates(ruleset: RuleSet, mapping: str | Path | None) -> list[tuple[str, ColumnMapping]]:
    """The column mappings to try on a file, loaded (a bad one is reported before any data is read).

    `mapping` when given, else the rule set's `data_mapping`, else the native schema.
    """
    names = [mapping] if mapping is not None else (ruleset.data_mapping or ("native",))
    return [(str(name), load_mapping(name)) for name in names]


def pick_mapping(
    table: pa.Table, candidates: Sequence[tuple[str, ColumnMapping]], where: str
) -> tuple[str, ColumnMapping]:
    """The first candidate mapping whose columns are all in the table, with its name.

    With one candidate its own error is raised; with several, one message
    says what each lacks.
    """
    problems = []
    for name, mapping in candidates:
        try:
            check_columns(table, mapping, where)
        except DatasetError as exc:
            if len(candidates) == 1:
                raise
            problems.append(f"{Path(name).name}: {str(exc).split(': ', 1)[1]}")
            continue
        return name, mapping
    raise DatasetError(f"{where}: no mapping of the rule set fits the data; " + "; ".join(problems))


def load_dataset(
    data: str | Path, candidates: Sequence[tuple[str, ColumnMapping]], limit: int | None = None
) -> tuple[str, Dataset]:
    """Read a Parquet or CSV file with the first candidate mapping that fits it: (mapping name, dataset).

    Raises DatasetError for a file that cannot be read or mapped.
    """
    table = read_table(data)
    # CSV has no types: a column an expression reads is its text, not a time Arrow guessed (parse_time reads it).
    guessed = [c for c in names_read(_all_transforms(candidates)) if _guessed_time(table, data, c)]
    if guessed:
        table = read_table(data, strings=guessed)
    name, mapping = pick_mapping(table, candidates, str(data))
    if limit is not None:
        table = table.slice(0, limit)
    try:
        return name, table_to_dataset(table, mapping)
    except (DatasetError, pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise DatasetError(f"{data}: {exc}") from None


def _all_transforms(candidates: Sequence[tuple[str, ColumnMapping]]) -> dict[str, Transform]:
    return {f"{k}:{name}": t for k, (_, m) in enumerate(candidates) for name, t in m.transforms.items()}


def _guessed_time(table: pa.Table, path: str | Path, column: str) -> bool:
    """A CSV column that Arrow read as a timestamp (CSV holds only text)."""
    csv = str(path).lower().endswith((".csv", ".csv.gz"))
    return csv and column in table.column_names and pa.types.is_timestamp(table[column].type)


def check_columns(table: pa.Table, mapping: ColumnMapping, where: str) -> None:
    """Every column the mapping names must be in the table (one message listing all that are not)."""
    wanted: dict[str, str] = {}
    optional = optional_fields(mapping)
    for name in _MAPPING_FIELDS:
        value = getattr(mapping, name)
        if name in ("amount_in_minor_units", "default_currency", "extra", "transforms") or value is None:
            continue
        if name in mapping.transforms:
            continue
        if name in optional and value not in table.column_names:
            continue
        wanted[name] = value
    for attr, column in mapping.extra.items():
        if f"extra.{attr}" not in mapping.transforms:
            wanted[f"extra.{attr}"] = column
    problems = []
    for transform in mapping.transforms.values():
        try:
            compile_transform(transform, table.schema)
        except TransformError as exc:
            problems.append(str(exc))
    if problems:
        raise DatasetError("\n".join([*problems, f"(the data's columns: {', '.join(table.column_names)})"]))
    missing = [f"{col!r} (for {name})" for name, col in wanted.items() if col not in table.column_names]
    if missing:
        raise DatasetError(
            f"{where}: column(s) not in the data: {', '.join(missing)}; "
            f"the data has: {', '.join(table.column_names)} (use --mapping to map other column names)"
        )
