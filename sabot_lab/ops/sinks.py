"""Sink targets: collect into a table, write Parquet, or call a function per batch.

Each target opens a writer for one run (``open(schema)``), which takes batches with
``write(batch)`` and ends with ``close() -> pa.Table | None`` (the collected table, if any).

Examples
--------
>>> import pyarrow as pa
>>> writer = CollectSink().open(pa.schema({"a": pa.int64()}))
>>> writer.write(pa.record_batch({"a": [1, 2]}))
>>> writer.close().num_rows
2
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["CallbackSink", "CollectSink", "ParquetSink"]


class _CollectWriter:
    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def close(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)

    def abort(self) -> None:
        self.batches.clear()


class CollectSink:
    """Collects every batch into one ``pyarrow.Table`` (all collect sinks are equal)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CollectSink)

    def __hash__(self) -> int:
        return hash(CollectSink)

    def describe(self) -> str:
        return "collect"

    def open(self, schema: pa.Schema) -> _CollectWriter:
        return _CollectWriter(schema)


class _ParquetWriter:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


class ParquetSink:
    """Writes one Parquet file; it appears atomically when the run succeeds (temp + rename)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"parquet {self.path.name}"

    def open(self, schema: pa.Schema) -> _ParquetWriter:
        return _ParquetWriter(self.path, schema)


class _CallbackWriter:
    def __init__(self, fn: Callable[[pa.RecordBatch], object]) -> None:
        self.fn = fn

    def write(self, batch: pa.RecordBatch) -> None:
        self.fn(batch)

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


class CallbackSink:
    """Calls ``fn(batch)`` for every output batch, in order, in the caller's thread."""

    def __init__(self, fn: Callable[[pa.RecordBatch], object]) -> None:
        self.fn = fn

    def describe(self) -> str:
        return f"for_each_batch {getattr(self.fn, '__name__', 'fn')}"

    def open(self, schema: pa.Schema) -> _CallbackWriter:
        return _CallbackWriter(self.fn)
