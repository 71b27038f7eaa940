"""Scans: where a :class:`~sabot_lab.plan.nodes.Source` gets its batches.

Every scan has the same protocol: a ``schema``, a one-line ``describe()``, ``batches()`` (an
iterator of record batches), ``partitions(n)`` (scans over parts of its data that others may
read, for Dask), ``nbytes()`` (the Arrow bytes it holds or reads, ``None`` when unknown until
read) and ``pushdown`` (whether it applies a pushed-down filter and columns itself).
:func:`read_source` applies a source's pushed-down filter and columns: natively where the
format allows (Parquet skips row groups and unread columns), batch by batch otherwise.

Examples
--------
>>> import pyarrow as pa
>>> scan = TableScan(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}), batch_size=2)
>>> [b.num_rows for b in scan.batches()]
[2, 1]
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from sabot_lab.errors import ParquetReadError, SchemaMismatchError
from sabot_lab.expr import Expr
from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.batches import (
    DEFAULT_BATCH_SIZE,
    conform,
    describe_schema_difference,
    table_batches,
)
from sabot_lab.plan.fingerprint import UNKNOWN, fingerprint_value
from sabot_lab.plan.nodes import Source

__all__ = [
    "BatchesScan",
    "GeneratorScan",
    "ParquetScan",
    "ReplayScan",
    "ScanFilterOp",
    "TableScan",
    "pushes_down",
    "read_source",
]

#: Parquet row groups decoded at once (and read ahead): memory is bounded by these.
PARQUET_READERS = 2


def _filter_project(
    batch: pa.RecordBatch, columns: tuple[str, ...] | None, predicate: Expr | None
) -> pa.RecordBatch:
    """Keep ``columns`` of the rows where ``predicate`` holds; unread columns are dropped
    before filtering, so the filter copies only what is kept (or tested)."""
    if columns is not None:
        needed = set(columns) | (predicate.columns if predicate is not None else set())
        batch = batch.select([n for n in batch.schema.names if n in needed])
    if predicate is not None:
        mask = predicate.evaluate(batch)
        if isinstance(mask, pa.Scalar):  # a constant predicate keeps all rows or none
            batch = batch if mask.as_py() else batch.slice(0, 0)
        else:
            batch = batch.filter(mask, null_selection_behavior="drop")
    if columns is not None and batch.schema.names != list(columns):
        batch = batch.select(list(columns))
    return batch


class ScanFilterOp(Operator):
    """A source's pushed-down filter and columns, applied per batch as the first step of its
    pipeline (so, like the operators after it, in the worker threads).

    Its metrics are the source's: rows in before the filter, rows out after it.
    """

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        out = _filter_project(batch, self.node.columns, self.node.predicate)
        self.metrics.add(rows_filtered=batch.num_rows - out.num_rows)
        return [out]


def _split(total: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ``(start, stop)`` ranges covering ``range(total)``, sizes within one.

    >>> _split(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    n = max(1, min(n, total)) if total else 1
    bounds = [-(-total * i // n) for i in range(n + 1)]
    return list(itertools.pairwise(bounds))


class TableScan:
    """Slices an in-memory ``pyarrow.Table`` into batches of ``batch_size`` rows (zero-copy)."""

    def __init__(self, table: pa.Table, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.table = table
        self.batch_size = batch_size

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    pushdown = False

    def describe(self) -> str:
        return f"table {self.table.num_rows:,} rows"

    def nbytes(self) -> int:
        return self.table.nbytes

    def partitions(self, n: int) -> list[TableScan]:
        """``n`` contiguous slices (zero-copy), each a scan of its own.

        >>> [p.table.num_rows for p in TableScan(pa.table({"a": range(5)})).partitions(2)]
        [3, 2]
        """
        return [TableScan(self.table.slice(start, stop - start), self.batch_size)
                for start, stop in _split(self.table.num_rows, n)]

    def batches(self, side_outputs: SideOutputs | None = None) -> Iterator[pa.RecordBatch]:
        yield from table_batches(self.table, self.batch_size)


class BatchesScan:
    """Batches from an iterable (or a zero-argument callable returning one, to run again).

    Every batch is checked against ``schema``; a mismatch names the columns that differ and
    the batch's number in the stream (``numbers``: the stream numbers of the items, by
    default 0, 1, 2…). A batch that differs only in nullability is taken under ``schema`` (a
    null in a field it declares not null is an error naming the column).
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch] | Callable[[], Iterable[pa.RecordBatch]],
        schema: pa.Schema,
        numbers: range | None = None,
    ) -> None:
        self._batches = batches
        self._schema = schema
        self._numbers = numbers
        self._consumed = False

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    pushdown = False

    def describe(self) -> str:
        return "batches"

    def nbytes(self) -> int | None:
        """The batches' bytes when they are a list or tuple (``None`` for an iterator)."""
        if isinstance(self._batches, list | tuple):
            return sum(b.nbytes for b in self._batches)
        return None

    def partitions(self, n: int) -> list[TableScan]:
        """Batches from an iterator exist only in this process: read here, once, and cut
        into ``n`` table slices (numbered as the stream's batches are not: a schema error
        here names the item of the iterable)."""
        table = pa.Table.from_batches(list(self.batches()), self._schema)
        return TableScan(table).partitions(n)

    def fingerprint(self) -> dict[str, object]:
        """A list or tuple by the contents of its batches, in order; an iterator or a
        function as :data:`~sabot_lab.plan.fingerprint.UNKNOWN` (reading it would use it up)."""
        if isinstance(self._batches, list | tuple):
            return {"batches": [fingerprint_value(b) for b in self._batches],
                    "schema": str(self._schema)}
        return {"batches": UNKNOWN, "schema": str(self._schema)}

    def batches(self, side_outputs: SideOutputs | None = None) -> Iterator[pa.RecordBatch]:
        if callable(self._batches):
            source = self._batches()
        elif self._consumed and not isinstance(self._batches, list | tuple):
            raise RuntimeError(
                "this stream's batch iterator was already consumed by an earlier run; pass a "
                "list, or a function returning a fresh iterator, to run it again"
            )
        else:
            source = self._batches
        self._consumed = True
        numbers = self._numbers if self._numbers is not None else itertools.count()
        for i, item in zip(numbers, source, strict=False):
            # A table may hold several chunks (and its columns may be chunked differently):
            # every one of its batches is taken, none copied.
            for batch in table_batches(item) if isinstance(item, pa.Table) else (item,):
                batch = self._conformed(batch, i)
                if batch.num_rows:
                    yield batch

    def _conformed(self, batch: pa.RecordBatch, i: int) -> pa.RecordBatch:
        """``batch`` (item ``i`` of the iterable) under the stream schema, or an error
        naming the item and the columns that differ."""
        try:
            conformed = conform(batch, self._schema)
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"batch {i}: {exc}") from None
        if conformed is None:
            raise SchemaMismatchError(
                f"batch {i} does not match the stream schema: "
                f"{describe_schema_difference(self._schema, batch.schema)}. "
                f"Cast or select columns before passing batches in."
            )
        return conformed


