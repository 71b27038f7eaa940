"""Event-time windows against DuckDB, and lateness against a per-row oracle written here."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from sabot_lab.datasets import flights
from tests.oracle import assert_balanced, assert_same_rows, duck

AGGS = dict(n=sl.count(), total=sl.sum("v"), avg=sl.mean("v"), lo=sl.min("v"), hi=sl.max("v"),
            p95=sl.quantile("v", 0.95))
AGG_SQL = ("count(*) AS n, sum(v) AS total, avg(v) AS avg, min(v) AS lo, max(v) AS hi, "
           "quantile_cont(v, 0.95) AS p95")


def _events(n: int = 5_000, seed: int = 1, keys: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 3_600, n))
    v = rng.normal(100, 30, n).round(2)
    return pa.table({
        "t": pa.array(t, pa.int64()),
        "k": pa.array(rng.choice([f"key{i}" for i in range(keys)], n)),
        "v": pa.array(v, mask=rng.random(n) < 0.05),
    })


def _window_rows(result: sl.Result) -> pa.Table:
    return result.table.drop_columns(["window_end", "revision", "is_update"])


@pytest.mark.parametrize("batch_size", [97, 5_000])
def test_tumbling_by_key_equals_sql(batch_size):
    events = _events()
    result = (sl.Stream.from_table(events, batch_size=batch_size)
              .with_watermark("t", unit="s").window(sl.tumbling("5min"))
              .group_by("k").agg(**AGGS).run())
    expected = duck(f"SELECT (t // 300) * 300 AS window_start, k, {AGG_SQL} FROM e "
                    "GROUP BY ALL", e=events)
    assert_same_rows(_window_rows(result), expected)
    assert not result.table.column("is_update").to_pylist().count(True)
    assert (pc.subtract(result.table["window_end"], result.table["window_start"])
            .to_pylist() == [300] * result.table.num_rows)
    assert_balanced(result.operator_metrics)


def test_hopping_global_windows_equal_sql():
    events = _events(seed=2)
    result = (sl.Stream.from_table(events, batch_size=1_000)
              .with_watermark("t", unit="s").window(sl.hopping("10min", "5min"))
              .agg(**AGGS).run())
    expected = duck(
        f"SELECT window_start, {AGG_SQL} FROM (SELECT (t // 300) * 300 - j * 300 AS "
        "window_start, v FROM e, (VALUES (0), (1)) AS js(j)) GROUP BY ALL", e=events)
    assert_same_rows(_window_rows(result), expected)
    assert_balanced(result.operator_metrics)


def test_flights_hourly_p95_delay_per_origin_equals_sql():
    f = flights()
    result = (sl.Stream.from_table(f, batch_size=1_000)
              .with_watermark("date", max_out_of_orderness="1h").window(sl.tumbling("1h"))
              .group_by("origin").agg(n=sl.count(), p95=sl.quantile("delay", 0.95)).run())
    expected = duck("SELECT time_bucket(INTERVAL 1 hour, date) AS window_start, origin, "
                    "count(*) AS n, quantile_cont(delay, 0.95) AS p95 FROM f GROUP BY ALL", f=f)
    expected = expected.set_column(0, "window_start", expected["window_start"].cast(
        pa.timestamp("s")))
    assert_same_rows(_window_rows(result), expected)
    assert result.side_outputs["late"].num_rows == 0


def _shuffle_within(events: pa.Table, bound: int, seed: int) -> pa.Table:
    """Disorder every row by less than ``bound`` seconds of event time."""
    rng = np.random.default_rng(seed)
    jitter = events["t"].to_numpy() + rng.uniform(0, bound - 1, events.num_rows)
    return events.take(np.argsort(jitter, kind="stable"))


def test_disorder_within_the_bound_changes_nothing():
    events = _events(seed=3)
    disordered = _shuffle_within(events, bound=30, seed=4)
    assert not disordered["t"].equals(events["t"])

    def run(table: pa.Table) -> sl.Result:
        return (sl.Stream.from_table(table, batch_size=333)
                .with_watermark("t", unit="s", max_out_of_orderness="30s")
                .window(sl.tumbling("5min")).group_by("k").agg(**AGGS).run())

    ordered, shuffled = run(events), run(disordered)
    assert_same_rows(shuffled.table, ordered.table)
    assert shuffled.side_outputs["late"].num_rows == 0


def _oracle_lateness(t: np.ndarray, bound: int, size: int, lateness: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, in arrival order: is it late (beyond lateness), is it an update?"""
    late, update = np.zeros(len(t), bool), np.zeros(len(t), bool)
    running = None
    for i, ti in enumerate(t.tolist()):
        wm = None if running is None else running - bound
        end = (ti // size) * size + size
        if wm is not None and end + lateness <= wm:
            late[i] = True
        elif wm is not None and end <= wm:
            update[i] = True
        running = ti if running is None else max(running, ti)
    return late, update


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.integers(1, 400),
       lateness=st.sampled_from([0, 20, 90]))
