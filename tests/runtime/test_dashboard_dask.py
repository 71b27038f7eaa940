"""The live dashboard on a DaskRunner: the cluster's link, partitions as they come back."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.ops.base import COUNTERS
from sabot_lab.runtime.dask import DaskRunner

pytest.importorskip("distributed")


class Recording(sl.Dashboard):
    """Keeps what the runner reported before the final counters replaced it."""

    def partition_done(self, metrics, rows_out, done, total):
        super().partition_done(metrics, rows_out, done, total)
        self.progress.append((done, total))

    def finish(self, metrics=None, failed=False):
        self.live = [{name: getattr(m, name) for name in ("op_id", *COUNTERS) if name != "seconds"}
                     for m in self.metrics]
        super().finish(metrics, failed)


def test_dask_run_shows_link_and_partitions(runner):
    table = pa.table({"a": list(range(10_000)), "b": [i % 7 for i in range(10_000)]})
    job = sl.Stream.from_table(table, batch_size=500).filter(sl.col("b") < 3)
    live = Recording(widgets=False)
    live.progress = []
    result = job.run(runner, dashboard=live)

    partitions = len(result.execution.tasks)
    assert partitions > 1
    assert live.link == runner.dashboard_link and live.runner == "dask"
    assert live.progress == [(i, partitions) for i in range(1, partitions + 1)]
    assert live.status == "finished" and live.partitions == (partitions, partitions)
    # The dashboard's own sum of the partitions' counters is the runner's merged result.
    final = [{name: getattr(m, name) for name in ("op_id", *COUNTERS) if name != "seconds"}
             for m in result.operator_metrics]
    assert live.live == final
    kept = sum(1 for b in table["b"].to_pylist() if b < 3)
    assert (live.rows_in, live.rows_out) == (table.num_rows, kept)


class Through(sl.Dashboard):
    """Keeps every report of partitions through a stateful job's keyed stage."""

    def partitions_through(self, done, total):
        super().partitions_through(done, total)
        self.through.append((done, total))


def test_stateful_dask_run_reports_partitions_through_the_keyed_stage(runner):
    table = pa.table({"t": pa.array([i * 1_000 for i in range(20_000)], pa.timestamp("ms")),
                      "k": [i % 13 for i in range(20_000)]})
    job = (sl.Stream.from_table(table, batch_size=1_000).with_watermark("t")
           .window(sl.tumbling("1min")).group_by("k").agg(n=sl.count()))
    live = Through(widgets=False)
    live.through = []
    stateful = DaskRunner(runner.client, partitions_per_worker=4)
    result = job.run(stateful, dashboard=live)

    partitions = len(result.execution.tasks)
    assert partitions == 8
    assert live.through == [(i, partitions) for i in range(1, partitions + 1)]
    assert live.status == "finished" and live.partitions == (partitions, partitions)
    groups = len({(i // 60, i % 13) for i in range(table.num_rows)})  # (minute, key)
    assert live.rows_out == result.table.num_rows == groups
