"""Independent oracles for tests: DuckDB, and order-insensitive row comparison."""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics


def _plain(table: pa.Table) -> pd.DataFrame:
    """A DataFrame with dictionary columns decoded, sorted by every column, index reset."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns[name] = column
    frame = pa.table(columns).to_pandas() if columns else pd.DataFrame()
    if frame.empty:
        return frame.reset_index(drop=True)
    return frame.sort_values(list(frame.columns), na_position="first").reset_index(drop=True)


def assert_same_rows(actual: pa.Table, expected: pa.Table) -> None:
    """Same column names and the same multiset of rows (order-insensitive)."""
    assert actual.column_names == expected.column_names
    assert actual.num_rows == expected.num_rows
    pd.testing.assert_frame_equal(_plain(actual), _plain(expected), check_dtype=False)


def duck(sql: str, **tables: pa.Table) -> pa.Table:
    """Run ``sql`` in a fresh DuckDB connection with ``tables`` registered by name."""
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    return con.sql(sql).to_arrow_table()


def assert_balanced(metrics: list[OperatorMetrics]) -> None:
    """Every operator accounts for its rows: in = out - expanded + filtered + side output."""
    for m in metrics:
        assert m.balanced(), m
