"""LocalRunner: same rows whatever the batch size or thread count; metrics account for rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from tests.oracle import assert_balanced, assert_same_rows, duck

REFERENCE = pa.table({"k": pa.array([0, 2, 4, 6, 8], pa.int64()),
                      "label": ["zero", "two", "four", "six", "eight"]})


@st.composite
def tables(draw) -> pa.Table:
    n = draw(st.integers(0, 200))
    keys = draw(st.lists(st.one_of(st.none(), st.integers(-1, 9)), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.none(), st.integers(-50, 50)), min_size=n, max_size=n))
    return pa.table({"k": pa.array(keys, pa.int64()), "v": pa.array(values, pa.int64()),
                     "row": pa.array(np.arange(n), pa.int64())})


@settings(max_examples=60, deadline=None)
@given(table=tables(), batch_size=st.integers(1, 250), threads=st.sampled_from([1, 2]),
       how=st.sampled_from(["inner", "left"]))
def test_batch_size_and_threads_do_not_change_rows(table, batch_size, threads, how):
    result = (
        sl.Stream.from_table(table, batch_size=batch_size)
        .filter(sl.col("v") > -20)
        .enrich(sl.Table(REFERENCE, key="k"), how=how)
        .with_columns(w=sl.col("v") * 2)
        .run(sl.LocalRunner(threads=threads))
    )
    expected = duck(
        f"SELECT t.k, t.v, t.row, r.label, t.v * 2 AS w FROM t {how.upper()} JOIN r "
        "ON t.k = r.k WHERE t.v > -20",
        t=table, r=REFERENCE)
    assert_same_rows(result.table, expected)
    assert_balanced(result.operator_metrics)


def test_output_order_follows_input_order_with_threads():
    table = pa.table({"i": np.arange(100_000)})
    out = sl.Stream.from_table(table, batch_size=1_000).filter(sl.col("i") >= 0).run(
        sl.LocalRunner(threads=2))
    assert out.table.column("i").to_numpy().tolist() == list(range(100_000))


def test_metrics_table_and_explain_after_run():
    table = pa.table({"i": np.arange(10)})
    result = sl.Stream.from_table(table, batch_size=4).filter(sl.col("i") > 6).run(
        optimize=False)
    frame = result.metrics
    assert list(frame["rows_in"]) == [10, 10, 3]
    # batches read by the source; the first batch filters to nothing, so the sink sees 2
    assert list(frame["batches_in"]) == [3, 3, 2]
    assert "in=10 out=3" in result.explain()
    assert result.summary()["rows_out"] == 3
    assert "<table" in result._repr_html_()


def test_progress_bar_runs(capsys):
    table = pa.table({"i": np.arange(10)})
    result = sl.Stream.from_table(table, batch_size=3).run(sl.LocalRunner(progress=True))
    assert result.table.num_rows == 10
    assert "rows" in capsys.readouterr().err
