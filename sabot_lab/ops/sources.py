"""Scans: where a :class:`~sabot_lab.plan.nodes.Source` gets its batches.

Each scan has a ``schema``, a one-line ``describe()`` and ``batches()``, an iterator of record
batches. :func:`read_source` applies a source's pushed-down filter and columns: natively where
the format allows (Parquet skips row groups and unread columns), batch by batch otherwise.

Examples
--------
>>> import pyarrow as pa
>>> scan = TableScan(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}), batch_size=2)
>>> [b.num_rows for b in scan.batches()]
[2, 1]
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from sabot_lab.errors import CsvParseError, ParquetReadError, SchemaMismatchError
from sabot_lab.expr import Expr
from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.plan.fingerprint import UNKNOWN, fingerprint_value
from sabot_lab.plan.nodes import Source

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BatchesScan",
    "CsvScan",
    "GeneratorScan",
    "ParquetScan",
    "ReplayScan",
    "ScanFilterOp",
    "TableScan",
    "pushes_down",
    "read_source",
    "table_batches",
]

#: Rows per batch when the user does not say: large enough that per-batch overhead vanishes.
DEFAULT_BATCH_SIZE = 131_072
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

    def describe(self) -> str:
        return f"table {self.table.num_rows:,} rows"

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

    def describe(self) -> str:
        return "batches"

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


# Where the CSV scanner is within a record (the states of pyarrow's CSV parser).
_RECORD_START, _FIELD_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = range(5)
_LF, _CR = 10, 13
# Entries of the scanner state kept between chunks.
_LINE, _ROWS, _MODE, _AFTER_CR = range(4)


@numba.njit(nogil=True, cache=True)
def _scan_rows(data, delimiter, quote, state, targets, first, out):  # pragma: no cover
    r"""Scan CSV bytes as pyarrow's parser splits them into rows, and write to ``out[k]`` the
    physical line on which row ``targets[k]`` (1-based, the header being row 1) starts.

    A row is a non-empty record: empty lines are skipped, as ``ignore_empty_lines`` does; a
    quote opens a quoted field only at the start of a field and a doubled quote inside one
    is a quote, so line breaks there belong to the field. Lines end at ``\n``, ``\r\n`` or
    ``\r``. ``state`` (line, rows so far, parser state, previous byte was ``\r``) carries
    over from one chunk to the next. Returns the index of the first unresolved target and
    the bytes consumed (fewer than ``len(data)`` once every target is resolved).
    """
    line, rows, mode, after_cr = state[_LINE], state[_ROWS], state[_MODE], state[_AFTER_CR]
    k = first
    n = data.shape[0]
    used = n
    for i in range(n):
        b = data[i]
        newline = b in (_LF, _CR)
        if mode == _RECORD_START and not newline:
            rows += 1
            while k < targets.shape[0] and targets[k] == rows:
                out[k] = line
                k += 1
            mode = _FIELD_START
        if mode == _FIELD_START:
            if b == quote:
                mode = _QUOTED
            elif newline:
                mode = _RECORD_START
            elif b != delimiter:
                mode = _UNQUOTED
        elif mode == _UNQUOTED:
            if b == delimiter:
                mode = _FIELD_START
            elif newline:
                mode = _RECORD_START
        elif mode == _QUOTED:
            if b == quote:
                mode = _QUOTE_IN_QUOTED
        elif mode == _QUOTE_IN_QUOTED:
            if b == quote:
                mode = _QUOTED
            elif b == delimiter:
                mode = _FIELD_START
            elif newline:
                mode = _RECORD_START
            else:
                mode = _UNQUOTED
        if b == _CR or (b == _LF and not after_cr):
            line += 1
        after_cr = b == _CR
        if k == targets.shape[0]:
            used = i + 1
            break
    state[_LINE], state[_ROWS], state[_MODE], state[_AFTER_CR] = line, rows, mode, after_cr
    return k, used


_MALFORMED_SCHEMA = pa.schema({"file": pa.string(), "line": pa.int64(), "text": pa.string(),
                               "reason": pa.string()})


class _RowLines:
    r"""The file lines on which CSV rows start, the rows numbered as pyarrow numbers them
    (``InvalidRow.number``, the ``Row #`` of its errors): that numbering skips empty lines
    and counts a row with a quoted line break once, so it is not the line number.

    Used only when a row is malformed or does not convert: the file is scanned forward from
    where the last question left off, a chunk at a time (memory bounded by the chunk), by a
    numba kernel. Rows asked for in increasing order (as the reader reports them) cost one
    pass over the file in all; an earlier row rescans from the start.

    >>> import os, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write('a,b\n1,"x\ny"\n\n2\n3,z\n')
    >>> _RowLines(f.name).lines([3, 4, 9])
    [5, 6, None]
    >>> os.remove(f.name)
    """

    def __init__(self, path: str | Path, delimiter: str = ",", quote: str = '"',
                 chunk_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.delimiter, self.quote = ord(delimiter), ord(quote)
        self.chunk_bytes = chunk_bytes
        self._rewind()

    def _rewind(self) -> None:
        self.offset = 0  # file bytes scanned (the state is that after them)
        self.state = np.array([1, 0, _RECORD_START, 0], dtype=np.int64)

    def lines(self, rows: Sequence[int | None]) -> list[int | None]:
        """The line on which each of ``rows`` starts (``None`` for ``None`` and for rows
        the file does not have)."""
        wanted = sorted({r for r in rows if r is not None})
        if not wanted:
            return [None] * len(rows)
        if wanted[0] <= self.state[_ROWS]:
            self._rewind()
        targets = np.array(wanted, dtype=np.int64)
        out = np.full(len(targets), -1, dtype=np.int64)
        k = 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            while k < len(targets):
                chunk = f.read(self.chunk_bytes)
                if not chunk:
                    break
                k, used = _scan_rows(np.frombuffer(chunk, dtype=np.uint8), self.delimiter,
                                     self.quote, self.state, targets, k, out)
                self.offset += used
        found = {r: int(line) for r, line in zip(wanted, out.tolist(), strict=True)
                 if line >= 0}
        return [None if r is None else found.get(r) for r in rows]

    def unclosed_quote_row(self) -> int | None:
        r"""The number of the file's last row (as pyarrow numbers rows) if the file ends
        inside a quoted value (a quote that is never closed), else ``None``. Scans the
        whole file.

        >>> import os, tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        ...     _ = f.write('a,b\n\n1,x\n2,"never closed\n3,y\n')
        >>> rows = _RowLines(f.name)
        >>> row = rows.unclosed_quote_row()
        >>> row, rows.lines([row])
        (3, [4])
        >>> os.remove(f.name)
        """
        self._rewind()
        beyond = np.array([np.iinfo(np.int64).max], dtype=np.int64)  # scan to the end
        out = np.full(1, -1, dtype=np.int64)
        with self.path.open("rb") as f:
            while chunk := f.read(self.chunk_bytes):
                _scan_rows(np.frombuffer(chunk, dtype=np.uint8), self.delimiter, self.quote,
                           self.state, beyond, 0, out)
                self.offset += len(chunk)
        return int(self.state[_ROWS]) if self.state[_MODE] == _QUOTED else None

    def where(self, row: int) -> str:
        """``"line N"`` for pyarrow's row ``row``, or ``"row N (line unknown)"`` when the
        file has no such row (pyarrow's count and the scan's would then disagree)."""
        line = self.lines([row])[0]
        return f"line {line}" if line is not None else f"row {row} (line unknown)"


def _has_line_break(value: object) -> bool:
    """Whether a parsed CSV value (text or bytes) holds a line break."""
    if isinstance(value, str):
        return "\n" in value or "\r" in value
    return isinstance(value, bytes) and (b"\n" in value or b"\r" in value)


def _unclosed_quote_hint(text: str, quote: str = '"') -> str:
    r"""Why a row that spans several lines has the wrong number of fields, when the likely
    reason is a quote that is never closed (it turns the lines after it into one value).

    >>> _unclosed_quote_hint('1,"never closed\n2,b')
    ' (the row runs over several lines because a quote opened in it is never closed: ...)'
    >>> _unclosed_quote_hint('1,"a\nb"')
    ''
    """
    spans_lines = "\n" in text or "\r" in text
    if not spans_lines or text.count(quote) % 2 == 0:
        return ""
    return (" (the row runs over several lines because a quote opened in it is never "
            "closed: close it, or double a quote meant literally)")


def _parse_options(on_invalid: Callable | None) -> pacsv.ParseOptions:
    """How every CSV file is parsed: RFC 4180 quoting, line breaks allowed inside quotes.

    ``newlines_in_values`` makes pyarrow's chunker track quotes, so a quoted line break that
    falls on a read-block boundary does not split the row (without it, valid CSV fails
    with "parser got out of sync"); it costs no measurable time on files without any.
    """
    return pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)


class CsvScan:
    """Streams a CSV file block by block with pyarrow's incremental reader.

    Parameters
    ----------
    path
        The CSV file (with a header line).
    schema
        Column types to convert to; columns it does not name are inferred.
    batch_size
        Approximate rows per batch (converted to a block size in bytes from the first line).
    bad_lines
        ``"raise"`` (default): a row with the wrong number of fields, or a value that does not
        convert, raises :class:`CsvParseError` naming file and line. ``"side_output"``: rows
        with the wrong number of fields go to the ``malformed`` side output with the line
        number, the text and the reason (unconvertible values still raise).

    Notes
    -----
    Quoted values may hold line breaks and delimiters (RFC 4180), wherever the read blocks
    fall. A quote that is never closed makes the rest of the file one value: an error naming
    the line of its row, or, when that row then has too few fields, a malformed line whose
    reason says so.

    Lines are the file's physical lines (empty lines and line breaks inside quoted values
    count), where the row starts. pyarrow numbers rows instead, so they are looked up in the
    file when a row is malformed or does not convert, never on the way of good rows.
    """

    def __init__(
        self,
        path: str | Path,
        schema: pa.Schema | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bad_lines: str = "raise",
    ) -> None:
        if bad_lines not in ("raise", "side_output"):
            raise ValueError(f"bad_lines must be 'raise' or 'side_output', got {bad_lines!r}")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no CSV file at {self.path}")
        self.column_types = schema
        self.batch_size = batch_size
        self.bad_lines = bad_lines
        self._schema = self._peek_schema()
        self._schema_names = self._schema.names

    def _peek_schema(self) -> pa.Schema:
        """The header's columns with the declared types (others inferred, as the reader will)."""
        try:
            return self._read_header()
        except pa.ArrowInvalid as exc:
            raise CsvParseError(f"{self.path}: no CSV header could be read ({exc}); is the "
                                f"file empty, or not CSV?") from None

    def _read_header(self) -> pa.Schema:
        with pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=self._block_size(), use_threads=False),
            parse_options=_parse_options(lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in self.column_types.names}
                if self.column_types is not None else None
            ),
        ) as reader:
            inferred = reader.schema
        if self.column_types is None:
            return inferred
        missing = [n for n in self.column_types.names if n not in inferred.names]
        if missing:
            raise KeyError(f"{self.path}: schema names column(s) {missing} that the header "
                           f"does not have; the header has {inferred.names}")
        return pa.schema([self.column_types.field(f.name) if f.name in self.column_types.names
                          else f for f in inferred])

    def _block_size(self) -> int:
        """Bytes per read block, sized so that a block holds about ``batch_size`` rows."""
        with self.path.open("rb") as f:
            head = f.read(1 << 16)
        line_bytes = max(len(head) // max(head.count(b"\n"), 1), 8)
        return max(1 << 12, min(line_bytes * self.batch_size, 1 << 28))

    def _open(self, on_invalid: Callable | None = None) -> pacsv.CSVStreamingReader:
        """pyarrow's reader (which reads the first block at once: its errors are raised
        here, as pyarrow's)."""
        block = self._block_size()
        types = dict(zip(self.column_types.names, self.column_types.types, strict=True)) if (
            self.column_types is not None
        ) else None
        return pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
            parse_options=_parse_options(on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def describe(self) -> str:
        return f"csv {self.path.name}"

    def _explain(self, exc: pa.ArrowInvalid, lines: _RowLines,
                 invalid: pacsv.InvalidRow | None = None) -> CsvParseError:
        """Our error for pyarrow's, naming the file line of its ``Row #`` (``invalid``: the
        row pyarrow's handler was last shown, whose full text it may have cut short)."""
        message = str(exc)
        where = re.search(r"In CSV column #(\d+): Row #(\d+): ", message)
        if where is not None:
            column = self._schema_names[int(where.group(1))]
            return CsvParseError(
                f"{self.path}: {lines.where(int(where.group(2)))}, column {column!r}: "
                f"{message[where.end():]}. Fix the value, or read the column as string "
                f"(schema=) and convert it with with_columns"
            )
        row = re.search(r"Row #(\d+): ", message)
        if row is not None:  # pyarrow's words kept: its row numbers skip empty lines
            message = f"{lines.where(int(row.group(1)))}: {message}"
        hint = _unclosed_quote_hint(invalid.text) if invalid is not None else ""
        return CsvParseError(f"{self.path}: {message}{hint}. Fix the line, or pass "
                             f"bad_lines='side_output' to route malformed lines aside")

    def batches(self, side_outputs: SideOutputs | None = None) -> Iterator[pa.RecordBatch]:
        malformed: list[dict] = []
        lines = _RowLines(self.path)

        invalid: list[pacsv.InvalidRow] = []  # the row behind an error, for its message
        last_malformed = [0]  # the number of the last row sent to the side output

        def on_invalid(row: pacsv.InvalidRow) -> str:
            if self.bad_lines == "raise":
                invalid[:] = [row]
                return "error"
            last_malformed[0] = row.number
            malformed.append({"file": str(self.path), "line": row.number, "text": row.text,
                              "reason": f"expected {row.expected_columns} fields, "
                                        f"got {row.actual_columns}"
                                        f"{_unclosed_quote_hint(row.text)}"})
            return "skip"

        def emit() -> None:
            """The malformed rows so far, their row numbers turned into file lines."""
            if malformed and side_outputs is not None:
                found = lines.lines([m["line"] for m in malformed])
                for m, line in zip(malformed, found, strict=True):
                    m["line"] = line
                side_outputs.emit("malformed", pa.RecordBatch.from_pylist(
                    malformed, schema=_MALFORMED_SCHEMA))
            malformed.clear()

        try:
            reader = self._open(on_invalid)
        except pa.ArrowInvalid as exc:
            raise self._explain(exc, lines, invalid[0] if invalid else None) from None
        held = None  # the last batch waits until the file is known to close its quotes
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise self._explain(exc, lines, invalid[0] if invalid else None) from None
            emit()
            if batch.num_rows:
                if held is not None:
                    yield held
                held = batch
        emit()  # lines after the last good row
        if held is not None:
            self._check_quotes_closed(held, lines, last_malformed[0])
            yield held

    def _check_quotes_closed(self, last: pa.RecordBatch, lines: _RowLines,
                             malformed: int) -> None:
        """Raise if the file ends inside a quoted value: pyarrow then reads every line after
        the opening quote as one value of the last row, which loses them silently when the
        row still has as many fields as the header (``malformed``: the last row reported
        malformed, whose text, every line of it, is in the side output already).

        Only a last row holding a line break in a value can be such a row, so only then is
        the file scanned (once more).
        """
        row = last.slice(last.num_rows - 1)
        if not any(_has_line_break(column[0].as_py()) for column in row.columns):
            return
        number = lines.unclosed_quote_row()
        if number is None or number == malformed:
            return
        raise CsvParseError(
            f"{self.path}: {lines.where(number)}: a quote opened in this row is never "
            f"closed, so every line after it, to the end of the file, was read as one value "
            f"(of column {self._schema_names[-1]!r}); close the quote, or double a quote "
            f"meant literally")


def pushes_down(source: Source) -> bool:
    """Whether the scan applies the source's filter and columns itself (Parquet)."""
    return getattr(source.scan, "pushdown", False)


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