def test_late_rows_and_updates_match_the_oracle_for_any_batch_size(seed, batch_size, lateness):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 900, 300))
    t = t[np.argsort(t + rng.uniform(0, 120, len(t)), kind="stable")]  # disorder up to 2 min
    events = pa.table({"t": t, "v": np.arange(len(t), dtype=np.float64)})
    result = (sl.Stream.from_table(events, batch_size=batch_size)
              .with_watermark("t", unit="s", max_out_of_orderness="30s",
                              allowed_lateness=f"{lateness}s")
              .window(sl.tumbling("1min")).agg(n=sl.count(), total=sl.sum("v")).run())
    late, update = _oracle_lateness(t, bound=30, size=60, lateness=lateness)
    side = result.side_outputs["late"]
    assert side.num_rows == late.sum()
    if side.num_rows:
        assert sorted(side["v"].to_pylist()) == sorted(events["v"].to_numpy()[late].tolist())
        assert pc.min(side["late_by"]).as_py() >= lateness
    table = result.table
    assert (pc.sum(table["is_update"]).as_py() or 0) == update.sum()
    # The last revision of every window counts every row that was not late.
    final = table.group_by("window_start").aggregate([("revision", "max")])
    last = table.join(final, ["window_start"]).filter(
        pc.equal(pc.field("revision"), pc.field("revision_max")))
    assert pc.sum(last["n"]).as_py() == len(t) - late.sum()
    assert_balanced(result.operator_metrics)


