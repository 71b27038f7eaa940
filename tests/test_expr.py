"""Expressions against pandas/numpy computations, and against their pyarrow compilation."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from sabot_lab.expr import ExprError, coalesce, col, lit


@pytest.fixture
def batch() -> pa.RecordBatch:
    return pa.record_batch({
        "a": pa.array([1, 2, 3, None, 5], pa.int64()),
        "b": pa.array([0.5, -1.0, 2.0, 4.0, None]),
        "s": pa.array(["x", "y", None, "x", "z"]),
    })


def test_columns_lists_what_is_read():
    e = ((col("a") + col("b")) > 2) | ~col("s").isin(["x"]) & col("c").is_null()
    assert e.columns == {"a", "b", "s", "c"}
    assert lit(3).columns == frozenset()


def test_arithmetic_and_comparison_match_pandas(batch):
    frame = batch.to_pandas()
    e = (col("a") * 2 + col("b")) / 4 - 1
    expected = (frame["a"] * 2 + frame["b"]) / 4 - 1
    got = pd.Series(e.evaluate(batch).to_pandas())
    pd.testing.assert_series_equal(got, expected, check_names=False)
    assert (col("a") >= 3).evaluate(batch).to_pylist() == [False, False, True, None, True]


def test_true_division_of_integers():
    out = (col("a") / col("b")).evaluate(pa.record_batch({"a": [7, 1], "b": [2, 4]}))
    assert out.to_pylist() == [3.5, 0.25]


def test_kleene_logic_like_sql(batch):
    # SQL: NULL AND FALSE = FALSE, NULL OR TRUE = TRUE, NULL AND TRUE = NULL.
    null_gt = col("a") > 0
    assert (null_gt & lit(False)).evaluate(batch).to_pylist()[3] is False
    assert (null_gt | lit(True)).evaluate(batch).to_pylist()[3] is True
    assert (null_gt & lit(True)).evaluate(batch).to_pylist()[3] is None


def test_isin_keeps_null_as_null(batch):
    assert col("s").isin(["x", "z"]).evaluate(batch).to_pylist() == [True, False, None, True,
                                                                      True]


def test_null_helpers(batch):
    assert col("b").is_null().evaluate(batch).to_pylist() == [False] * 4 + [True]
    assert col("a").fill_null(0).evaluate(batch).to_pylist() == [1, 2, 3, 0, 5]
    assert coalesce(col("a"), 9).evaluate(batch).to_pylist() == [1, 2, 3, 9, 5]
    assert col("a").cast("float64").evaluate(batch).type == pa.float64()


def test_overflow_raises_instead_of_wrapping():
    big = pa.record_batch({"a": pa.array([2**62], pa.int64())})
    with pytest.raises(pa.ArrowInvalid, match="overflow"):
        (col("a") * 4).evaluate(big)


@pytest.mark.parametrize(
    "expr",
    [
        col("a") > 2,
        (col("a") + 1 <= 4) & col("s").isin(["x", "y"]),
        ~(col("b") < 0) | col("a").is_null(),
        col("b").is_valid() & (col("a") / 2 > 0.9),
        col("a").between(2, 3),
    ],
    ids=repr,
)
def test_pyarrow_compilation_selects_the_same_rows(batch, expr):
    table = pa.Table.from_batches([batch])
    ours = table.filter(expr.evaluate(batch))
    theirs = ds.dataset(table).to_table(filter=expr.to_pyarrow())
    assert ours.equals(theirs)


def test_structural_equality_and_substitution():
    assert (col("x") + 1).equals(col("x") + 1)
    assert not (col("x") + 1).equals(col("x") + 2)
    rewritten = (col("x") > 1).substitute({"x": col("a") * 2})
    assert rewritten.equals(col("a") * 2 > 1)
    with pytest.raises(TypeError, match="truth value"):
        bool(col("x") > 1)


def test_unknown_column_names_it_and_the_schema():
    with pytest.raises(ExprError, match=r"column 'zz' not found.*available columns: \['a'\]"):
        (col("zz") + 1).output_type(pa.schema({"a": pa.int64()}))


def test_type_error_names_the_column_types():
    schema = pa.schema({"s": pa.string()})
    with pytest.raises(ExprError, match=r"'s': 'string'"):
        (col("s") * 2).output_type(schema)


def test_output_type_is_the_type_computed_on_real_data(batch):
    for e in (col("a") + col("b"), col("a") / 2, col("a").cast("int8") + 1, col("s").is_null()):
        assert e.output_type(batch.schema) == e.evaluate(batch).type


def test_text_time_and_case_functions_match_duckdb():
    import datetime as dt

    import duckdb

    from sabot_lab.expr import if_else

    table = pa.table({
        "u": ["https://x.com/a/b/item?q=1&channel_id=7", "https://x.com/c", None, "plain"],
        "s": ["Apple", "cocoa", None, "BAIDU"],
        "t": [dt.datetime(2024, 1, 1, h) for h in (0, 8, 19, 23)],
        "n": [7, -7, 246, None],
    })
    ours = {
        "lower": col("s").lower(), "upper": col("s").upper(), "hour": col("t").hour(),
        "cs": col("s").count_substring("c"), "mod": col("n") % 123,
        "rx": col("u").regex_extract("(&|^)channel_id=([^&]*)", 2),
        "dir": col("u").split_index("/", 3),
        "case": if_else(col("t").hour() >= 8, "day", if_else(col("n") > 0, "pos", "other")),
    }
    sql = """SELECT lower(s) AS lower, upper(s) AS upper, hour(t) AS hour,
                    length(s) - length(replace(s, 'c', '')) AS cs, n % 123 AS mod,
                    NULLIF(regexp_extract(u, '(&|^)channel_id=([^&]*)', 2), '') AS rx,
                    NULLIF(split_part(u, '/', 4), '') AS dir,
                    CASE WHEN hour(t) >= 8 THEN 'day' WHEN n > 0 THEN 'pos'
                         ELSE 'other' END AS "case"
             FROM tbl"""
    con = duckdb.connect()
    con.register("tbl", table)
    expected = con.sql(sql).to_arrow_table()
    for name, expr in ours.items():
        assert expr.evaluate(table).to_pylist() == expected[name].to_pylist(), name
        # the same as a pyarrow expression (what a Parquet scan is given)
        projected = ds.dataset(table).to_table(columns={name: expr.to_pyarrow()})
        assert projected[name].to_pylist() == expected[name].to_pylist(), name


def test_regex_extract_names_a_group_that_exists():
    with pytest.raises(ExprError, match="group 3 does not exist"):
        col("u").regex_extract("(a)(b)", 3)
