"""Session windows against a row-by-row oracle written here, and against DuckDB
(gaps and islands) on in-order data."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from sabot_lab.ops.base import OperatorMetrics, SideOutputs
from sabot_lab.ops.registry import make_operator
from sabot_lab.ops.window.aggregates import PartialAggregates
from tests.oracle import assert_balanced, assert_same_rows, duck

AGGS = dict(n=sl.count(), total=sl.sum("v"), avg=sl.mean("v"), lo=sl.min("v"), hi=sl.max("v"),
            p95=sl.quantile("v", 0.95))
AGG_SQL = ("count(*) AS n, sum(v) AS total, avg(v) AS avg, min(v) AS lo, max(v) AS hi, "
           "quantile_cont(v, 0.95) AS p95")
KEYS = ["a", "b", None, "c", "d"]


# --- the oracle: Flink's rules, one row at a time ---------------------------------------------

def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def _summary(key: object, start: int, end: int, values: list) -> dict:
    present = [x for x in values if x is not None and not math.isnan(x)]
    return {"window_start": start, "window_end": end, "k": key, "n": len(values),
            "total": sum(present) if present else None,
            "avg": sum(present) / len(present) if present else None,
            "lo": min(present) if present else None, "hi": max(present) if present else None,
            "p95": _quantile(present, 0.95)}


def _oracle(t: list[int], k: list, v: list, gap: int, bound: int) -> tuple[list, list]:
    """(sessions, late rows as (row, window_start, window_end, late_by)), rows in arrival
    order, the watermark before each row being the largest earlier time minus ``bound``."""
    open_sessions: dict[object, list[list]] = {}  # key -> [start, end, values]
    emitted, late = [], []
    running = None
    for i, (ti, key, vi) in enumerate(zip(t, k, v, strict=True)):
        w = None if running is None else running - bound
        mine = open_sessions.setdefault(key, [])
        if w is not None:
            emitted += [_summary(key, *s) for s in mine if s[1] <= w]
            mine[:] = [s for s in mine if s[1] > w]
        if w is not None and ti + gap <= w:
            late.append((i, ti, ti + gap, w - (ti + gap)))
        else:
            hit = [s for s in mine if ti < s[1] and ti + gap > s[0]]
            mine[:] = [s for s in mine if not any(s is h for h in hit)]
            mine.append([min([ti] + [s[0] for s in hit]), max([ti + gap] + [s[1] for s in hit]),
                         [vi] + [x for s in hit for x in s[2]]])
        running = ti if running is None else max(running, ti)
    emitted += [_summary(key, *s) for key, mine in open_sessions.items() for s in mine]
    return emitted, late


def _sessions(events: pa.Table, gap: str, bound: str, batch_size: int,
              keys: tuple[str, ...] = ("k",), **options: str) -> sl.Result:
    return (sl.Stream.from_table(events, batch_size=batch_size)
            .with_watermark("t", unit="s", max_out_of_orderness=bound, **options)
            .window(sl.session(gap)).group_by(*keys).agg(**AGGS).run())


def _rows(result: sl.Result) -> pa.Table:
    return result.table.drop_columns(["revision", "is_update"])


# --- against the oracle -----------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 250), data=st.data(),
       gap=st.sampled_from([1, 7, 30, 90]), bound=st.sampled_from([0, 10, 45]),
       n_keys=st.integers(1, 5), disorder=st.sampled_from([0, 20, 120]))
def test_sessions_and_late_rows_match_the_oracle_for_any_batch_size(
        seed, n, data, gap, bound, n_keys, disorder):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 900, n))
    t = t[np.argsort(t + rng.uniform(0, disorder + 1e-9, n), kind="stable")].tolist()
    k = [KEYS[i] for i in rng.integers(0, n_keys, n)]
    v = [None if r < 0.1 else (math.nan if r < 0.15 else round(x, 1))
         for r, x in zip(rng.random(n), rng.normal(50, 20, n), strict=True)]
    events = pa.table({"t": t, "k": pa.array(k, pa.string()), "v": pa.array(v, pa.float64()),
                       "row": range(n)})
    batch_size = data.draw(st.integers(1, n), label="batch_size")
    result = _sessions(events, f"{gap}s", f"{bound}s", batch_size)
    sessions, late = _oracle(t, k, v, gap, bound)
    expected = pa.Table.from_pylist(sessions, schema=_rows(result).schema)
    assert_same_rows(_rows(result), expected)
    side = result.side_outputs["late"]
    assert sorted(zip(*(side[c].to_pylist() for c in (
        "row", "t", "window_end", "late_by")), strict=True)) == [
        (i, ti, end, by) for i, ti, end, by in late]
    assert side["window_start"].to_pylist() == side["t"].to_pylist()
    assert_balanced(result.operator_metrics)


# --- hand-checked examples --------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_row_between_two_sessions_merges_them(batch_size):
    events = pa.table({"t": [0, 50, 25], "k": ["a"] * 3, "v": [1.0, 2.0, 4.0]})
    result = _sessions(events, "30s", "60s", batch_size)
    assert result.table.select(["window_start", "window_end", "n", "total", "lo", "hi"]
                               ).to_pylist() == [
        {"window_start": 0, "window_end": 80, "n": 3, "total": 7.0, "lo": 1.0, "hi": 4.0}]
    assert result.table["p95"].to_pylist() == pytest.approx([3.8])


def test_a_row_after_its_session_closed_starts_a_new_one():
    # b@45 moves the watermark to 35, which closes a's [0, 30) before a@20 arrives: a@20
    # would have joined it, but a closed session never reopens.
    events = pa.table({"t": [0, 45, 20], "k": ["a", "b", "a"], "v": [1.0, 2.0, 3.0]})
    result = _sessions(events, "30s", "10s", 1)
    assert result.table.select(["window_start", "window_end", "k", "n"]).to_pylist() == [
        {"window_start": 0, "window_end": 30, "k": "a", "n": 1},
        {"window_start": 20, "window_end": 50, "k": "a", "n": 1},
        {"window_start": 45, "window_end": 75, "k": "b", "n": 1}]
    assert result.side_outputs["late"].num_rows == 0


def test_a_late_row_goes_to_the_side_output_with_its_proto_window():
    t = pa.array([0, 100_000, 5_000], pa.timestamp("ms"))
    events = pa.table({"t": t, "k": ["a"] * 3, "v": [1.0, 2.0, 3.0]})
    result = (sl.Stream.from_table(events, batch_size=1)
              .with_watermark("t", max_out_of_orderness="10s")
              .window(sl.session("30s")).group_by("k").agg(n=sl.count()).run())
    late = result.side_outputs["late"]
    assert late.schema.field("late_by").type == pa.duration("ms")
    assert late.schema.field("window_start").type == pa.timestamp("ms")
    row = late.to_pylist()[0]
    assert (row["v"], row["late_by"].total_seconds()) == (3.0, 90 - 35)
    assert (row["window_end"] - row["window_start"]).total_seconds() == 30
    assert result.table["n"].to_pylist() == [1, 1]
    assert result.table.schema.field("window_start").type == pa.timestamp("ms")
    assert_balanced(result.operator_metrics)


def test_sessions_closed_together_come_out_by_start_then_key():
    events = pa.table({"t": [2, 0, 0, 0], "k": ["b", "c", None, "a"], "v": [1.0] * 4})
    result = _sessions(events, "30s", "0s", 4)
    assert result.table.select(["window_start", "k"]).to_pylist() == [
        {"window_start": 0, "k": "a"}, {"window_start": 0, "k": "c"},
        {"window_start": 0, "k": None}, {"window_start": 2, "k": "b"}]
    assert result.table["revision"].to_pylist() == [0] * 4
    assert result.table["is_update"].to_pylist() == [False] * 4


def test_allowed_lateness_and_a_gap_below_the_time_unit_are_refused():
    events = pa.table({"t": [0, 1], "k": ["a", "b"], "v": [1.0, 2.0]})
    with pytest.raises(sl.PlanError, match="allowed lateness is not supported for session"):
        _sessions(events, "30s", "0s", 2, allowed_lateness="1min")
    with pytest.raises(sl.PlanError, match="session gap is below one s"):
        _sessions(events, "500ms", "0s", 2)


def test_a_restored_snapshot_continues_where_the_run_stopped():
    rng = np.random.default_rng(11)
    n = 3_000
    t = np.sort(rng.integers(0, 6_000, n))
    t = t[np.argsort(t + rng.uniform(0, 60, n), kind="stable")].tolist()
    k = [KEYS[i] for i in rng.integers(0, 5, n)]
    v = rng.normal(0, 1, n).tolist()
    events = pa.table({"t": t, "k": pa.array(k, pa.string()), "v": v, "row": range(n)})
    window = (sl.Stream.from_table(events).with_watermark("t", unit="s", max_out_of_orderness="20s")
              .window(sl.session("30s")).group_by("k").agg(**AGGS)).node
    side = SideOutputs()

    def operators() -> list:
        return [make_operator(node, OperatorMetrics("x", node.label), side)
                for node in (window.child, window)]

    def run(ops: list, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
        return [out for b in batches for marked in ops[0].process(b)
                for out in ops[1].process(marked)]

    batches = events.to_batches(max_chunksize=128)
    first = operators()
    emitted = run(first, batches[:10])
    second = operators()
    for before, after in zip(first, second, strict=True):
        after.restore(before.snapshot())
    emitted += run(second, batches[10:]) + second[1].finish()
    sessions, late = _oracle(t, k, v, 30, 20)
    got = pa.Table.from_batches(emitted).drop_columns(["revision", "is_update"])
    assert_same_rows(got, pa.Table.from_pylist(sessions, schema=got.schema))
    assert side.tables()["late"]["row"].to_pylist() == [i for i, *_ in late]


# --- against DuckDB on in-order data ----------------------------------------------------------

def _in_order_events(n: int = 6_000, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    v = rng.normal(100, 30, n).round(2)
    return pa.table({
        "t": pa.array(np.sort(rng.integers(0, 40_000, n)), pa.int64()),
        "k": pa.array(rng.choice(np.array(KEYS, dtype=object), n), pa.string()),
        "v": pa.array(v, mask=rng.random(n) < 0.05),
    })


@pytest.mark.parametrize(("batch_size", "keys"), [(97, ("k",)), (6_000, ("k",)), (500, ())])
def test_in_order_sessions_equal_gaps_and_islands_sql(batch_size, keys):
    events = _in_order_events()
    result = _sessions(events, "60s", "0s", batch_size, keys)
    by = "PARTITION BY k" if keys else ""
    group = ", k" if keys else ""
    expected = duck(
        f"WITH marked AS (SELECT *, CASE WHEN t - lag(t) OVER ({by} ORDER BY t) < 60 "
        f"THEN 0 ELSE 1 END AS fresh FROM e), "
        f"numbered AS (SELECT *, sum(fresh) OVER ({by} ORDER BY t ROWS UNBOUNDED PRECEDING) "
        f"AS session FROM marked) "
        f"SELECT min(t) AS window_start, max(t) + 60 AS window_end{group}, {AGG_SQL} "
        f"FROM numbered GROUP BY session{group}", e=events)
    assert_same_rows(_rows(result), expected)
    assert result.side_outputs["late"].num_rows == 0
    assert_balanced(result.operator_metrics)


# --- PartialAggregates.merge_keys / clear_keys ------------------------------------------------

def test_merge_and_clear_slots_equal_aggregating_the_relabelled_rows():
    rng = np.random.default_rng(7)
    n, slots = 2_000, 40
    values = pa.array(rng.normal(0, 10, n), mask=rng.random(n) < 0.1)
    ids = rng.integers(0, slots, n)
    partials = PartialAggregates(tuple(AGGS.items()), pa.schema([("v", pa.float64())]))
    row = partials.new_row()
    partials.ensure_keys(slots)
    half = n // 2
    partials.accumulate(row, ids[:half], pa.record_batch({"v": values[:half]}))
    into, source = np.array([0, 0, 5, 9]), np.array([1, 2, 6, 30])
    partials.merge_keys(row, into, source)
    partials.accumulate(row, ids[half:], pa.record_batch({"v": values[half:]}))
    partials.clear_keys(row, np.array([3, 9]))
    # The oracle: rows of a merged slot counted in its target (those of the first half),
    # cleared slots gone.
    relabel = dict(zip(source.tolist(), into.tolist(), strict=True))
    final = [relabel.get(i, i) if r < half else i for r, i in enumerate(ids.tolist())]
    wanted = sorted(set(final) - {3, 9})
    got = partials.arrays(row, np.array(wanted))
    plain = values.to_pylist()
    for j, slot in enumerate(wanted):
        mine = [x for x, s in zip(plain, final, strict=True) if s == slot]
        expected = _summary(None, 0, 0, mine)
        for name in AGGS:
            assert got[name][j].as_py() == pytest.approx(expected[name]), (slot, name)
    assert set(partials.present(row).tolist()) == set(wanted)


# --- bad-input regressions --------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_bridged_session_keeps_the_sketch_of_the_session_it_absorbed(batch_size):
    """Merging sessions used to drop the absorbed session's sketch (and leave it in the slot
    for the next session to reuse). The row at 10 s bridges [0, 15) and [20, 35)."""
    events = pa.table({"t": [0, 20, 10, 100], "v": [1.0, 100.0, 10.0, None]})
    result = (sl.Stream.from_table(events, batch_size=batch_size)
              .with_watermark("t", unit="s", max_out_of_orderness="30s")
              .window(sl.session("15s"))
              .agg(n=sl.count(), lo=sl.approx_quantile("v", 0.0),
                   mid=sl.approx_quantile("v", 0.5), hi=sl.approx_quantile("v", 1.0))
              .run())
    rows = result.table.select(["window_start", "n", "lo", "mid", "hi"]).to_pylist()
    # Oracle: the lower quantiles of [1, 10, 100] (the extremes exact, the median within 1 %).
    assert [r["window_start"] for r in rows] == [0, 100]
    first, second = rows
    assert (first["n"], first["lo"], first["hi"]) == (3, 1.0, 100.0)
    assert first["mid"] == pytest.approx(10.0, rel=0.01)
    assert (second["n"], second["lo"], second["mid"], second["hi"]) == (1, None, None, None)


def test_an_integer_sum_that_overflows_when_sessions_merge_is_refused():
    """Merged sums used to wrap around silently (np.add.at)."""
    events = pa.table({"t": [0, 20, 10], "v": [2**63 - 1, 1, 0]})
    job = (sl.Stream.from_table(events, batch_size=1)
           .with_watermark("t", unit="s", max_out_of_orderness="30s").window(sl.session("15s")))
    with pytest.raises(OverflowError, match="'v'"):
        job.agg(total=sl.sum("v")).run()
    hi = job.agg(hi=sl.max("v"), n=sl.count()).run().table.select(["hi", "n"]).to_pylist()
    assert hi == [{"hi": 2**63 - 1, "n": 3}]


def test_merge_and_clear_slots_keep_approx_quantiles_with_their_rows():
    rng = np.random.default_rng(11)
    n, slots = 3_000, 40
    values = rng.lognormal(0, 2, n)
    ids = rng.integers(0, slots, n)
    partials = PartialAggregates((("p90", sl.approx_quantile("v", 0.9)),),
                                 pa.schema([("v", pa.float64())]))
    row = partials.new_row()
    partials.ensure_keys(slots)
    third = n // 3
    partials.accumulate(row, ids[:third], pa.record_batch({"v": values[:third]}))
    into, source = np.array([0, 0, 5, 9]), np.array([1, 2, 6, 30])
    partials.merge_keys(row, into, source)
    partials.accumulate(row, ids[third:2 * third], pa.record_batch({"v": values[third:2 * third]}))
    partials.clear_keys(row, np.array([3, 9]))
    partials.accumulate(row, ids[2 * third:], pa.record_batch({"v": values[2 * third:]}))
    # The oracle: a row of the first third counts in its slot's merge target; rows of the
    # first two thirds in slots 3 and 9 are forgotten.
    relabel = dict(zip(source.tolist(), into.tolist(), strict=True))
    final = np.array([relabel.get(i, i) if r < third else i for r, i in enumerate(ids.tolist())])
    kept = ~(np.isin(final, [3, 9]) & (np.arange(n) < 2 * third))
    wanted = np.unique(final[kept])
    got = partials.arrays(row, wanted)["p90"].to_pylist()
    for slot, estimate in zip(wanted.tolist(), got, strict=True):
        exact = np.quantile(values[kept & (final == slot)], 0.9, method="lower")
        assert abs(estimate - exact) <= 0.01 * exact * (1 + 1e-9), (slot, estimate, exact)