def test_update_within_allowed_lateness_is_a_new_revision():
    events = pa.table({"t": [0, 10, 100, 20, 30, 200], "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    result = (sl.Stream.from_table(events, batch_size=1)
              .with_watermark("t", unit="s", allowed_lateness="1min")
              .window(sl.tumbling("1min")).agg(n=sl.count(), total=sl.sum("v")).run())
    first = result.table.filter(pc.equal(result.table["window_start"], 0)).to_pylist()
    assert [(r["revision"], r["is_update"], r["n"], r["total"]) for r in first] == [
        (0, False, 2, 3.0), (1, True, 3, 7.0), (2, True, 4, 12.0)]
    assert result.side_outputs["late"].num_rows == 0


def test_future_skew_guard_and_null_times_go_to_rejected():
    t = pa.array([0, 5, 10 * 86_400, 20, 70, None, 130])  # a bad clock: ten days ahead
    events = pa.table({"t": t, "v": pa.array(range(7), pa.float64())})
    stream = sl.Stream.from_table(events, batch_size=2).with_watermark(
        "t", unit="s", max_out_of_orderness="5s", max_future_skew="1h")
    result = stream.window(sl.tumbling("1min")).agg(n=sl.count()).run()
    rejected = result.side_outputs["rejected"]
    assert rejected["t"].to_pylist() == [864_000, None]
    assert rejected["reason"].to_pylist() == [
        "more than 1h ahead of every earlier row and of the row before it", "null event time"]
    assert result.table.select(["window_start", "n"]).to_pylist() == [
        {"window_start": 0, "n": 3}, {"window_start": 60, "n": 1}, {"window_start": 120, "n": 1}]
    unguarded = sl.Stream.from_table(events.filter(pc.is_valid(events["t"])), batch_size=2) \
        .with_watermark("t", unit="s", max_out_of_orderness="5s") \
        .window(sl.tumbling("1min")).agg(n=sl.count()).run()
    assert unguarded.side_outputs["late"].num_rows == 3  # the bad clock made them late
    assert result.operator_metrics[1].watermark == 130 - 5


def test_event_time_errors_are_explained():
    events = pa.table({"t": [1, 2], "s": ["a", "b"]})
    with pytest.raises(sl.PlanError, match="holds integers: say their unit"):
        sl.Stream.from_table(events).with_watermark("t")
    with pytest.raises(sl.PlanError, match="'s' is string; it must be a timestamp"):
        sl.Stream.from_table(events).with_watermark("s")
    with pytest.raises(sl.PlanError, match=r"needs event time: call with_watermark"):
        sl.Stream.from_table(events).window(sl.tumbling("1min")).agg(n=sl.count())
    with pytest.raises(ValueError, match="cannot read duration '5 minutes'"):
        sl.tumbling("5 minutes")
    with pytest.raises(sl.PlanError, match=r"sum\('s'\) needs a numeric column"):
        sl.Stream.from_table(events).with_watermark("t", unit="s").window(
            sl.tumbling("1min")).agg(total=sl.sum("s"))


def test_top_n_per_window_equals_sql():
    events = _events(seed=5, keys=30)
    result = (sl.Stream.from_table(events, batch_size=512)
              .with_watermark("t", unit="s").window(sl.tumbling("10min"))
              .group_by("k").agg(n=sl.count(), total=sl.sum("v")).top_n(3, by="total").run())
    expected = duck(
        "SELECT * FROM (SELECT window_start, k, n, total, CAST(row_number() OVER (PARTITION BY "
        "window_start ORDER BY total DESC NULLS LAST, k) AS INTEGER) AS rank FROM ("
        "SELECT (t // 600) * 600 AS window_start, k, count(*) AS n, sum(v) AS total FROM e "
        "GROUP BY ALL)) WHERE rank <= 3", e=events)
    got = result.table.drop_columns(["window_end", "revision", "is_update"])
    assert_same_rows(got, expected)
    assert_balanced(result.operator_metrics)


def test_a_genuine_jump_in_event_time_is_confirmed_by_the_next_row():
    day = 86_400
    events = pa.table({"t": [0, 60, 120, 3 * day, 3 * day + 60, 3 * day + 120]})
    result = (sl.Stream.from_table(events).with_watermark("t", unit="s", max_future_skew="1d")
              .window(sl.tumbling("1h")).agg(n=sl.count()).run())
    # Only the first row after the gap is taken for a bad clock; the next one confirms it.
    assert result.side_outputs["rejected"]["t"].to_pylist() == [3 * day]
    assert result.table.select(["window_start", "n"]).to_pylist() == [
        {"window_start": 0, "n": 3}, {"window_start": 3 * day, "n": 2}]


def test_first_result_of_a_window_seen_only_through_a_late_row_is_revision_zero():
    events = pa.table({"t": [1, 25, 15]})
    result = (sl.Stream.from_table(events, batch_size=1)
              .with_watermark("t", unit="s", allowed_lateness="10s")
              .window(sl.tumbling("10s")).agg(n=sl.count()).run())
    rows = result.table.select(["window_start", "n", "revision", "is_update"]).to_pylist()
    assert {"window_start": 10, "n": 1, "revision": 0, "is_update": False} in rows


def test_late_side_output_has_a_duration_and_is_there_when_empty():
    t = pa.array([0, 61_000, 1_000], pa.timestamp("ms"))
    result = (sl.Stream.from_table(pa.table({"t": t}), batch_size=1).with_watermark("t")
              .window(sl.tumbling("1min")).agg(n=sl.count()).run())
    late = result.side_outputs["late"]
    assert late.schema.field("late_by").type == pa.duration("ms")
    assert late["late_by"].to_pylist()[0].total_seconds() == 1
    assert result.side_outputs["rejected"].num_rows == 0


def test_top_n_breaks_ties_by_key_value_also_for_dictionary_keys():
    ts = pa.array([0, 1000, 2000, 3000], pa.timestamp("ms"))
    plain = pa.table({"ts": ts, "state": ["FL", "AZ", "FL", "AZ"]})
    encoded = plain.set_column(1, "state", plain["state"].combine_chunks().dictionary_encode())

    def top1(table: pa.Table) -> list:
        return (sl.Stream.from_table(table).with_watermark("ts").window(sl.tumbling("1h"))
                .group_by("state").agg(n=sl.count()).top_n(1, by="n")).run().table[
            "state"].to_pylist()

    assert top1(plain) == top1(encoded) == ["AZ"]


def test_a_stream_displays_as_its_plan_picture():
    bundle = sl.Stream.from_table(pa.table({"a": [1]})).filter(sl.col("a") > 0)\
        ._repr_mimebundle_()
    assert bundle["image/svg+xml"].startswith("<svg") and "Filter" in bundle["text/plain"]