class ReplayScan:
    """Replays a bounded table as if it were arriving now: batches are released at the pace
    of their event time, ``speed`` times faster than real time, or at ``rows_per_second``.

    Pacing is the point of this source (dashboards and windows can be watched filling up), so
    it waits between batches; the data and its order are those of the table.
    """

    def __init__(self, table: pa.Table, time_col: str | None = None, speed: float = 1.0,
                 rows_per_second: float | None = None, batch_size: int = 1_000,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if (time_col is None) == (rows_per_second is None):
            raise ValueError("replay at the pace of a time column (time_col=..., speed=...) or "
                             "at a fixed rate (rows_per_second=...), one of the two")
        if speed <= 0 or (rows_per_second is not None and rows_per_second <= 0):
            raise ValueError("speed and rows_per_second must be positive")
        self.table, self.time_col, self.speed = table, time_col, speed
        self.rows_per_second, self.batch_size = rows_per_second, batch_size
        self.clock, self.sleep = clock, sleep

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    def describe(self) -> str:
        pace = (f"{self.rows_per_second:,.0f} rows/s" if self.rows_per_second
                else f"{self.speed:g}x real time")
        return f"replay {self.table.num_rows:,} rows at {pace}"

    pushdown = False

    def nbytes(self) -> int:
        return self.table.nbytes

    def partitions(self, n: int) -> list[ReplayScan]:
        raise NotImplementedError("a replay paces one stream in this process: run it with the "
                                  "LocalRunner")

    def _offsets(self, stops: np.ndarray) -> np.ndarray:
        """Seconds after the start at which each batch is due, the batches ending before
        rows ``stops``."""
        if not len(stops):
            return np.zeros(0)
        starts = np.concatenate([[0], stops[:-1]]).astype(np.int64)
        if self.rows_per_second is not None:
            return starts / self.rows_per_second
        column = self.table[self.time_col]
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("ns")).cast(pa.int64())
            per_second = 1e9
        else:
            per_second = 1.0
        times = column.fill_null(0).to_numpy()
        if not len(times):
            return np.zeros(0)
        # A batch is due when the latest event time so far has been reached.
        latest = np.maximum.accumulate(times)[stops - 1]
        return (latest - times[0]) / per_second / self.speed

    def batches(self, side_outputs: SideOutputs | None = None) -> Iterator[pa.RecordBatch]:
        start = self.clock()
        # One chunk where it can be (even batches); a column over 2 GiB stays in several,
        # and the batches are cut there too, so the pacing follows the actual batches.
        batches = table_batches(self.table.combine_chunks(), self.batch_size)
        offsets = self._offsets(np.cumsum([b.num_rows for b in batches], dtype=np.int64))
        for offset, batch in zip(offsets, batches, strict=True):
            wait = start + offset - self.clock()
            if wait > 0:
                self.sleep(wait)
            yield batch


