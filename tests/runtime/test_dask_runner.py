"""DaskRunner: the same rows as a local run, on a real (multi-process) Dask cluster."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sabot_lab as sl
from sabot_lab.datasets import airports, flights, securities, security_versions
from sabot_lab.errors import SchemaMismatchError
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.patterns.enrichment import enrich_quotes, quote_stream
from sabot_lab.plan.nodes import Sink, _Unary
from sabot_lab.runtime.dask import DaskRunner, JobManager, SchedulerUnreachableError
from tests.ops.test_asof import _arriving
from tests.oracle import assert_balanced, assert_same_rows
from tests.runtime.killing import run_killing_a_worker

distributed = pytest.importorskip("distributed")


def _routes() -> pa.Table:
    f = flights()
    pairs = f.select(["origin", "destination"]).group_by(["origin", "destination"]).aggregate(
        [([], "count_all")])
    keep = pairs.take(np.arange(0, pairs.num_rows, 3))
    return keep.select(["origin", "destination"]).append_column(
        "route", pa.array(np.arange(keep.num_rows)))


def _variants() -> dict[str, sl.Stream]:
    f, a, s = flights(), sl.Table(airports(), key="iata"), securities(500)
    quotes = quote_stream(60_000, batch_size=7_000, securities_n=500)
    many = sl.Table(pa.table({"k": [1, 1, 2, 3, 3, 3], "v": range(6)}), key="k", unique=False)
    small = pa.table({"k": pa.array([1, 2, 3, 4, None] * 40), "n": pa.array(range(200))})
    return {
        "int-inner": enrich_quotes(quotes, sl.Table(s, key="instrument_id"), min_price=30.0),
        "int-left-side": enrich_quotes(quotes, sl.Table(s, key="instrument_id"), how="left"),
        "int-unmatched-side": enrich_quotes(quotes, sl.Table(s, key="instrument_id"),
                                            unmatched="side_output"),
        "string-inner": sl.Stream.from_table(f, batch_size=900).enrich(
            a, on={"origin": "iata"}, columns=["state"]),
        "string-left": sl.Stream.from_table(f, batch_size=900).enrich(
            a, on={"destination": "iata"}, how="left"),
        "multi-key": sl.Stream.from_table(f, batch_size=1_234).enrich(
            sl.Table(_routes(), key=["origin", "destination"]), how="left"),
        "one-to-many": sl.Stream.from_table(small, batch_size=7).enrich(many, how="left"),
        "union": sl.Stream.from_table(f.slice(0, 3_000)).union(
            sl.Stream.from_table(f.slice(5_000))).filter(sl.col("delay") > 10),
        "as-of-side": quotes.enrich(
            sl.Table(security_versions(500, 4, days=1), key="instrument_id",
                     valid_from="valid_from"),
            as_of="ts", tolerance="3h", unmatched="side_output"),
        "as-of-versions-stream": quotes.enrich(
            sl.Stream.from_table(_arriving(security_versions(500, 4, days=1), 3_600),
                                 batch_size=64).with_watermark(
                "valid_from", max_out_of_orderness="30min"),
            on={"instrument_id": "instrument_id"}, as_of="ts", unmatched="side_output"),
        "as-of-then-window": quotes.enrich(
            sl.Table(security_versions(500, 4, days=1), key="instrument_id",
                     valid_from="valid_from"), as_of="ts", how="left", columns=["rating"])
        .with_watermark("ts", max_out_of_orderness="1s").window(sl.tumbling("10min"))
        .group_by("rating").agg(n=sl.count(), volume=sl.sum("volume")),
    }


@pytest.mark.parametrize("partitions_per_worker", [1, 2, 3])
@pytest.mark.parametrize("name", list(_variants()))
def test_dask_equals_local(runner, name, partitions_per_worker):
    stream = _variants()[name]
    local = stream.run()
    dask_runner = DaskRunner(runner.client, partitions_per_worker=partitions_per_worker)
    distributed_result = stream.run(dask_runner)
    assert distributed_result.runner == "dask"
    assert_same_rows(distributed_result.table, local.table)
    assert distributed_result.side_outputs.keys() == local.side_outputs.keys()
    for key, side in local.side_outputs.items():
        assert_same_rows(distributed_result.side_outputs[key], side)
    assert_balanced(distributed_result.operator_metrics)
    assert list(distributed_result.metrics["rows_out"]) == list(local.metrics["rows_out"])
    tasks = distributed_result.execution.frame()
    assert tasks["rows_in"].sum() == local.rows_in


def test_parquet_is_read_by_workers_not_shipped_by_the_client(runner, tmp_path):
    path = tmp_path / "flights.parquet"
    pq.write_table(flights(), path, row_group_size=1_000)
    stream = sl.Stream.from_parquet(path).filter(sl.col("distance") > 500).select(
        "origin", "distance")
    manager = JobManager(runner.client, partitions_per_worker=2)
    _, _, scans, _ = manager.plan(stream.optimized())
    parts = scans[0]
    assert len(parts) == 4 and all(p.pieces for p in parts)
    # What the client sends per partition is a description of row groups, not data.
    assert max(len(pickle.dumps(p)) for p in parts) < 2_000 < path.stat().st_size
    result = stream.run(DaskRunner(runner.client, partitions_per_worker=2))
    assert_same_rows(result.table, stream.run().table)
    agents = result.execution.per_worker()
    assert len(agents) == 2 and (agents["rows_in"] > 0).all()
    assert agents["rows_in"].sum() == 10_000


def test_execution_plan_picture_and_timings(runner):
    stream = _variants()["string-inner"]
    result = stream.run(runner)
    bundle = result.execution._repr_mimebundle_()
    assert bundle["image/svg+xml"].count('class="task"') == len(result.execution.tasks)
    assert "broadcast: reference ['iata']" in bundle["text/plain"]
    assert {"planning_ms", "execution_ms", "gather_ms", "cluster_start_ms"} <= set(
        result.execution.timings)
    assert runner.dashboard_link.startswith("http://127.0.0.1:")


def test_udf_error_surfaces_with_operator_name(runner):
    def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise ValueError("bad value in batch")

    table = pa.table({"a": [1, 2, 3]})
    stream = sl.Stream.from_table(table).map_batches(explode, schema=table.schema, name="explode")
    with pytest.raises(ValueError, match="bad value in batch") as info:
        stream.run(runner)
    assert any("MapBatches[explode]" in note for note in info.value.__notes__)


def test_an_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(SchedulerUnreachableError, match="no Dask scheduler answered at"):
        DaskRunner("tcp://127.0.0.1:9", timeout=2)


@dataclasses.dataclass(frozen=True, eq=False)
class _KeyedForTest(_Unary):
    """Stands in for a future keyed operator (windows, keyed state)."""

    def _infer_schema(self) -> pa.Schema:
        return self.child.schema


def test_keyed_plans_are_refused_with_a_clear_error(runner):
    source = sl.Stream.from_table(pa.table({"a": [1]})).node
    graph = sl.JobGraph(Sink(_KeyedForTest(source), CollectSink()))
    with pytest.raises(NotImplementedError, match=r"_KeyedForTest needs a keyed exchange"):
        JobManager(runner.client).plan(graph)


def test_lost_worker_reruns_its_tasks_and_the_result_is_unchanged(runner):
    stream = enrich_quotes(quote_stream(600_000, batch_size=10_000),
                           sl.Table(securities(), key="instrument_id"))
    killed = run_killing_a_worker(stream, DaskRunner(runner.client, partitions_per_worker=15),
                                  "sabot-partition", after=3)
    assert_same_rows(killed.table, stream.run().table)


def test_scheduler_and_workers_as_separate_processes(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):  # workers wait for the scheduler file themselves
            procs.append(subprocess.Popen(
                [*worker, "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--no-dashboard", "--host", "127.0.0.1"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Distributed's client waits for the scheduler to write its (complete) address file.
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=60) as probe:
            address = probe.scheduler.address
        with DaskRunner(address, timeout=30) as by_address:
            by_address.client.wait_for_workers(2, timeout=60)
            stream = _variants()["string-left"]
            result = stream.run(by_address)
            assert_same_rows(result.table, stream.run().table)
            # Which worker runs which task is the scheduler's choice (under load it may pick
            # one); every task ran on one of the two worker processes.
            workers = set(by_address.client.scheduler_info()["workers"])
            assert set(result.execution.frame()["worker"]) <= workers
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_parquet_sink_written_in_partition_order(runner, tmp_path):
    stream = sl.Stream.from_table(flights(), batch_size=700).filter(sl.col("delay") > 0)
    out = tmp_path / "late.parquet"
    result = stream.to_parquet(out, runner=DaskRunner(runner.client, partitions_per_worker=3))
    assert result.table is None
    expected = stream.to_table()
    # Parquet has no seconds unit: timestamp[s] comes back as timestamp[ms].
    written = pq.read_table(out).cast(expected.schema)
    assert written.combine_chunks().equals(expected.combine_chunks())  # same rows, same order


def test_scattered_slices_do_not_carry_their_parent_buffers():
    from distributed.protocol import serialize

    big = pa.table({"a": np.arange(2_000_000), "s": pa.array(["x" * 20] * 2_000_000)})
    part = sl.ops.sources.TableScan(big).partitions(1_000)[500].table  # what the client scatters
    _, frames = serialize(part)
    shipped = sum(len(memoryview(f)) for f in frames)
    assert shipped < 3 * part.nbytes < big.nbytes / 100


def _drifting(i: int) -> pa.RecordBatch:
    """Batch ``i`` of a stream whose batch 7 has a float column where the others have int."""
    return pa.record_batch({"a": pa.array([float(i)] if i == 7 else [i]), "b": [i]})


@pytest.mark.parametrize("source", ["generator", "batches"])
def test_schema_drift_names_the_stream_batch_as_a_local_run_does(runner, source):
    schema = _drifting(0).schema
    if source == "generator":  # read by the workers, a range of batches each
        job = sl.Stream.from_generator(_drifting, 10, schema)
    else:
        job = sl.Stream.from_batches([_drifting(i) for i in range(10)], schema)
    with pytest.raises(SchemaMismatchError) as local:
        job.run()
    # 4 partitions of batches 0-2, 3-4, 5-7, 8-9: batch 7 is the third of its partition.
    with pytest.raises(SchemaMismatchError) as dask:
        job.run(DaskRunner(runner.client, partitions_per_worker=2))
    assert "batch 7 " in str(local.value)
    assert str(dask.value) == str(local.value)
