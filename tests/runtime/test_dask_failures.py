"""The cluster failing under a job: a clear error, and no half-written output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import securities
from sabot_lab.patterns.enrichment import enrich_quotes, quote_stream
from sabot_lab.runtime.dask import ClusterError, DaskRunner

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
        outcome: dict = {}

        def run() -> None:
            try:
                job.to_parquet(out, runner=runner)
            except BaseException as exc:  # handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()

        def finished() -> int:
            return runner.client.run_on_scheduler(lambda dask_scheduler: sum(
                ts.state == "memory" for key, ts in dask_scheduler.tasks.items()
                if str(key).startswith("sabot-partition")))

        deadline = time.monotonic() + 60
        while finished() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the scheduler, not standing in for work
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