class GeneratorScan:
    """Synthetic data: ``make_batch(i)`` builds batch ``i`` of ``n_batches``.

    Each batch depends only on its index, so partitions can be generated independently (and,
    on Dask, by the worker that processes them).
    """

    def __init__(
        self,
        make_batch: Callable[[int], pa.RecordBatch],
        n_batches: int,
        schema: pa.Schema,
        indices: range | None = None,
    ) -> None:
        self.make_batch = make_batch
        self.n_batches = n_batches
        self.indices = indices if indices is not None else range(n_batches)
        self._schema = schema

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def describe(self) -> str:
        name = getattr(self.make_batch, "__name__", type(self.make_batch).__name__)
        return f"{name} x{len(self.indices)} batches"

    def fingerprint(self) -> dict[str, object]:
        """The function's name and code and the batch indices; what it makes is
        :data:`~sabot_lab.plan.fingerprint.UNKNOWN` (name it with ``source_id=``)."""
        return {"make_batch": fingerprint_value(self.make_batch), "data": UNKNOWN,
                "indices": fingerprint_value(self.indices), "schema": str(self._schema)}

    pushdown = False

    def nbytes(self) -> None:
        """Unknown: what a generator makes is known once it has made it."""
        return None

    def partitions(self, n: int) -> list[GeneratorScan]:
        """``n`` scans over contiguous ranges of batch indices (each made where it is read).

        >>> make = lambda i: pa.record_batch({"i": [i]})
        >>> scan = GeneratorScan(make, 5, pa.schema({"i": pa.int64()}))
        >>> [list(p.indices) for p in scan.partitions(2)]
        [[0, 1, 2], [3, 4]]
        """
        return [GeneratorScan(self.make_batch, self.n_batches, self._schema,
                              self.indices[start:stop])
                for start, stop in _split(len(self.indices), n)]

    def batches(self, side_outputs: SideOutputs | None = None) -> Iterator[pa.RecordBatch]:
        return BatchesScan(lambda: (self.make_batch(i) for i in self.indices), self._schema,
                           numbers=self.indices).batches()


