"""Live jobs on Dask: a job stopped mid-run returns the output of the partitions before the
first one not done (only final windows), and leaves no task or agent on the cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import sabot_lab as sl
from sabot_lab.datasets import clicks
from sabot_lab.runtime.dask import DaskRunner
from tests.oracle import assert_same_rows
from tests.runtime.killing import CountStarts, wait_for_done_tasks
from tests.test_live import PATIENCE, final_at

distributed = pytest.importorskip("distributed")


class FileGate:
    """A pass-through stage that holds every batch with ``seq`` at or past ``at`` until the
    file ``path`` exists (the test creates it once it has asked the job to stop): a worker
    process waits on the test, whatever the machine's speed."""

    __name__ = "gate"

    def __init__(self, path: Path, at: int) -> None:
        self.path, self.at = str(path), at

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if pc.max(batch["seq"]).as_py() >= self.at:
            deadline = time.monotonic() + PATIENCE
            while not Path(self.path).exists():  # waiting for the test, not doing work
                assert time.monotonic() < deadline, "the test never opened the gate"
                time.sleep(0.01)
        return batch


@pytest.fixture(scope="module")
def events() -> pa.Table:
    table = clicks(40_000, seed=6).select(["event_time", "path", "bytes"])
    return table.append_column("seq", pa.array(range(table.num_rows)))


def _idle(client: object) -> None:
    """Until the scheduler holds no task of a job (polling the cluster)."""
    deadline = time.monotonic() + PATIENCE
    while client.run_on_scheduler(lambda dask_scheduler: sum(
            str(key).startswith("sabot-") for key in dask_scheduler.tasks)):
        assert time.monotonic() < deadline, "tasks of a stopped job still on the cluster"
        time.sleep(0.05)


def _wait_for_rows(job: sl.LiveJob) -> None:
    deadline = time.monotonic() + PATIENCE
    while job.rows_out == 0:  # polling the job: it runs on its own thread
        assert time.monotonic() < deadline and job.status == "running", job
        time.sleep(0.01)


def test_a_stopped_stateless_job_returns_a_prefix(runner, events, tmp_path):
    def job_of(source: sl.Stream) -> sl.Stream:
        return source.filter(sl.col("bytes") > 100)

    full = job_of(sl.Stream.from_table(events)).run()
    stream = job_of(sl.Stream.from_table(events, batch_size=500).map_batches(
        FileGate(tmp_path / "open", 8_000), events.schema))
    job = stream.start(DaskRunner(runner.client, partitions_per_worker=10))
    _wait_for_rows(job)
    job.stop(wait=False)
    (tmp_path / "open").touch()
    result = job.result(timeout=PATIENCE)
    assert job.status == "stopped"
    got = result.table
    assert 0 < got.num_rows < full.table.num_rows
    assert got.equals(full.table.slice(0, got.num_rows))  # a prefix, in order
    read = result.rows_in
    assert got.num_rows == pc.sum(pc.greater(events["bytes"].slice(0, read), 100)).as_py()
    _idle(runner.client)


def _windows(source: sl.Stream) -> sl.Stream:
    return (source.with_watermark("event_time", max_out_of_orderness="500ms")
            .window(sl.tumbling("2s")).group_by("path").agg(n=sl.count()))


@pytest.mark.parametrize("flush", [False, True])
def test_a_stopped_window_job_on_dask_returns_final_windows(runner, events, tmp_path, flush):
    stream = _windows(sl.Stream.from_table(events, batch_size=500).map_batches(
        FileGate(tmp_path / "open", 12_000), events.schema))
    runner.client.register_plugin(CountStarts())
    try:
        job = stream.start(DaskRunner(runner.client, partitions_per_worker=10))
        wait_for_done_tasks(runner.client, 1, "exchange", running=lambda: job.status == "running")
    finally:
        runner.client.unregister_scheduler_plugin(CountStarts.name)
    job.stop(flush=flush, wait=False)
    (tmp_path / "open").touch()
    result = job.result(timeout=PATIENCE)
    read = events.slice(0, result.rows_in)
    assert 0 < result.rows_in < events.num_rows
    if flush:  # the same as a whole run over just the rows read
        expected = _windows(sl.Stream.from_table(read)).run().table
    else:
        full = _windows(sl.Stream.from_table(events)).run().to_pandas()
        expected = pa.Table.from_pandas(final_at(full, read), preserve_index=False)
    assert expected.num_rows > 0
    assert_same_rows(result.table, expected)
    _idle(runner.client)
