"""The cluster failing under a job: a clear error, and no half-written output."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

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
from tests.runtime.killing import PATIENCE, join, run_in_thread, wait_for_done_tasks

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
        runner = DaskRunner(address, timeout=90, partitions_per_worker=40)  # a slow restart
        runner.client.wait_for_workers(1, timeout=60)
        job = enrich_quotes(quote_stream(2_000_000, batch_size=20_000),
                            sl.Table(securities(), key="instrument_id"))
        out = tmp_path / "out" / "quotes.parquet"
        thread, outcome = run_in_thread(lambda: job.to_parquet(out, runner=runner))
        wait_for_done_tasks(runner.client, 2, "sabot-partition", running=thread.is_alive)
        scheduler.kill()  # in the middle of the job
        join(thread)
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
    """A free port below the kernel's ephemeral range: the scheduler is restarted on it, and
    while it is down any outgoing connection on the machine (the client's reconnect attempts
    among them) could otherwise be given it as its own port."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.Random().sample(range(low // 2, low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low // 2} and {low}")


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
        runner = DaskRunner(address, timeout=90, partitions_per_worker=40)  # a slow restart
        runner.client.wait_for_workers(1, timeout=60)
        job = enrich_quotes(quote_stream(2_000_000, batch_size=20_000),
                            sl.Table(securities(), key="instrument_id"))
        out = tmp_path / "out" / "quotes.parquet"
        thread, outcome = run_in_thread(lambda: job.to_parquet(out, runner=runner))
        wait_for_done_tasks(runner.client, 2, running=thread.is_alive)
        for process in processes:  # the scheduler goes down, and its worker with it
            process.kill()
            process.wait(timeout=30)
        join(thread)
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


def _enrichment_job(quotes: int = 2_000_000) -> sl.Stream:
    return enrich_quotes(quote_stream(quotes, batch_size=20_000),
                         sl.Table(securities(), key="instrument_id"))


class _AtPartition(sl.Dashboard):
    """Calls ``act()`` from inside the job, once two partitions are back (stateless jobs) or
    through the keyed stage (windows, keyed state), with most of the job still to run: the
    job is certainly under way, whatever the machine's speed."""

    def __init__(self, act: Callable[[], None]) -> None:
        super().__init__()
        self.act = act
        self.acted = False

    def _maybe_act(self, done: int) -> None:
        if done >= 2 and not self.acted:
            self.acted = True
            self.act()

    def partition_done(self, metrics: object, rows_out: int, done: int, total: int) -> None:
        super().partition_done(metrics, rows_out, done, total)
        self._maybe_act(done)

    def partitions_through(self, done: int, total: int) -> None:
        super().partitions_through(done, total)
        self._maybe_act(done)


