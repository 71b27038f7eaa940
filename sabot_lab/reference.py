"""Reference data for lookup joins (``Stream.enrich``).

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab import Table
>>> ref = Table(pa.table({"id": [1, 2], "name": ["a", "b"]}), key="id")
>>> ref
Table(key=['id'], rows=2, columns=['id', 'name'], unique=True)
>>> Table(pa.table({"id": [1, 1, 2]}), key="id")
Traceback (most recent call last):
...
sabot_lab.errors.DuplicateKeyError: reference key ['id'] is not unique: ... e.g. (1,) x2. ...

A versioned table holds several versions of a key, each valid from a time on, for an as-of
join (``Stream.enrich(..., as_of=...)``): the key and ``valid_from`` together are unique.

>>> Table(pa.table({"id": [1, 1], "from": [0, 10], "tier": ["a", "b"]}), key="id",
...       valid_from="from")
Table(key=['id'], rows=2, columns=['id', 'from', 'tier'], unique=True, valid_from='from')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sabot_lab.errors import ColumnConversionError, DuplicateKeyError
from sabot_lab.expr import Expr

__all__ = ["Table", "VersionFeed", "is_time_type", "table_from_pandas"]

log = logging.getLogger(__name__)


def table_from_pandas(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as a pyarrow Table, without its index.

    A column that does not convert raises :class:`ColumnConversionError` naming it and the
    fix, in place of pyarrow's error.

    >>> table_from_pandas(pd.DataFrame({"a": [1, 2]}, index=[5, 6])).to_pydict()
    {'a': [1, 2]}
    >>> table_from_pandas(pd.DataFrame({"k": [1, 2], "a": [1, "x"]}))
    Traceback (most recent call last):
    ...
    sabot_lab.errors.ColumnConversionError: column 'a' of the DataFrame mixes value types ...
    """
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        for j, name in enumerate(frame.columns):  # the error path: find the column
            column = frame.iloc[:, j]
            try:
                pa.array(column, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as bad:
                kinds = pd.api.types.infer_dtype(column, skipna=True)
                raise ColumnConversionError(
                    f"column {name!r} of the DataFrame mixes value types (pandas infers "
                    f"{kinds!r}) and does not convert to one Arrow column: {bad.args[0]}. "
                    f"Convert it to one type first, e.g. df[{name!r}] = "
                    f"df[{name!r}].astype(str)") from None
        raise ColumnConversionError(
            f"the DataFrame does not convert to Arrow: {exc}. Give each column one type "
            f"(and the columns unique string names)") from exc


class Table:
    """A reference table with a lookup key, for :meth:`Stream.enrich`.

    Parameters
    ----------
    data
        A ``pyarrow.Table``, a ``pandas.DataFrame`` or the path of a Parquet file/directory.
    key
        The key column name(s).
    unique
        ``True`` (default) checks once, here, that every key value occurs at most once and
        raises :class:`DuplicateKeyError` naming repeated values otherwise. ``False`` allows
        a one-to-many join: a stream row then gets one output row per matching reference row.
    valid_from
        Makes this a *versioned* table: the column (a timestamp, date or integer time) from
        which each row, a version of its key, is valid. An as-of join
        (``Stream.enrich(..., as_of="event_time")``) gives each event the latest version of
        its key valid at the event's time. ``unique`` then checks key and ``valid_from``
        together.
    valid_to
        With ``valid_from``: the column up to which (exclusive) a version is valid; null means
        open-ended. Without it a version is valid until the key's next version.

    Notes
    -----
    Rows whose key (or ``valid_from``) is null can never match; they are kept in the table
    but counted in :attr:`null_key_rows` (and logged).
    """

    def __init__(
        self,
        data: pa.Table | pd.DataFrame | str | Path,
        key: str | Sequence[str],
        *,
        unique: bool = True,
        valid_from: str | None = None,
        valid_to: str | None = None,
    ) -> None:
        if isinstance(data, pd.DataFrame):
            data = table_from_pandas(data)
        elif isinstance(data, str | Path):
            data = pq.read_table(data)
        if not isinstance(data, pa.Table):
            raise TypeError(
                f"reference data must be a pyarrow Table, pandas DataFrame or Parquet path, "
                f"got {type(data).__name__}"
            )
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise ValueError("a reference table needs at least one key column")
        missing = [k for k in keys if k not in data.column_names]
        if missing:
            raise KeyError(
                f"reference key column {missing[0]!r} not found; "
                f"available columns: {data.column_names}"
            )
        if valid_to is not None and valid_from is None:
            raise ValueError("valid_to needs valid_from: a version is valid from valid_from "
                             "up to valid_to")
        for name, column in (("valid_from", valid_from), ("valid_to", valid_to)):
            if column is None:
                continue
            if column not in data.column_names:
                raise KeyError(f"{name} column {column!r} not found; available columns: "
                               f"{data.column_names}")
            if not is_time_type(data.schema.field(column).type):
                raise TypeError(f"{name} column {column!r} is {data.schema.field(column).type}"
                                f"; it must be a timestamp, a date or an integer time")
        # The table itself when its columns are whole already: indexes are cached by the
        # table object (a Dask worker's copy serves every partition it runs).
        self.data: pa.Table = (data if all(c.num_chunks <= 1 for c in data.columns)
                               else data.combine_chunks())
        #: The filter this table was cut down with by :meth:`filter` (``None``: all rows).
        self.predicate: Expr | None = None
        self.key: tuple[str, ...] = keys
        self.unique = unique
        #: Versioned tables: the columns each version is valid from (and to).
        self.valid_from = valid_from
        self.valid_to = valid_to
        self.null_key_rows = self._count_null_keys()
        if self.null_key_rows:
            log.info("reference table has %d row(s) with a null key; they never match",
                     self.null_key_rows)
        if unique:
            self._check_unique()

    @property
    def schema(self) -> pa.Schema:
        """The reference table's schema."""
        return self.data.schema

    @property
    def versioned(self) -> bool:
        """Whether rows are versions of their keys, valid from :attr:`valid_from` on."""
        return self.valid_from is not None

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return self.data.num_rows

    def filter(self, predicate: Expr) -> Table:
        """The rows where ``predicate`` holds, as a new reference table with the same key.

        >>> from sabot_lab.expr import col
        >>> Table(pa.table({"id": [1, 2], "v": [5, 50]}), key="id").filter(col("v") > 9).num_rows
        1
        """
        rows = self.data.filter(predicate.evaluate(self.data), null_selection_behavior="drop")
        subset = Table(rows, self.key, unique=False, valid_from=self.valid_from,
                       valid_to=self.valid_to)
        subset.unique = self.unique  # a subset of unique keys is unique: no need to re-check
        subset.predicate = predicate if self.predicate is None else self.predicate & predicate
        return subset

    @property
    def _match_columns(self) -> list[str]:
        """The columns a row needs non-null to ever match, and that identify it."""
        return [*self.key, *([self.valid_from] if self.versioned else [])]

    def _count_null_keys(self) -> int:
        columns = self._match_columns
        valid = pc.is_valid(self.data.column(columns[0]))
        for k in columns[1:]:
            valid = pc.and_(valid, pc.is_valid(self.data.column(k)))
        return self.data.num_rows - (pc.sum(valid).as_py() or 0)

    def _check_unique(self) -> None:
        columns = self._match_columns
        counts = self.data.select(columns).group_by(columns).aggregate([([], "count_all")])
        dupes = counts.filter(pc.greater(counts.column("count_all"), 1))
        # Null keys never match, so repeated nulls do not make a lookup ambiguous.
        for k in columns:
            dupes = dupes.filter(pc.is_valid(dupes.column(k)))
        if dupes.num_rows:
            examples = ", ".join(
                f"{tuple(row[k] for k in columns)} x{row['count_all']}"
                for row in dupes.slice(0, 5).to_pylist()
            )
            if self.versioned:
                raise DuplicateKeyError(
                    f"versioned reference {columns} is not unique: {dupes.num_rows} key(s) "
                    f"have two versions valid from the same time, e.g. {examples}. Keep one "
                    f"version per key and {self.valid_from!r} (an as-of join could not "
                    f"choose between them).")
            raise DuplicateKeyError(
                f"reference key {list(self.key)} is not unique: {dupes.num_rows} key value(s) "
                f"occur more than once, e.g. {examples}. Deduplicate the table, or pass "
                f"unique=False for a one-to-many join."
            )

    def __repr__(self) -> str:
        versions = "" if not self.versioned else f", valid_from={self.valid_from!r}" + (
            f", valid_to={self.valid_to!r}" if self.valid_to is not None else "")
        return (
            f"Table(key={list(self.key)}, rows={self.num_rows}, "
            f"columns={self.data.column_names}, unique={self.unique}{versions})"
        )


class VersionFeed:
    """Versions of reference data that arrive as a stream of their own, for an as-of join
    (``Stream.enrich(versions_stream, on=..., as_of=...)``).

    The versions stream carries a watermark on its ``valid_from`` column. A version is
    *late* when its ``valid_from`` is before that watermark (the watermark before its row):
    it goes to the ``late_versions`` side output and is never used, so which versions count
    depends on the versions stream alone. A later version with the same key and
    ``valid_from`` replaces an earlier one (a correction).

    Parameters
    ----------
    schema
        The versions' columns (without the watermark column).
    key, valid_from, valid_to
        As for a versioned :class:`Table`.
    bound
        The versions watermark's bound on out-of-orderness, in the unit of its
        ``_watermark`` column.
    per_unit
        What one unit of the ``_watermark`` column is in the join's comparison unit
        (nanoseconds for timestamps and dates, 1 for integer times).
    batches
        A function returning a fresh iterator of the versions stream's batches (with their
        ``_watermark`` column), run locally.
    describe
        The versions plan, for fingerprints and labels.
    """

    versioned = True
    unique = True
    predicate = None

    def __init__(self, schema: pa.Schema, key: tuple[str, ...], valid_from: str,
                 valid_to: str | None, bound: int, per_unit: int,
                 batches: object, describe: object) -> None:
        self.schema = schema
        self.key, self.valid_from, self.valid_to = tuple(key), valid_from, valid_to
        self.bound, self.per_unit = bound, per_unit
        self.batches = batches
        self.describe = describe

    def fingerprint(self) -> object:
        """The versions plan's (the batches function is how it runs, not what it is)."""
        from sabot_lab.plan.fingerprint import fingerprint_value

        return {"type": "VersionFeed", "plan": fingerprint_value(self.describe),
                "key": list(self.key), "valid_from": self.valid_from,
                "valid_to": self.valid_to}

    def __repr__(self) -> str:
        return (f"VersionFeed(key={list(self.key)}, valid_from={self.valid_from!r}, "
                f"columns={self.schema.names})")


def is_time_type(t: pa.DataType) -> bool:
    """Whether an as-of join can compare values of ``t`` as times: timestamps, dates and
    integers (a time in the user's own unit).

    >>> is_time_type(pa.timestamp("us")), is_time_type(pa.int32()), is_time_type(pa.string())
    (True, True, False)
    """
    return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_integer(t)
