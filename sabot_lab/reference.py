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

__all__ = ["Table", "table_from_pandas"]

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

    Notes
    -----
    Rows whose key is null can never match; they are kept in the table but counted in
    :attr:`null_key_rows` (and logged).
    """

    def __init__(
        self,
        data: pa.Table | pd.DataFrame | str | Path,
        key: str | Sequence[str],
        *,
        unique: bool = True,
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
        self.data: pa.Table = data.combine_chunks()
        #: The filter this table was cut down with by :meth:`filter` (``None``: all rows).
        self.predicate: Expr | None = None
        self.key: tuple[str, ...] = keys
        self.unique = unique
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
        subset = Table(rows, self.key, unique=False)
        subset.unique = self.unique  # a subset of unique keys is unique: no need to re-check
        subset.predicate = predicate if self.predicate is None else self.predicate & predicate
        return subset

    def _count_null_keys(self) -> int:
        valid = pc.is_valid(self.data.column(self.key[0]))
        for k in self.key[1:]:
            valid = pc.and_(valid, pc.is_valid(self.data.column(k)))
        return self.data.num_rows - (pc.sum(valid).as_py() or 0)

    def _check_unique(self) -> None:
        counts = self.data.select(list(self.key)).group_by(list(self.key)).aggregate(
            [([], "count_all")]
        )
        dupes = counts.filter(pc.greater(counts.column("count_all"), 1))
        # Null keys never match, so repeated nulls do not make a lookup ambiguous.
        for k in self.key:
            dupes = dupes.filter(pc.is_valid(dupes.column(k)))
        if dupes.num_rows:
            examples = ", ".join(
                f"{tuple(row[k] for k in self.key)} x{row['count_all']}"
                for row in dupes.slice(0, 5).to_pylist()
            )
            raise DuplicateKeyError(
                f"reference key {list(self.key)} is not unique: {dupes.num_rows} key value(s) "
                f"occur more than once, e.g. {examples}. Deduplicate the table, or pass "
                f"unique=False for a one-to-many join."
            )

    def __repr__(self) -> str:
        return (
            f"Table(key={list(self.key)}, rows={self.num_rows}, "
            f"columns={self.data.column_names}, unique={self.unique})"
        )
