"""Record batches: the default batch size, a batch conformed to its stream's schema (or
how the two differ), and every batch of a table.
"""

from __future__ import annotations

import pyarrow as pa

from sabot_lab.errors import SchemaMismatchError

__all__ = ["DEFAULT_BATCH_SIZE", "conform", "describe_schema_difference", "table_batches"]

#: Rows per batch when the user does not say: large enough that per-batch overhead vanishes.
DEFAULT_BATCH_SIZE = 131_072


def describe_schema_difference(expected: pa.Schema, actual: pa.Schema) -> str:
    """Name the columns that differ between two schemas.

    >>> describe_schema_difference(pa.schema({"a": pa.int64(), "b": pa.string()}),
    ...                            pa.schema({"a": pa.int32(), "c": pa.string()}))
    "missing column(s) ['b']; unexpected column(s) ['c']; column 'a' is int32, expected int64"
    """
    parts = []
    missing = [n for n in expected.names if n not in actual.names]
    extra = [n for n in actual.names if n not in expected.names]
    if missing:
        parts.append(f"missing column(s) {missing}")
    if extra:
        parts.append(f"unexpected column(s) {extra}")
    for f in expected:
        if f.name in actual.names and actual.field(f.name).type != f.type:
            parts.append(f"column {f.name!r} is {actual.field(f.name).type}, expected {f.type}")
        elif f.name in actual.names and actual.field(f.name).nullable != f.nullable:
            parts.append(f"column {f.name!r} is {_nullability(actual.field(f.name))}, "
                         f"expected {_nullability(f)}")
    if not parts and expected.names != actual.names:
        parts.append(f"columns are in order {actual.names}, expected {expected.names}")
    return "; ".join(parts)


def _nullability(field: pa.Field) -> str:
    return "nullable" if field.nullable else "not null"


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch | None:
    """``batch`` under ``schema``: as it is when the schemas are equal, relabelled when they
    differ only in the nullability of top-level fields (as batches from other tools often
    do), ``None`` otherwise. A field that ``schema`` declares not null must hold no null.

    >>> schema = pa.schema([pa.field("a", pa.int64(), nullable=False)])
    >>> conform(pa.record_batch({"a": [1]}), schema).schema
    a: int64 not null
    >>> conform(pa.record_batch({"a": [1, None]}), schema)
    Traceback (most recent call last):
    ...
    sabot_lab.errors.SchemaMismatchError: column 'a' holds 1 null(s), but ...
    """
    if not batch.schema.equals(schema):
        if batch.schema.names != schema.names or any(
                a.type != b.type for a, b in zip(batch.schema, schema, strict=True)):
            return None
        batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    for j, field in enumerate(schema):
        if not field.nullable and batch.column(j).null_count:
            raise SchemaMismatchError(
                f"column {field.name!r} holds {batch.column(j).null_count} null(s), but the stream "
                f"schema declares it not null; fill the nulls (fill_null) or declare the "
                f"field nullable")
    return batch


def table_batches(table: pa.Table, max_rows: int | None = None) -> list[pa.RecordBatch]:
    """Every non-empty batch of ``table``, zero-copy, in order.

    A table's columns may span several chunks, chunked differently from one column to the
    next (``pa.concat_tables``, or a string column over 2 GiB, which cannot be one chunk):
    ``to_batches`` cuts at every chunk boundary of any column, so no row is left out.

    >>> t = pa.concat_tables([pa.table({"a": [1, 2]}), pa.table({"a": [3]})])
    >>> [b.num_rows for b in table_batches(t)]
    [2, 1]
    >>> [b.num_rows for b in table_batches(t, max_rows=1)]
    [1, 1, 1]
    """
    return [b for b in table.to_batches(max_chunksize=max_rows) if b.num_rows]