class ParquetScan:
    """Streams a Parquet file or directory batch by batch (never the whole file at once).

    Pushed-down columns are the only ones read; a pushed-down predicate becomes a dataset
    filter, so row groups whose statistics exclude it are skipped.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = DEFAULT_BATCH_SIZE,
        pieces: tuple[tuple[str, tuple[int, ...]], ...] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no Parquet file or directory at {self.path}")
        self.batch_size = batch_size
        self.pieces = pieces
        try:
            self._schema = ds.dataset(self.path, format="parquet").schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise ParquetReadError(f"{self.path}: not a readable Parquet file or directory "
                                   f"({exc}); check the path, or rewrite the file") from None

    @property
    def dataset(self) -> ds.Dataset:
        """The files (or, for a partition, the row groups) this scan reads."""
        whole = ds.dataset(self.path, format="parquet")
        if self.pieces is None:
            return whole
        fmt = ds.ParquetFileFormat()
        fragments = [fmt.make_fragment(path, filesystem=whole.filesystem, row_groups=list(rgs))
                     for path, rgs in self.pieces]
        return ds.FileSystemDataset(fragments, self._schema, fmt, whole.filesystem)

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def describe(self) -> str:
        part = f" ({sum(len(r) for _, r in self.pieces)} row groups)" if self.pieces else ""
        return f"parquet {self.path.name}{part}"

    def partitions(self, n: int) -> list[ParquetScan]:
        """Up to ``n`` scans over contiguous runs of row groups, read by whoever runs them."""
        pieces = [(f.path, rg.id) for f in ds.dataset(self.path, format="parquet")
                  .get_fragments() for rg in sorted(f.row_groups, key=lambda g: g.id)]
        out = []
        for start, stop in _split(len(pieces), n):
            grouped: dict[str, list[int]] = {}
            for path, rg in pieces[start:stop]:
                grouped.setdefault(path, []).append(rg)
            out.append(ParquetScan(self.path, self.batch_size,
                                   tuple((p, tuple(r)) for p, r in grouped.items())))
        return [p for p in out if p.pieces] or [self]

    #: Applies pushed-down columns and filters itself (without reading what they exclude).
    pushdown = True

    def nbytes(self) -> int:
        """Uncompressed bytes of the row groups this scan covers (from the files' metadata)."""
        return sum(group.total_byte_size for fragment in self.dataset.get_fragments()
                   for group in fragment.row_groups)

    def count_rows(self) -> int:
        """Rows in the row groups this scan covers, from the files' metadata.

        (Summed per row group: ``Dataset.count_rows`` counts whole files even when a fragment
        names only some of their row groups.)
        """
        return sum(rg.num_rows for f in self.dataset.get_fragments() for rg in f.row_groups)

    def batches(
        self,
        columns: tuple[str, ...] | None = None,
        predicate: Expr | None = None,
        side_outputs: SideOutputs | None = None,
    ) -> Iterator[pa.RecordBatch]:
        # Arrow's dataset scanner reads ahead without bound when the consumer is slower than
        # the disk (memory grows with the file), so row groups are read here instead: those
        # whose statistics pass the filter, a few at a time in parallel, in file order.
        expr = predicate.to_pyarrow() if predicate is not None else None
        names = list(columns) if columns is not None else None
        # In file order: pyarrow does not keep a fragment's row groups in order when it
        # splits one built with explicit row groups ([25..37] came back [32..37, 25..31]).
        groups = (rg for fragment in self.dataset.get_fragments(filter=expr)
                  for rg in sorted(fragment.split_by_row_group(filter=expr),
                                   key=lambda g: g.row_groups[0].id))

        def read(group: ds.Fragment) -> pa.Table:
            return group.to_table(columns=names, filter=expr)

        pending: deque[Future] = deque()
        with ThreadPoolExecutor(PARQUET_READERS) as pool:
            try:
                for group in groups:
                    pending.append(pool.submit(read, group))
                    if len(pending) > PARQUET_READERS:
                        yield from table_batches(pending.popleft().result(), self.batch_size)
                while pending:
                    yield from table_batches(pending.popleft().result(), self.batch_size)
            finally:
                for future in pending:
                    future.cancel()


def pushes_down(source: Source) -> bool:
    """Whether the scan applies the source's filter and columns itself (Parquet)."""
    return source.scan.pushdown


def read_source(
    source: Source, metrics: OperatorMetrics, side_outputs: SideOutputs
) -> Iterator[pa.RecordBatch]:
    """The batches of ``source``.

    Scans that push down natively (Parquet) get the filter and columns and are counted here:
    ``rows_in`` is the rows in the files, so skipped row groups count as filtered. Other scans
    yield their batches as they are; a :class:`ScanFilterOp` then filters and counts them.
    """
    scan = source.scan
    if pushes_down(source):
        rows_out = 0
        for batch in scan.batches(source.columns, source.predicate, side_outputs):
            rows_out += batch.num_rows
            metrics.add(rows_out=batch.num_rows, batches_out=1)
            yield batch
        rows_in = scan.count_rows() if source.predicate is not None else rows_out
        metrics.add(rows_in=rows_in, rows_filtered=rows_in - rows_out)
        return
    yield from scan.batches(_CountedSideOutputs(side_outputs, metrics))


class _CountedSideOutputs:
    """Side outputs of a scan (malformed CSV lines), counted as the source's input rows that
    went to a side output, so that the source's accounting sees them."""

    def __init__(self, side_outputs: SideOutputs, metrics: OperatorMetrics) -> None:
        self.side_outputs, self.metrics = side_outputs, metrics

    def declare(self, name: str, schema: pa.Schema) -> None:
        self.side_outputs.declare(name, schema)

    def emit(self, name: str, batch: pa.RecordBatch) -> None:
        self.side_outputs.emit(name, batch)
        self.metrics.add(rows_in=batch.num_rows, rows_side_output=batch.num_rows)
