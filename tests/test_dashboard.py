"""The live dashboard: fed by real local runs, throttled, harmless without a frontend."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import transactions
from sabot_lab.patterns.fraud import FraudRules, detect_fraud
from sabot_lab.runtime.protocol import RunListener

BOUND = 7  # seconds of out-of-orderness


def _events(n: int = 2_000) -> pa.Table:
    """Event times in seconds, shuffled within 5 s of order (never more than the bound)."""
    rng = np.random.default_rng(7)
    t = np.arange(n) + rng.integers(-5, 6, size=n)
    return pa.table({"t": t, "k": np.arange(n) % 3, "v": rng.integers(0, 100, size=n)})


def _windowed(events: pa.Table) -> sl.Stream:
    return (sl.Stream.from_table(events, batch_size=100)
            .with_watermark("t", unit="s", max_out_of_orderness=f"{BOUND}s")
            .window(sl.tumbling("100s")).group_by("k").agg(n=sl.count(), total=sl.sum("v")))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_windowed_run_feeds_the_dashboard():
    events = _events()
    live = sl.Dashboard(widgets=False, min_interval=0)
    result = _windowed(events).run(dashboard=live)

    assert live.status == "finished"
    marks = [mark for _, mark in live.watermarks]
    assert len(marks) > 5  # windows fired all along the run, each time with a newer watermark
    assert all(a < b for a, b in itertools.pairwise(marks))
    assert marks[-1] == int(events["t"].to_numpy().max()) - BOUND
    counters = ["op_id", "rows_in", "rows_out"]
    assert live.frame()[counters].equals(result.metrics[counters])
    assert (live.rows_in, live.rows_out) == (events.num_rows, result.table.num_rows)
    assert live.batches == events.num_rows // 100
    window = live.state["2:windowaggregate"]
    assert max(keys for _, keys, _ in window) > 0  # windows held state while open
    assert window[-1][1] == 0  # and none after the end of the input fired them all


def test_state_size_is_what_the_keyed_operator_reports():
    txns = transactions(5_000, n_accounts=300)
    live = sl.Dashboard(widgets=False)
    job = detect_fraud(sl.Stream.from_table(txns, batch_size=1_000), FraudRules())
    result = job.run(dashboard=live)

    reported = result.metrics.set_index("op_id").loc["1:keyedprocess"]
    shown = live.frame().set_index("op_id").loc["1:keyedprocess"]
    assert shown.state_keys == reported.state_keys == len(result.keyed_state["1:keyedprocess"])
    assert shown.state_bytes == reported.state_bytes
    assert live.watermark is None and live.watermarks == []  # this job has no event time


def test_redraws_are_throttled_and_the_end_is_always_drawn():
    clock = FakeClock()
    job = _windowed(_events(300))
    graph = job.optimized()
    metrics = job.run().operator_metrics
    live = sl.Dashboard(widgets=True, min_interval=0.5, clock=clock)
    live.start(graph, "local")
    for _ in range(40):  # 5 s of updates, one every 1/8 s
        clock.now += 0.125
        live.update(metrics)
    assert live.refreshes == 10  # at 0.5, 1.0, ..., 5.0 s
    live.finish(metrics)
    assert live.refreshes == 11
    header, chart = live.widget.children
    assert bytes(chart.value).startswith(b"\x89PNG")
    assert "<b>rows</b> 300 in / " in header.value
    live.finish(metrics)  # a second end changes nothing
    assert live.refreshes == 11


def test_without_a_frontend_it_records_logs_and_summarizes(caplog):
    live = sl.Dashboard()
    assert not live.widgets  # pytest is no Jupyter kernel
    assert repr(live) == "Dashboard: waiting for a run"
    caplog.set_level(logging.INFO, logger="sabot_lab.dashboard")
    events = _events(500)
    result = _windowed(events).run(sl.LocalRunner(threads=1), dashboard=live)
    assert "no Jupyter frontend, recording only" in caplog.text
    assert live.summary() in caplog.text
    assert live.summary().startswith(
        f"Dashboard: {result.executed_plan.root.children[0].label} on local, finished: "
        f"500 rows in, {result.table.num_rows} out, 5 batches")
    assert f"watermark {int(events['t'].to_numpy().max()) - BOUND:,}" in repr(live)
    bundle = live._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "<table" in bundle["text/html"] and "2:windowaggregate" in bundle["text/html"]


def test_a_dashboard_is_a_run_listener_reset_for_each_run():
    runner = sl.LocalRunner(threads=1)
    live = sl.Dashboard(widgets=False)
    assert isinstance(live, RunListener)
    sl.Stream.from_table(_events(200)).run(runner, dashboard=live)
    assert live.rows_in == 200
    sl.Stream.from_table(_events(300)).run(runner, dashboard=live)
    assert live.rows_in == 300  # the same dashboard, reset for the new run


def test_a_failed_run_is_marked_failed():
    def boom(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise ValueError("boom")

    live = sl.Dashboard(widgets=False)
    stream = sl.Stream.from_table(_events(10)).map_batches(boom, schema=_events(10).schema)
    with pytest.raises(ValueError, match="boom"):
        stream.run(dashboard=live)
    assert live.status == "failed"
