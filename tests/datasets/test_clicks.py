"""Tests of the synthetic clickstream, checked with independent numpy/pandas/duckdb code."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot_lab.datasets import click_batches, clicks, clicks_batch
from sabot_lab.datasets.clicks import CLICKS_SCHEMA, PATHS

CLICKS_TYPES = {
    "event_time": pa.timestamp("ms"),
    "user_id": pa.int32(),
    "path": pa.dictionary(pa.int32(), pa.string()),
    "status": pa.int16(),
    "bytes": pa.int64(),
    "latency_ms": pa.float64(),
}
N = 500_000
MAX_DELAY_MS = 10_000
LATE_BY_MS = 300_000


def ms(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    return table["event_time"].to_numpy().astype(np.int64)


def bound_violations(event_ms: np.ndarray, max_delay_ms: int) -> np.ndarray:
    """Boolean mask: row is more than max_delay behind the max event time of earlier rows."""
    violations = np.zeros(len(event_ms), dtype=bool)
    earlier_max = np.maximum.accumulate(event_ms)[:-1]
    violations[1:] = event_ms[1:] < earlier_max - max_delay_ms
    return violations


@pytest.fixture(scope="module")
def stream() -> pa.Table:
    return clicks(N)


@pytest.fixture(scope="module")
def on_time() -> pa.Table:
    """The same stream without late rows (same seed: only the late rows' event_time differs)."""
    return clicks(N, late_fraction=0.0)


def test_schema(stream: pa.Table) -> None:
    assert stream.num_rows == N
    assert dict(zip(stream.schema.names, stream.schema.types, strict=True)) == CLICKS_TYPES
    assert stream.schema.equals(CLICKS_SCHEMA)
    assert stream["event_time"].num_chunks == math.ceil(N / 65_536)
    assert all(stream[c].null_count == 0 for c in stream.column_names)


def test_deterministic() -> None:
    a = clicks(50_000, batch_size=10_000, seed=3)
    assert clicks(50_000, batch_size=10_000, seed=3).equals(a)
    b = clicks(50_000, batch_size=10_000, seed=4)
    for name in ("event_time", "user_id", "latency_ms"):
        assert not b[name].equals(a[name])


def test_equals_concatenated_batches() -> None:
    n, rows = 23_456, 5_000
    batches = [clicks_batch(b, rows, seed=3) for b in range(4)]
    batches.append(clicks_batch(4, n - 4 * rows, seed=3, start_id=4 * rows))
    expected = pa.Table.from_batches(batches)
    assert clicks(n, seed=3, batch_size=rows).equals(expected)
    assert [b.num_rows for b in click_batches(n, seed=3, batch_size=rows)] == [5_000] * 4 + [3_456]


def test_batches_independent() -> None:
    rows = 4_096
    # batch 5 made alone, in any order, equals batch 5 of longer and shorter streams
    alone = clicks_batch(5, rows)
    for n in (6 * rows, 20 * rows):
        assert clicks(n, batch_size=rows).to_batches()[5].equals(alone)
    later_first = [clicks_batch(b, rows) for b in (7, 6, 5)]
    assert later_first[2].equals(alone)
    # each batch covers its own slice of true time: batch b + 1 starts 2.048 s after batch b
    starts = [ms(clicks_batch(b, rows, late_fraction=0.0, max_delay=0)).min() for b in (5, 6)]
    assert starts[1] - starts[0] == pytest.approx(rows / 2, abs=1)


def test_no_late_rows_bound_holds_and_disorder_is_real(on_time: pa.Table) -> None:
    t = ms(on_time)
    assert not bound_violations(t, MAX_DELAY_MS).any()
    lag = np.maximum.accumulate(t) - t
    assert lag.max() > 0.95 * MAX_DELAY_MS  # disorder close to the bound
    assert (np.diff(t) < 0).mean() > 0.3  # many rows out of order
    # pandas cummax as a second oracle
    s = pd.Series(t)
    assert ((s.cummax() - s) <= MAX_DELAY_MS).all()


def test_late_rows(stream: pa.Table, on_time: pa.Table) -> None:
    with_late, without = ms(stream), ms(on_time)
    late = with_late != without
    # only event_time of late rows changes; everything else is identical
    assert stream.drop_columns(["event_time"]).equals(on_time.drop_columns(["event_time"]))
    frac = late.mean()
    assert 0.0008 < frac < 0.0012, frac
    # a late row arrives late_by after its event_time: late_by - delay before the true time
    back = without[late] - with_late[late]
    assert back.min() >= LATE_BY_MS - MAX_DELAY_MS and back.max() <= LATE_BY_MS
    # the guarantee: rows that are not late are within max_delay of every earlier row
    violations = bound_violations(with_late, MAX_DELAY_MS)
    assert not violations[~late].any()
    # and every late row (after the first one) is far behind: the oracle finds all of them
    np.testing.assert_array_equal(violations, late)
    earlier_max = np.maximum.accumulate(with_late)[:-1]
    lag = earlier_max[late[1:]] - with_late[1:][late[1:]]
    assert lag.min() > LATE_BY_MS - 2 * MAX_DELAY_MS


def test_columns_with_duckdb(stream: pa.Table) -> None:
    con = duckdb.connect()
    con.register("s", stream)
    [(users, top_share, paths, ok, not_found, error, min_bytes, p50)] = con.sql(
        """
        select count(distinct user_id),
               count(*) filter (where user_id = 1) / count(*),
               count(distinct path),
               avg((status = 200)::int), avg((status = 404)::int), avg((status = 500)::int),
               min(bytes), median(latency_ms)
        from s
        """
    ).fetchall()
    assert users == 1_000
    assert top_share == pytest.approx(math.log(2) / math.log(1_001), abs=0.003)
    assert 150 <= paths <= len(PATHS) == 200
    assert ok == pytest.approx(0.955, abs=0.003)
    assert not_found == pytest.approx(0.035, abs=0.003)
    assert error == pytest.approx(0.01, abs=0.002)
    assert min_bytes > 0
    assert 30 < p50 < 40
    [(top_path,)] = con.sql(
        "select path from s group by path order by count(*) desc limit 1"
    ).fetchall()
    assert top_path == "/"
    [(slow,)] = con.sql(
        "select median(latency_ms) filter (where status = 500) / "
        "median(latency_ms) filter (where status = 200) from s"
    ).fetchall()
    assert 3 < slow < 5


def test_rate_and_start(on_time: pa.Table) -> None:
    t = pd.Series(on_time["event_time"].to_numpy())
    assert t.min() >= pd.Timestamp("2024-01-01")
    span = (t.max() - t.min()).total_seconds()
    assert span == pytest.approx(N / 2_000, abs=MAX_DELAY_MS / 1_000 + 1)
    aware = clicks_batch(0, 1_000, start="2024-01-01T01:00+01:00", late_fraction=0.0)
    assert aware.equals(clicks_batch(0, 1_000, late_fraction=0.0))


def test_no_delay_means_sorted() -> None:
    t = ms(clicks(100_000, batch_size=8_192, max_delay=0, late_fraction=0.0))
    assert (np.diff(t) >= 0).all()


def test_edge_cases() -> None:
    assert clicks(0).num_rows == 0
    assert clicks(0).schema.equals(CLICKS_SCHEMA)
    assert clicks_batch(0, 0).num_rows == 0
    assert clicks(10, users=1)["user_id"].to_pylist() == [1] * 10
    for kwargs in (
        {"users": 0},
        {"events_per_second": 0},
        {"late_fraction": 1.5},
        {"max_delay": "-1s"},
        {"max_delay": "1us"},
        {"late_by": "5s"},
    ):
        with pytest.raises(ValueError):
            clicks_batch(0, 10, **kwargs)
    clicks_batch(0, 10, late_by="5s", late_fraction=0.0)  # late_by unused: allowed
    with pytest.raises(ValueError):
        clicks_batch(-1, 10)
    with pytest.raises(ValueError):
        clicks(10, batch_size=0)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(0, 3_000),
    batch_size=st.integers(50, 1_000),
    seed=st.integers(0, 2**32),
    max_delay_ms=st.integers(0, 5_000),
    events_per_second=st.sampled_from([10, 500, 2_000, 100_000]),
)
def test_bound_property(
    n: int, batch_size: int, seed: int, max_delay_ms: int, events_per_second: int
) -> None:
    options = {
        "batch_size": batch_size,
        "seed": seed,
        "max_delay": pd.Timedelta(max_delay_ms, "ms"),
        "events_per_second": events_per_second,
        "late_by": pd.Timedelta(max_delay_ms + 1, "ms"),
    }
    with_late = ms(clicks(n, late_fraction=0.05, **options))
    late = with_late != ms(clicks(n, late_fraction=0.0, **options))
    assert not bound_violations(with_late, max_delay_ms)[~late].any()
