"""Checks for notebooks and tests: do two runs give the same rows?

Examples
--------
>>> import pyarrow as pa
>>> a = pa.table({"k": [1, 2, 3], "v": ["x", "y", "z"]})
>>> assert_same_results(a, a.take([2, 0, 1]))
>>> assert_same_results(a, pa.table({"k": [1, 2, 3], "v": ["x", "y", "q"]}))
Traceback (most recent call last):
...
AssertionError: row 2 of 3 (after sorting ...) differs in column 'v': {'k': 3, 'v': 'z'} != ...
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["assert_same_results"]


def _table(value: object) -> pa.Table:
    table = getattr(value, "table", value)
    if not isinstance(table, pa.Table):
        raise TypeError(f"expected a Result or a pyarrow.Table, got {type(value).__name__}")
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns[name] = column
    return pa.table(columns) if columns else table


def _without(a: pa.Table, b: pa.Table, ignore: Iterable[str]) -> tuple[pa.Table, pa.Table]:
    """``a`` and ``b`` without the columns ``ignore`` names (each must be in one of them)."""
    names = [ignore] if isinstance(ignore, str) else list(ignore)
    unknown = [n for n in names if n not in a.column_names and n not in b.column_names]
    if unknown:
        raise ValueError(f"ignore_columns names {unknown}, a column of neither side; the "
                         f"columns are {a.column_names} and {b.column_names}")
    return (a.drop_columns([n for n in names if n in a.column_names]),
            b.drop_columns([n for n in names if n in b.column_names]))


def assert_same_results(left: object, right: object, rtol: float = 1e-12,
                        atol: float = 0.0, ignore_columns: Iterable[str] = ()) -> None:
    """Assert that two results hold the same multiset of rows, in any order.

    Parameters
    ----------
    left, right
        :class:`~sabot_lab.result.Result` objects (their ``.table`` is compared) or tables.
        Dictionary-encoded columns compare by value.
    rtol
        Relative tolerance for floating-point columns (two engines may round an interpolated
        quantile differently in the last bit); other columns must be equal.
    atol
        Absolute tolerance for floating-point columns, for values that should be zero but
        are sums in another order (``1e-15`` against ``0.0``).
    ignore_columns
        Columns left out of the comparison: measurements that differ from run to run, such
        as the fraud pattern's ``detection_latency_ms``. Each must be a column of ``left``
        or ``right`` (a misspelt name is an error, not a silently weaker check).

    Raises
    ------
    AssertionError
        Naming the first difference: column names, types, row counts, or the first row (in
        sorted order) that differs, with both versions of it.
    ValueError
        If a name in ``ignore_columns`` is a column of neither side.

    Examples
    --------
    >>> a = pa.table({"k": [1, 2], "latency_ms": [0.5, 0.7]})
    >>> assert_same_results(a, a.set_column(1, "latency_ms", pa.array([0.9, 0.1])),
    ...                     ignore_columns=["latency_ms"])
    """
    a, b = _without(_table(left), _table(right), ignore_columns)
    if a.column_names != b.column_names:
        raise AssertionError(f"different columns: {a.column_names} != {b.column_names}")
    for name in a.column_names:
        if a.schema.field(name).type != b.schema.field(name).type:
            raise AssertionError(f"column {name!r} is {a.schema.field(name).type} on the left "
                                 f"but {b.schema.field(name).type} on the right")
    if a.num_rows != b.num_rows:
        raise AssertionError(f"different row counts: {a.num_rows:,} != {b.num_rows:,}")
    keys = [(name, "ascending") for name in a.column_names]
    a, b = a.sort_by(keys), b.sort_by(keys)
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            scale = pc.max_element_wise(pc.abs(x), pc.abs(y))
            same = pc.less_equal(pc.abs(pc.subtract(x, y)),
                                 pc.add(pc.multiply(scale, rtol), atol))
            both_nan = pc.fill_null(pc.and_(pc.is_nan(x), pc.is_nan(y)), False)
            same = pc.or_(pc.or_(pc.fill_null(same, False), both_nan),
                          pc.fill_null(pc.equal(x, y), False))
        else:
            same = pc.fill_null(pc.equal(x, y), False)
        both_null = pc.and_(pc.is_null(x), pc.is_null(y))
        differs = pc.invert(pc.or_(same, both_null))
        if pc.any(differs).as_py():
            row = pc.index(differs, True).as_py()
            raise AssertionError(
                f"row {row} of {a.num_rows:,} (after sorting both by every column) differs in "
                f"column {name!r}: {a.slice(row, 1).to_pylist()[0]} != "
                f"{b.slice(row, 1).to_pylist()[0]}"
            )
