"""Reading a history where it lies: Parquet by URI, the column mapping, and the local engine's row order.

Any URI Spark reads (`/path`, `file:`, `hdfs:`, `s3a:`...), a file or a
folder of Parquet files. Rows are mapped into transactions by the local
engine's own `table_to_dataset`, one Arrow batch at a time on the executors,
so the column mapping means exactly what it means locally.

Order. The local engine sorts the file's rows by event time, ties in file
order. Spark keeps that order with a row key: the file's rank among the
input files (sorted by path) times 2^40, plus the row's index in its file
(`_metadata.row_index`). Every step orders by (event time, row key).

Nanosecond timestamps (pandas writes them) are read by Spark as integers
(`spark.sql.legacy.parquet.nanosAsLong`); the columns that hold them are
found in the first file's footer and turned back into timestamps in each
batch (`restore_timestamps`), so `table_to_dataset` converts them as locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from engine.offline.datasets import ColumnMapping, optional_fields

#: Row key = file rank << FILE_SHIFT | row index in the file.
FILE_SHIFT = 40
ROW = "_row"  # the row key column


class InputError(ValueError):
    """An input Spark cannot read or map: reported as a CLI error."""


@dataclass(frozen=True)
class Input:
    """The mapped columns of a history with their row keys, as Spark reads them."""

    frame: DataFrame  # the mapped columns (as named in the data) and ROW
    columns: tuple[str, ...]  # the data's column names
    nanos: tuple[str, ...]  # mapped columns holding nanosecond timestamps read as integers
    files: int
    rows: int  # before `limit`


def mapped_columns(mapping: ColumnMapping, available: list[str]) -> list[str]:
    """The data columns a mapping reads (the optional ones only when present), in a stable order."""
    wanted = [
        mapping.transaction_id,
        mapping.event_time,
        mapping.amount,
        mapping.currency,
        mapping.user_id,
        mapping.card_id,
        mapping.device_id,
        mapping.ip,
        mapping.country,
        mapping.merchant_id,
        mapping.merchant_category,
        mapping.channel,
        mapping.label,
        mapping.label_time,
        *mapping.extra.values(),
    ]
    optional = {getattr(mapping, name) for name in optional_fields(mapping)}
    out: list[str] = []
    for column in wanted:
        if column is None or column in out or (column in optional and column not in available):
            continue
        out.append(column)
    return out


def schema_columns(spark: SparkSession, uri: str) -> list[str]:
    """The column names of the Parquet data at `uri` (InputError when Spark cannot read it)."""
    return list(_read(spark, uri).columns)


def _read(spark: SparkSession, uri: str) -> DataFrame:
    from pyspark.errors import PySparkException

    try:
        return spark.read.parquet(uri)
    except PySparkException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{uri}: Spark cannot read it as Parquet: {first}") from None


def read_input(spark: SparkSession, uri: str, mapping: ColumnMapping, limit: int | None = None) -> Input:
    """The history at `uri` under `mapping`, with row keys; `limit`: its first rows only (file order)."""
    raw = _read(spark, uri)
    columns = mapped_columns(mapping, raw.columns)
    # The files as `_metadata.file_path` spells them (inputFiles() spells some URIs otherwise),
    # and the rows, in one job without a shuffle.
    found, rows = raw.agg(sf.collect_set("_metadata.file_path"), sf.count(sf.lit(1))).collect()[0]
    files = sorted(found)
    if not files:
        raise InputError(f"{uri}: no Parquet files")
    rank = sf.create_map(*[x for i, path in enumerate(files) for x in (sf.lit(path), sf.lit(i))])
    frame = raw.select(
        *[sf.col(f"`{c}`") for c in columns],
        (rank[sf.col("_metadata.file_path")].cast("long") * (1 << FILE_SHIFT) + sf.col("_metadata.row_index")).alias(
            ROW
        ),
    )
    if limit is not None:
        frame = _first_rows(frame, limit)
    return Input(frame, tuple(columns), _nanosecond_columns(spark, files[0], columns), len(files), int(rows))


def _first_rows(frame: DataFrame, limit: int) -> DataFrame:
    """The first `limit` rows in file order (files by path): the local engine's `--limit`."""
    per_file = sorted(
        (int(r[0]), int(r[1])) for r in frame.groupBy(sf.shiftright(ROW, FILE_SHIFT).alias("f")).count().collect()
    )
    keep = sf.lit(False)
    left = limit
    for file, count in per_file:
        if left <= 0:
            break
        take = min(count, left)
        keep = keep | ((sf.shiftright(ROW, FILE_SHIFT) == file) & ((sf.col(ROW) % (1 << FILE_SHIFT)) < take))
        left -= take
    return frame.filter(keep)


def _nanosecond_columns(spark: SparkSession, path: str, columns: list[str]) -> tuple[str, ...]:
    """The columns of `columns` that the Parquet file at `path` stores as nanosecond timestamps."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    source = jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(jvm.org.apache.hadoop.fs.Path(path), conf)
    reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(source)
    try:
        schema = reader.getFooter().getFileMetaData().getSchema()
    finally:
        reader.close()
    out = []
    for field in schema.getFields():
        annotation = field.getLogicalTypeAnnotation()
        if field.getName() in columns and annotation is not None and "TIMESTAMP(NANOS" in str(annotation.toString()):
            out.append(str(field.getName()))
    return tuple(out)


def restore_timestamps(table: pa.Table, nanos: tuple[str, ...]) -> pa.Table:
    """Nanosecond timestamps that Spark read as integers, as timestamps again (naive, as written)."""
    for name in nanos:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.cast(table[name], pa.timestamp("ns")))
    return table