def _new_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before`` and still alive (Dask's process-wide offload pool,
    started once on first use, is no client's)."""
    return [t.name for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith("Dask-Offload")]


@pytest.mark.parametrize("pattern", ["enrichment", "windows"])
def test_client_losing_the_scheduler_mid_job_is_a_clear_error(pattern, tmp_path):
    """The runner's client loses its connection (as a network would drop it) at a fixed
    point of the job: a clear error, nothing written, and closing the runner stops the
    client's thread whatever state Dask left the client in (it may still be reconnecting,
    or never manage to: the scheduler can refuse a client that comes back too fast)."""
    from distributed import LocalCluster

    job = _enrichment_job() if pattern == "enrichment" else _windows_job()
    out = tmp_path / "out" / "rows.parquet"
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        before = set(threading.enumerate())
        with DaskRunner(cluster.scheduler_address, partitions_per_worker=20) as runner:
            client = runner.client
            drop = _AtPartition(lambda: client.loop.add_callback(
                client.scheduler_comm.comm.abort))
            thread, outcome = run_in_thread(
                lambda: job.run(runner, ParquetSink(out), dashboard=drop))
            join(thread)
            assert drop.acted
            assert isinstance(outcome.get("error"), ClusterError), outcome
            assert "sink was not written" in str(outcome["error"])
            assert not out.exists() and not list((tmp_path / "out").glob("*"))
        assert _new_threads(before) == [], "a thread of the runner's client outlived it"
        # The cluster is unharmed: a client connected afresh runs the job whole.
        with distributed.Client(cluster) as fresh:
            assert_same_rows(job.run(DaskRunner(fresh)).table, job.run().table)


def test_closing_the_runner_stops_its_client_when_dask_cannot_close_it(monkeypatch):
    """A client whose connection broke can fail to close inside Dask (seen: an
    ``AssertionError`` from a client stuck reconnecting); its thread must stop anyway."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        before = set(threading.enumerate())
        runner = DaskRunner(cluster.scheduler_address)
        real_close = runner.client.close

        def failing_close(*args: object, **kwargs: object) -> None:
            raise AssertionError("as Client.close raises for a client stuck reconnecting")

        monkeypatch.setattr(runner.client, "close", failing_close)
        try:
            runner.close()
            assert _new_threads(before) == [], "the client's thread outlived the runner"
        finally:
            real_close()


# --- no workers ----------------------------------------------------------------------------

@pytest.mark.parametrize("n_workers", [0, -1])
def test_a_local_cluster_without_workers_is_refused(n_workers):
    with pytest.raises(ValueError, match="needs at least one worker"):
        DaskRunner(n_workers=n_workers)


@pytest.mark.parametrize("pattern", ["enrichment", "windows"])
def test_a_cluster_without_workers_is_a_clear_error_not_a_hang(pattern, tmp_path):
    from distributed import LocalCluster

    job = _enrichment_job(20_000) if pattern == "enrichment" else _windows_job()
    out = tmp_path / "rows.parquet"
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, \
            distributed.Client(cluster) as client:
        runner = DaskRunner(client, worker_timeout=2)
        thread, outcome = run_in_thread(lambda: job.to_parquet(out, runner=runner))
        join(thread)
        error = outcome.get("error")
        assert isinstance(error, ClusterError), outcome
        assert "no Dask worker was available for 2 s" in str(error)
        assert "dask worker" in str(error) and "worker_timeout" in str(error)
        assert not out.exists()


def _filter_job() -> sl.Stream:
    """Stateless, with nothing but its partitions' input (no broadcast reference table)."""
    return quote_stream(600_000, batch_size=20_000).filter(sl.col("price") > 100)


@pytest.mark.parametrize(("pattern", "message"), [
    # Tasks wait for a worker (they can be recomputed from their inputs) until the watch
    # gives up on the cluster.
    ("filter", "no Dask worker was available for 3 s"),
    ("windows", "no Dask worker was available for 3 s"),
    # The broadcast reference table lived on the workers only: the scheduler cancels what
    # needs it, usually at once; on a busy machine the watch's timeout can come first. Both
    # errors say what happened and what to do.
    ("enrichment", "the cluster lost every worker during the job|"
                   "no Dask worker was available for 3 s"),
])
def test_a_cluster_losing_all_its_workers_mid_job_is_a_clear_error(pattern, message,
                                                                    tmp_path):
    from distributed import LocalCluster

    job = {"filter": _filter_job, "windows": _windows_job,
           "enrichment": lambda: _enrichment_job(600_000)}[pattern]()
    out = tmp_path / "out" / "rows.parquet"
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            distributed.Client(cluster) as client:
        runner = DaskRunner(client, worker_timeout=3, partitions_per_worker=15)
        lose_all = _AtPartition(lambda: cluster.scale(0))
        thread, outcome = run_in_thread(
            lambda: job.run(runner, ParquetSink(out), dashboard=lose_all))
        join(thread)
        assert lose_all.acted
        error = outcome.get("error")
        assert isinstance(error, ClusterError), outcome
        assert re.search(message, str(error)) and "sink was not written" in str(error)
        assert "dask worker" in str(error)
        assert not out.exists() and not list((tmp_path / "out").glob("*"))
        # Workers back: the same runner runs the job whole.
        cluster.scale(2)
        client.wait_for_workers(2, timeout=PATIENCE)
        assert_same_rows(job.run(runner).table, job.run().table)


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
