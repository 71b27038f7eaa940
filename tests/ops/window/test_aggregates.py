"""Incremental window aggregates against a pandas oracle written here (no lateness: every row
arrives in time), for random data, window shapes, keys, nulls and batch sizes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from tests.oracle import assert_balanced, duck


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
              .with_watermark("t", unit="s", max_out_of_orderness="5s", allowed_lateness=lateness)
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


# --- bad-input regressions --------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 7, 1_000])
def test_uint64_columns_are_aggregated_exactly_past_int64(batch_size):
    """uint64 values above 2**63 - 1 used to raise a raw ArrowInvalid (cast to int64).
    Oracle: pyarrow's hash aggregates."""
    rng = np.random.default_rng(3)
    n = 200
    table = pa.table({
        "t": pa.array(np.sort(rng.integers(0, 60, n))),
        "k": pa.array(rng.integers(0, 3, n)),
        "big": pa.array(rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
                        mask=rng.random(n) < 0.1),
        "small": pa.array(rng.integers(0, 2**40, n, dtype=np.uint64)),
    })
    result = (sl.Stream.from_table(table, batch_size=batch_size).with_watermark("t", unit="s")
              .window(sl.tumbling("10s")).group_by("k")
              .agg(lo=sl.min("big"), hi=sl.max("big"), total=sl.sum("small"),
                   avg=sl.mean("small"))
              .run())
    assert_balanced(result.operator_metrics)
    assert result.table.schema.field("hi").type == pa.uint64()
    grouped = table.append_column("window_start", pc.multiply(pc.divide(table["t"], 10), 10))
    expected = grouped.group_by(["window_start", "k"]).aggregate(
        [("big", "min"), ("big", "max"), ("small", "sum"), ("small", "mean")])
    got = {(r["window_start"], r["k"]): (r["lo"], r["hi"], r["total"], r["avg"])
           for r in result.table.to_pylist()}
    want = {(r["window_start"], r["k"]): (r["big_min"], r["big_max"], r["small_sum"],
                                          r["small_mean"]) for r in expected.to_pylist()}
    assert got.keys() == want.keys()
    for key, (lo, hi, total, avg) in want.items():
        assert got[key][:3] == (lo, hi, total), key
        assert got[key][3] == pytest.approx(avg, rel=1e-12), key


def test_min_and_max_of_integers_whose_sum_passes_int64():
    """Only a sum or a mean refuses an integer sum beyond int64; min and max are exact."""
    table = pa.table({"t": pa.array([0, 1, 2], pa.timestamp("s")),
                      "v": pa.array([2**63 - 1, 2**63 - 1, -5])})
    job = sl.Stream.from_table(table).with_watermark("t").window(sl.tumbling("1min"))
    result = job.agg(lo=sl.min("v"), hi=sl.max("v")).run()
    assert result.table.select(["lo", "hi"]).to_pylist() == [{"lo": -5, "hi": 2**63 - 1}]
    with pytest.raises(OverflowError, match="'v'"):
        job.agg(total=sl.sum("v")).run()


INFINITE_QUANTILES = [
    ([1.0, math.inf], [0.0, 0.5, 1.0]),
    ([math.inf, math.inf], [0.0, 0.3, 1.0]),
    ([-math.inf, 2.0, 3.0], [0.0, 0.25, 0.5, 1.0]),
    ([-math.inf, -math.inf, 4.0], [0.2, 0.5, 0.9]),
    ([1.0, 2.0, math.inf], [0.25, 0.75]),
    ([-1e308, 1e308], [0.5]),
    ([1e308, 1.7e308], [0.5]),
]


@pytest.mark.parametrize("values,qs", INFINITE_QUANTILES)
@pytest.mark.parametrize("late", [False, True], ids=["fired", "updated"])
def test_exact_quantiles_next_to_infinities_equal_duckdb(values, qs, late):
    """Interpolating next to an infinity gave inf * 0 = NaN (a null). ``late``: the last
    value arrives after the window fired, within the allowed lateness, so the final result
    is an update (computed on the per-row path)."""
    n = len(values)
    if late:  # a row at 120 s fires window [0, 60); the last value comes after it
        times, column = [0] * (n - 1) + [120, 0], [*values[:-1], 0.0, values[-1]]
    else:
        times, column = [0] * n, values
    table = pa.table({"t": pa.array(times, pa.timestamp("s")), "v": column})
    aggs = {f"p{i}": sl.quantile("v", q) for i, q in enumerate(qs)}
    result = (sl.Stream.from_table(table, batch_size=1)
              .with_watermark("t", allowed_lateness="10min")
              .window(sl.tumbling("1min")).agg(**aggs).run())
    assert_balanced(result.operator_metrics)
    first = [r for r in result.table.to_pylist() if r["window_start"].timestamp() == 0]
    final = max(first, key=lambda r: r["revision"])
    assert final["revision"] == (1 if late else 0)
    columns = ", ".join(f"quantile_cont(v, {q}) AS p{i}" for i, q in enumerate(qs))
    expected = duck(f"SELECT {columns} FROM v", v=pa.table({"v": values})).to_pylist()[0]
    for name, want in expected.items():
        want = None if math.isnan(want) else want
        assert final[name] == want, (name, final[name], want)
