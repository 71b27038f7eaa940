"""Nexmark queries against the same queries in DuckDB's SQL, on generated events, in order
and out of order within the watermark's bound, locally and on Dask."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets.nexmark import nexmark
from sabot_lab.patterns import nexmark as nx
from tests.oracle import assert_same_rows

QUERIES = ("q0", "q1", "q2", "q5", "q11", "q13", "q14", "q21", "q22")


def _oracle(query: str, bids: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("bid", bids)
    con.register("side_input", nx.side_input())
    return con.sql(nx.SQL[query]).to_arrow_table()


def _job(query: str, bids: pa.Table, batch_size: int, bound: str = "0s") -> sl.Stream:
    source = sl.Stream.from_table(bids, batch_size=batch_size)
    return getattr(nx, query)(source, bound) if query in ("q5", "q11") else \
        getattr(nx, query)(source)


def _comparable(query: str, table: pa.Table, like: pa.Table) -> pa.Table:
    """Our result with the oracle's columns, in its order (windows add revision columns)."""
    return table.select(like.column_names)


@pytest.fixture(scope="module")
def bids() -> pa.Table:
    # 2 events a second: the bids span 8 hours of the day, for q14's times of day
    return nexmark(60_000, seed=3, rate=2)[2]


@pytest.mark.parametrize("batch_size", [1_000, 60_000])
@pytest.mark.parametrize("query", QUERIES)
def test_queries_match_duckdb(bids, query, batch_size):
    expected = _oracle(query, bids)
    assert expected.num_rows > 0
    result = _job(query, bids, batch_size).run()
    assert_same_rows(_comparable(query, result.table, expected), expected)


def test_the_data_exercises_every_branch(bids):
    kinds = set(nx.q14(sl.Stream.from_table(bids)).to_table()["bid_time_type"].to_pylist())
    assert kinds == {"dayTime", "nightTime", "otherTime"}
    ids = nx.q21(sl.Stream.from_table(bids)).to_table()["channel_id"].to_pylist()
    assert {"0", "1", "2", "3"} <= set(ids) and len(set(ids)) > 100


@pytest.mark.parametrize("query", ["q5", "q11"])
def test_windows_on_out_of_order_events_within_the_bound(query):
    # times shuffled within groups of 64 events: at 10K events/s, 6.4 ms of disorder at most
    bids = nexmark(60_000, seed=4, out_of_order=64, events_per_batch=6_400)[2]
    expected = _oracle(query, bids)
    result = _job(query, bids, 2_000, bound="10ms").run()
    assert result.side_outputs["late"].num_rows == 0
    assert_same_rows(_comparable(query, result.table, expected), expected)


def test_queries_on_dask_equal_local(bids):
    pytest.importorskip("distributed")
    with sl.DaskRunner(n_workers=2, threads_per_worker=1) as runner:
        for query in QUERIES:
            local = _job(query, bids, 5_000).run()
            sl.assert_same_results(_job(query, bids, 5_000).run(runner), local)
