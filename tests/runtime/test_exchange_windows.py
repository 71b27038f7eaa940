"""Windows on the DaskRunner: the same rows and side outputs as a local run, for any
partition count, with lateness, updates, bad clocks, top-N and a killed worker."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.runtime.dask import DaskRunner
from tests.oracle import assert_balanced
from tests.runtime.killing import run_killing_a_worker


def _events(n: int = 60_000, seed: int = 3) -> pa.Table:
    """Ten minutes of events, out of order by up to 3 s, a few far behind, one bad clock."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 600_000, n)) + rng.integers(-3_000, 3_000, n)
    behind = rng.choice(n, 40, replace=False)
    t[behind[:20]] -= 90_000  # within 2 min of lateness: updates
    t[behind[20:]] -= 300_000  # late
    t[n // 2] += 10 * 86_400_000  # a clock days ahead
    return pa.table({"ts": pa.array(t).cast(pa.timestamp("ms")),
                     "user": pa.array(rng.choice(["ann", "bob", "cy", "dee", None], n)),
                     "bytes": pa.array(rng.lognormal(8, 1, n).round()),
                     "status": pa.array(rng.choice([200, 404, 500], n))})


def _jobs(events: pa.Table) -> dict[str, sl.Stream]:
    def stream(lateness: str = "0s") -> sl.Stream:
        return (sl.Stream.from_table(events, batch_size=4_000)
                .with_watermark("ts", max_out_of_orderness="5s", allowed_lateness=lateness,
                                max_future_skew="1h"))
    aggs = dict(n=sl.count(), total=sl.sum("bytes"), p95=sl.quantile("bytes", 0.95),
                hi=sl.max("bytes"))
    return {
        "tumbling-by-user": stream().window(sl.tumbling("1min")).group_by("user").agg(**aggs),
        "hopping-global": stream().window(sl.hopping("2min", "30s")).agg(**aggs),
        "updates-within-lateness": stream("2min").window(sl.tumbling("1min"))
        .group_by("user", "status").agg(**aggs),
        "filter-then-top-n": stream().filter(sl.col("status") != 404)
        .window(sl.tumbling("1min")).group_by("user").agg(n=sl.count()).top_n(2, by="n"),
        "window-then-filter": stream().window(sl.tumbling("1min")).group_by("status")
        .agg(n=sl.count()).filter(sl.col("n") > 100),
        "sessions-by-user": stream().window(sl.session("20s")).group_by("user")
        .agg(**aggs),
        # No bad-clock guard: the agents raise each partition's watermarks themselves.
        "no-skew-filter-then-window": sl.Stream.from_table(events, batch_size=4_000)
        .with_watermark("ts", max_out_of_orderness="5s", allowed_lateness="1min")
        .filter(sl.col("status") != 500).window(sl.tumbling("1min")).group_by("user")
        .agg(**aggs),
        # An operator reading the watermark before the window: the chain of carries.
        "no-skew-watermark-read": sl.Stream.from_table(events, batch_size=4_000)
        .with_watermark("ts", max_out_of_orderness="5s")
        .with_columns(seen=sl.col("_watermark"))
        .window(sl.tumbling("1min")).group_by("user").agg(n=sl.count(), seen=sl.max("seen")),
    }


def _assert_same(dask: sl.Result, local: sl.Result) -> None:
    sl.assert_same_results(dask.table, local.table, rtol=1e-9)
    assert sorted(dask.side_outputs) == sorted(local.side_outputs)
    for name, table in local.side_outputs.items():
        sl.assert_same_results(dask.side_outputs[name], table)


@pytest.mark.parametrize("name", list(_jobs(_events(100))))
@pytest.mark.parametrize("partitions_per_worker", [1, 3])
def test_windows_on_dask_equal_the_local_run(runner, name, partitions_per_worker):
    job = _jobs(_events())[name]
    local = job.run()
    dask = job.run(DaskRunner(runner.client, partitions_per_worker=partitions_per_worker))
    _assert_same(dask, local)
    assert_balanced(dask.operator_metrics)
    assert [m.rows_in for m in dask.operator_metrics] == [
        m.rows_in for m in local.operator_metrics]
    assert dask.side_outputs["rejected"].num_rows == (0 if name.startswith("no-skew") else 1)
    if name == "updates-within-lateness":
        assert pa.compute.sum(local.table["is_update"]).as_py() > 0
        assert local.side_outputs["late"].num_rows > 0


def test_execution_plan_names_the_exchange(runner):
    result = _jobs(_events(5_000))["tumbling-by-user"].run(runner)
    text = repr(result.execution)
    assert "exchange by ['user']" in text and "window" in text


def test_execution_shows_the_agents_and_each_workers_timeline(runner):
    events = _events(40_000)
    result = _jobs(events)["no-skew-filter-then-window"].run(
        DaskRunner(runner.client, partitions_per_worker=3))
    ex = result.execution
    workers = len(runner.client.nthreads())
    svg = ex.to_svg()
    assert svg.count('class="agent"') == len(ex.agents) == workers  # one per worker thread
    assert svg.count('class="bar"') == len(ex.tasks) == 3 * workers
    # Every row the window takes (no bad clock here, status 500 filtered out) came through
    # exactly one agent.
    kept = events.filter(pa.compute.not_equal(events["status"], 500)).num_rows
    assert ex.key_ranges()["rows_in"].sum() == kept
    assert (ex.timeline()["end_s"] >= ex.timeline()["start_s"]).all()
    assert ex.restarts == 0 and {"agents_start_ms", "partitions_ms"} <= set(ex.timings)


def test_windows_survive_a_killed_worker(runner):
    events = _events(400_000, seed=9)
    job = _jobs(events)["updates-within-lateness"]
    expected = job.run()
    killed = run_killing_a_worker(job, DaskRunner(runner.client, partitions_per_worker=8),
                                  "exchange")
    _assert_same(killed, expected)


def test_windows_survive_two_killed_workers(runner):
    events = _events(600_000, seed=11)
    job = _jobs(events)["no-skew-filter-then-window"]
    expected = job.run()
    killed = run_killing_a_worker(job, DaskRunner(runner.client, partitions_per_worker=12),
                                  "exchange", kills=2)
    _assert_same(killed, expected)
    # The second kill may hit the worker that replaced the first one, holding no agent yet:
    # Dask then runs its partition tasks again by itself, without restarting an agent.
    assert killed.execution.restarts >= 1


def test_watermarks_need_a_chain_only_when_something_reads_them():
    from sabot_lab.runtime.exchange import stateful_stages
    from sabot_lab.runtime.stateful_job import watermark_needs_chain

    needs = {name: watermark_needs_chain(stateful_stages(job.graph()))
             for name, job in _jobs(_events(100)).items()}
    assert needs["no-skew-filter-then-window"] is False
    assert needs["no-skew-watermark-read"] is True
    assert needs["tumbling-by-user"] is True  # max_future_skew decides from the carry
    overwritten = (sl.Stream.from_table(_events(100))
                   .with_watermark("ts", max_out_of_orderness="5s")
                   .with_columns(_watermark=sl.col("status"))
                   .window(sl.tumbling("1min")).agg(n=sl.count()))
    assert watermark_needs_chain(stateful_stages(overwritten.graph())) is True
