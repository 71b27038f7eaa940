"""Incremental window aggregates against a pandas oracle written here (no lateness: every row
arrives in time), for random data, window shapes, keys, nulls and batch sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from tests.oracle import assert_balanced


def _oracle(frame: pd.DataFrame, size: int, slide: int, keys: list[str]) -> pd.DataFrame:
    """Every (row, window) pair, grouped with pandas: count, sum, mean, min, max, quantiles."""
    per_row = size // slide
    parts = []
    for j in range(per_row):
        part = frame.copy()
        part["window_start"] = (part["t"] // slide - j) * slide
        parts.append(part)
    rows = pd.concat(parts, ignore_index=True)
    groups = rows.groupby(["window_start", *keys], dropna=False)
    out = pd.DataFrame({
        "n": groups.size(),
        "total": groups["v"].sum(min_count=1),
        "avg": groups["v"].mean(),
        "lo": groups["v"].min(),
        "hi": groups["v"].max(),
        "p50": groups["v"].quantile(0.5),
        "p99": groups["v"].quantile(0.99),
        "imax": groups["i"].max(),
        "isum": groups["i"].sum(min_count=1),
    }).reset_index()
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 300), batch_size=st.integers(1, 120),
       shape=st.sampled_from([(10, 10), (10, 5), (9, 3), (4, 1)]),
       keys=st.sampled_from([[], ["k"], ["k", "m"]]))
def test_windows_match_pandas_for_any_data_shape_and_batch_size(seed, n, batch_size, shape,
                                                                keys):
    size, slide = shape
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(-50, 100, n))
    frame = pd.DataFrame({
        "t": t,
        "k": pd.array(rng.choice(["a", "b", None], n), dtype=object),
        "m": pd.array(rng.integers(0, 3, n)),
        "v": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 10, n).round(1)),
        "i": pd.array(rng.integers(-5, 5, n), dtype="Int64"),
    })
    frame.loc[rng.random(n) < 0.1, "i"] = pd.NA
    table = pa.Table.from_pandas(frame, preserve_index=False).cast(pa.schema([
        ("t", pa.int64()), ("k", pa.string()), ("m", pa.int64()), ("v", pa.float64()),
        ("i", pa.int64())]))
    window = sl.tumbling(f"{size}s") if size == slide else sl.hopping(f"{size}s", f"{slide}s")
    result = (sl.Stream.from_table(table, batch_size=batch_size)
              .with_watermark("t", unit="s")
              .window(window).group_by(*keys)
              .agg(n=sl.count(), total=sl.sum("v"), avg=sl.mean("v"), lo=sl.min("v"),
                   hi=sl.max("v"), p50=sl.quantile("v", 0.5), p99=sl.quantile("v", 0.99),
                   imax=sl.max("i"), isum=sl.sum("i"))
              .run())
    assert result.side_outputs["late"].num_rows == 0
    assert_balanced(result.operator_metrics)
    ours = result.table.drop_columns(["window_end", "revision", "is_update"])
    expected = pa.Table.from_pandas(_oracle(frame, size, slide, keys), preserve_index=False)
    # Sums in another order: a group summing to zero may come out as 1e-15.
    sl.assert_same_results(ours, expected.cast(ours.schema), rtol=1e-9, atol=1e-9)
    assert result.table["revision"].to_pylist() == [0] * ours.num_rows


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.integers(20, 500),
       shape=st.sampled_from([(10, 10), (10, 5)]), lateness=st.sampled_from(["0s", "20s"]))
def test_approx_quantiles_are_within_their_relative_error(seed, batch_size, shape, lateness):
    """Against numpy's lower quantile per group (the sketch's definition), with keys that
    keep appearing (slot renumbering) and, with lateness, updates."""
    size, slide = shape
    rng = np.random.default_rng(seed)
    n = 600
    t = np.sort(rng.integers(0, 200, n)) + rng.integers(-15, 15, n)
    frame = pd.DataFrame({"t": t, "k": rng.integers(0, 3 + n // 10, n) * (t // 20),
                          "v": rng.lognormal(2, 2, n) * rng.choice([-1, 1], n)})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    window = sl.tumbling(f"{size}s") if size == slide else sl.hopping(f"{size}s", f"{slide}s")
    result = (sl.Stream.from_table(table, batch_size=batch_size)
              .with_watermark("t", unit="s", out_of_orderness="5s", allowed_lateness=lateness)
              .window(window).group_by("k")
              .agg(n=sl.count(), p50=sl.approx_quantile("v", 0.5),
                   p99=sl.approx_quantile("v", 0.99, relative_error=0.02))
              .run())
    assert_balanced(result.operator_metrics)
    out = result.table.to_pandas()
    # The last revision of each group holds every row that reached it.
    final = out.sort_values("revision").groupby(["window_start", "k"]).tail(1)
    late = result.side_outputs["late"].to_pandas()
    late_rows = set(zip(late["t"], late["k"], late["v"], late["window_start"], strict=True))
    checked = 0
    for row in final.itertuples():
        start = row.window_start
        members = frame[(frame["k"] == row.k) & (frame["t"] >= start)
                        & (frame["t"] < start + size)]
        values = np.array([v for t_, k_, v in zip(members["t"], members["k"], members["v"],
                                                   strict=True)
                           if (t_, k_, v, start) not in late_rows])
        assert row.n == len(values)
        for q, alpha, got in ((0.5, 0.01, row.p50), (0.99, 0.02, row.p99)):
            exact = np.quantile(values, q, method="lower")
            assert abs(got - exact) <= alpha * abs(exact) * (1 + 1e-9), (q, got, exact)
        checked += 1
    assert checked == len(final) > 0
