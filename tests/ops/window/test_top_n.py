"""Top-N per window with ties, against DuckDB's RANK() over the same windows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from tests.oracle import assert_same_rows, duck


@pytest.mark.parametrize("n", [1, 2, 3])
def test_top_n_with_ties_is_sql_rank(n):
    rng = np.random.default_rng(n)
    events = pa.table({"t": np.sort(rng.integers(0, 600, 3_000)),
                       "page": rng.integers(0, 8, 3_000)})  # few pages: many tied counts
    job = (sl.Stream.from_table(events, batch_size=250).with_watermark("t", unit="s")
           .window(sl.tumbling("1min")).group_by("page").agg(hits=sl.count())
           .top_n(n, by="hits", with_ties=True))
    got = job.run().table.select(["window_start", "page", "hits", "rank"])
    expected = duck(f"""
        SELECT to_timestamp(w * 60) AS window_start, page, hits, rnk AS rank FROM (
            SELECT t // 60 AS w, page, count(*) AS hits,
                   rank() OVER (PARTITION BY t // 60 ORDER BY count(*) DESC) AS rnk
            FROM e GROUP BY t // 60, page) WHERE rnk <= {n}""", e=events)
    expected = expected.set_column(0, "window_start",
                                   expected["window_start"].cast(pa.timestamp("s")))
    got = got.set_column(0, "window_start", got["window_start"].cast(pa.timestamp("s")))
    assert_same_rows(got, expected)
    assert got.num_rows >= 10 * n  # 10 windows, each at least n rows
    if n > 1:  # with this many tied counts, some window keeps more than n
        assert got.num_rows > 10 * n
