"""The cluster failing under a job: a clear error, and no half-written output."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sabot_lab as sl
from sabot_lab.datasets import securities, transactions
from sabot_lab.ops.sinks import ParquetSink
from sabot_lab.patterns.enrichment import enrich_quotes, quote_stream
from sabot_lab.runtime.dask import ClusterError, DaskRunner
from tests.oracle import assert_same_rows
from tests.runtime.killing import run_in_thread, wait_for_done_tasks

distributed = pytest.importorskip("distributed")


def test_scheduler_lost_mid_job_is_a_clear_error_and_writes_nothing(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], **quiet)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the scheduler process to write its address
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
             str(scheduler_file), "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
            **quiet)
        address = json.loads(scheduler_file.read_text())["address"]
        runner = DaskRunner(address, timeout=30, partitions_per_worker=40)
        runner.client.wait_for_workers(1, timeout=60)
        job = enrich_quotes(quote_stream(2_000_000, batch_rows=20_000),
                            sl.Table(securities(), key="instrument_id"))
        out = tmp_path / "out" / "quotes.parquet"
        thread, outcome = run_in_thread(lambda: job.to_parquet(out, runner=runner))
        wait_for_done_tasks(runner.client, 2, "sabot-partition")
        scheduler.kill()  # in the middle of the job
        thread.join(timeout=120)
        assert isinstance(outcome.get("error"), ClusterError), outcome
        assert "sink was not written" in str(outcome["error"])
        assert not out.exists()
        assert not [p for p in (tmp_path / "out").glob("*") if p.name.endswith(".tmp")]
        runner.client.close(timeout=5)
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.kill()
                p.wait(timeout=30)


def _die(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Kill the worker process that runs it (as running out of memory would)."""
    os._exit(1)


def test_a_partition_that_kills_every_worker_is_a_clear_error(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(os.getpid)
        data = pa.table({"x": list(range(100))})
        table = sl.Stream.from_table(data).map_batches(_die, data.schema)  # never called here
        out = tmp_path / "out.parquet"
        with pytest.raises(ClusterError, match="killed every worker"):
            table.to_parquet(out, runner=DaskRunner(client))
        assert not out.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_scheduler_restart_mid_job_is_a_clear_error_then_a_rerun_is_complete(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "env": {**os.environ, "PYTHONPATH": os.getcwd()}}

    def start_scheduler() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                 "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                **quiet)

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                 "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                **quiet)

    processes = [start_scheduler()]
    try:
        processes.append(start_worker())
        runner = DaskRunner(address, timeout=30, partitions_per_worker=40)
        runner.client.wait_for_workers(1, timeout=60)
        job = enrich_quotes(quote_stream(2_000_000, batch_rows=20_000),
                            sl.Table(securities(), key="instrument_id"))
        out = tmp_path / "out" / "quotes.parquet"
        thread, outcome = run_in_thread(lambda: job.to_parquet(out, runner=runner))
        wait_for_done_tasks(runner.client, 2)
        for process in processes:  # the scheduler goes down, and its worker with it
            process.kill()
            process.wait(timeout=30)
        thread.join(timeout=120)
        assert isinstance(outcome.get("error"), ClusterError), outcome
        assert not out.exists() and not list((tmp_path / "out").glob("*"))
        processes = [start_scheduler(), start_worker()]  # the same address again
        runner.client.wait_for_workers(1, timeout=60)  # the client reconnects by itself
        job.to_parquet(out, runner=runner)
        assert pq.read_metadata(out).num_rows == job.run().table.num_rows
        runner.client.close(timeout=5)
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)


def _windows_job() -> sl.Stream:
    return (sl.Stream.from_table(transactions(200_000, n_accounts=2_000), batch_size=2_000)
            .with_watermark("ts").window(sl.tumbling("10min")).group_by("account_id")
            .agg(n=sl.count(), total=sl.sum("amount")))


class _DropConnection(sl.Dashboard):
    """Drops the client's connection to the scheduler (as a network would) once two
    partitions are back, with most of the job still to run."""

    def __init__(self, client: object) -> None:
        super().__init__()
        self.client = client

    def partition_done(self, metrics: object, rows_out: int, done: int, total: int) -> None:
        super().partition_done(metrics, rows_out, done, total)
        if done == 2:
            self.client.loop.add_callback(self.client.scheduler_comm.comm.abort)


@pytest.mark.parametrize("pattern", ["enrichment", "windows"])
def test_client_losing_the_scheduler_mid_job_is_a_clear_error(pattern, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        client = distributed.Client(cluster)  # closed below, once it has reconnected
        runner = DaskRunner(client, partitions_per_worker=20)
        out = tmp_path / "out" / "rows.parquet"
        if pattern == "enrichment":
            job = enrich_quotes(quote_stream(2_000_000, batch_rows=20_000),
                                sl.Table(securities(), key="instrument_id"))
            thread, outcome = run_in_thread(lambda: job.run(
                runner, ParquetSink(out), dashboard=_DropConnection(client)))
        else:  # stateful jobs report no partitions as they go: watch the scheduler
            job = _windows_job()
            thread, outcome = run_in_thread(lambda: job.to_parquet(out, runner=runner))
            wait_for_done_tasks(client, 6)
            client.loop.add_callback(client.scheduler_comm.comm.abort)
        thread.join(timeout=120)
        assert isinstance(outcome.get("error"), ClusterError), outcome
        assert "sink was not written" in str(outcome["error"])
        assert not out.exists() and not list((tmp_path / "out").glob("*"))
        # The cluster is unharmed: a client connected afresh runs the job whole.
        with distributed.Client(cluster) as fresh:
            assert_same_rows(job.run(DaskRunner(fresh)).table, job.run().table)
        deadline = time.monotonic() + 60
        while client.status != "running" and time.monotonic() < deadline:
            time.sleep(0.05)  # the dropped client reconnects in the background
        # Closing a client whose connection was cut can fail inside Dask in several ways
        # (none of them what this test is about): best effort.
        with contextlib.suppress(Exception):
            client.close(timeout=10)


def _hog(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Touch 1.5 GB, three times the worker's memory limit."""
    np.ones(1_500_000_000 // 8).sum()
    return batch


def test_a_worker_out_of_memory_is_a_clear_error_and_writes_nothing(tmp_path):
    from distributed import LocalCluster

    # A real limit: the nanny kills the worker process when it passes it.
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="500MiB",
                      host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, \
            distributed.Client(cluster) as client:
        data = pa.table({"x": list(range(100))})
        job = sl.Stream.from_table(data).map_batches(_hog, data.schema)
        out = tmp_path / "out.parquet"
        with pytest.raises(ClusterError, match="killed every worker"):
            job.to_parquet(out, runner=DaskRunner(client))
        assert not out.exists() and not list(tmp_path.glob("*.tmp"))
