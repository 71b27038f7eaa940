"""Benchmark: stateful jobs on Dask (key-range agents) against the same jobs run locally.

Two parts:

1. **Speed**: fraud detection (1M transactions, 100K accounts) and a 1-minute tumbling
   window (5M click events, count and sum per path) on ``sl.LocalRunner()`` and on
   ``sl.DaskRunner()`` (a LocalCluster of 2 workers x 1 thread, TLS, the default), from an
   in-memory table (the client sends it to the workers) and from a Parquet file (workers read
   their own row groups). Every round runs every (job, source, runner) once, interleaved;
   ``--rounds`` rounds (at least 5) after one untimed warm-up each; outputs are checked to
   hold the same rows. Target: Dask >= 0.5x the local run, "met" only when Dask's slowest run
   against the local fastest clears it.
2. **Overheads that decide scale-out**, for clusters of W = 1, 2, 4, 8 workers x 1 thread
   (oversubscribed on a small machine: read them as counts, not speed): fraud with
   ``--rows-per-worker`` transactions and a tenth as many accounts per worker, from Parquet.
   The scheduler runs in a process of its own here (TLS, credentials made for the run), as
   on a real cluster: in a LocalCluster it shares the client's event loop, whose work
   (sending, polling agents) would be counted as the scheduler's. Per W: scheduler tasks (a
   scheduler plugin counts tasks handed to workers), CPU of the scheduler's process, worker
   CPU, rows and bytes pushed to agents on other workers, consistent cuts and the state
   bytes they held. Tasks must grow linearly in W.

``benchmarks/scaling_model.py`` projects throughput at more workers from part 2's record.

Run it from the repository root (machine otherwise idle: check ``uptime``)::

    .venv/bin/python benchmarks/agents.py
    .venv/bin/python benchmarks/agents.py --markdown --json benchmarks/results/agents.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Record,
    TreeCpuMonitor,
    add_json_option,
    cores,
    cpu_model,
    format_table,
    load_average,
    spread,
    target_cell,
    versus,
)
from scaling_model import TARGET as MODEL_TARGET
from scaling_model import table as model_table

import sabot_lab as sl
from sabot_lab.datasets import clicks, transactions
from sabot_lab.patterns.fraud import detect_fraud

TARGET = 0.5
WORKERS = (1, 2, 4, 8)


def fraud_job(source: sl.Stream) -> sl.Stream:
    return detect_fraud(source)


def window_job(source: sl.Stream) -> sl.Stream:
    return (source.with_watermark("event_time", max_out_of_orderness="5s")
            .window(sl.tumbling("1min")).group_by("path")
            .agg(n=sl.count(), total=sl.sum("bytes")))


def speed(args: argparse.Namespace, tmp: Path, record: Record) -> str:
    """Part 1: local vs Dask, interleaved rounds."""
    data = {"fraud 1M txns, 100K accounts": (fraud_job, transactions(
        1_000_000, n_accounts=100_000, seed=1)),
        "windows 5M events, 1-min tumbling": (window_job, clicks(5_000_000, seed=1))}
    jobs: dict[str, sl.Stream] = {}
    for name, (make, table) in data.items():
        path = tmp / f"{name.split()[0]}.parquet"
        pq.write_table(table, path, row_group_size=table.num_rows // 8)
        jobs[f"{name}, in memory"] = make(sl.Stream.from_table(table))
        jobs[f"{name}, Parquet"] = make(sl.Stream.from_parquet(path))
    times: dict[tuple[str, str], list[float]] = {}
    with sl.DaskRunner() as dask:
        runners: dict[str, Callable[[], object]] = {"local": sl.LocalRunner, "dask": lambda: dask}
        for name, job in jobs.items():  # warm-up, and the same rows everywhere
            measured = ("detection_latency_ms",) if name.startswith("fraud") else ()
            sl.assert_same_results(job.run(dask), job.run(sl.LocalRunner()), rtol=1e-9,
                                   ignore_columns=measured)
        for round_ in range(args.rounds):
            for name, job in jobs.items():
                for runner, make_runner in runners.items():
                    start = time.perf_counter()
                    job.run(make_runner())
                    times.setdefault((name, runner), []).append(time.perf_counter() - start)
            print(f"   round {round_ + 1}/{args.rounds} done", flush=True)
    rows, results = [], []
    for name in jobs:
        local, dask_s = spread(times[(name, "local")]), spread(times[(name, "dask")])
        ratio = versus(times[(name, "dask")], times[(name, "local")], TARGET)
        rows.append([name, f"{local['min']:.3f}/{local['median']:.3f}/{local['max']:.3f}",
                     f"{dask_s['min']:.3f}/{dask_s['median']:.3f}/{dask_s['max']:.3f}",
                     f"{ratio['median']:.2f}x ({ratio['worst']:.2f}-{ratio['best']:.2f})",
                     target_cell(ratio)])
        results.append({"job": name, "local": local, "dask": dask_s, "ratio": ratio})
    headers = ["job", "local s min/med/max", "Dask s min/med/max", "Dask/local (worst-best)",
               "target"]
    title = (f"stateful jobs, LocalRunner vs DaskRunner (2 workers x 1 thread, TLS), "
             f"{args.rounds} interleaved rounds")
    record.add_table("speed", title, headers, rows)
    record.add_results(results)
    return f"{title}\n\n{format_table(headers, rows, args.markdown)}"


class _CountTasks:
    """On the scheduler: tasks handed to workers."""

    name = "sabot-bench-count-tasks"

    def __init__(self) -> None:
        self.started = 0

    def transition(self, key: object, start: str, finish: str, *args: object,
                   **kwargs: object) -> None:
        if finish == "processing":
            self.started += 1


def _scheduler_counters(dask_scheduler: object) -> tuple[int, float]:
    return dask_scheduler.plugins[_CountTasks.name].started, time.process_time()


@contextlib.contextmanager
def subprocess_cluster(workers: int, tmp: Path, monitor: TreeCpuMonitor) -> Iterator[object]:
    """A client of a cluster whose scheduler and ``workers`` workers (1 thread each) are
    processes of their own, all on TLS with credentials made for it (files in ``tmp``,
    handed to the processes through Dask's configuration). Their CPU counts as the run's in
    ``monitor``, also that of the processes killed when it closes."""
    import dask
    from distributed import Client, Security
    from distributed.deploy.subprocess import SubprocessCluster

    made = Security.temporary()
    cert, key = tmp / "cluster-cert.pem", tmp / "cluster-key.pem"
    cert.write_text(made.tls_ca_file)
    key.write_text(made.tls_scheduler_key)
    env = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(cert),
           "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(cert)
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(key)
    with mock.patch.dict(os.environ, env), contextlib.ExitStack() as stack:
        dask.config.refresh()
        stack.callback(dask.config.refresh)
        cluster = stack.enter_context(SubprocessCluster(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", n_workers=workers,
            threads_per_worker=1, scheduler_kwargs={"protocol": "tls"},
            worker_kwargs={"nthreads": 1}))
        client = stack.enter_context(Client(cluster, security=Security()))
        client.wait_for_workers(workers, timeout=120)
        yield client
        with monitor.killing_descendants():
            stack.close()


def overheads(args: argparse.Namespace, tmp: Path, record: Record) -> str:
    """Part 2: counts per cluster size."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class CountTasks(_CountTasks, SchedulerPlugin):
        pass

    rows, results = [], []
    for workers in WORKERS:
        n = args.rows_per_worker * workers
        path = tmp / f"fraud-{workers}.parquet"
        pq.write_table(transactions(n, n_accounts=n // 10, seed=2), path,
                       row_group_size=max(1, n // (4 * workers)))
        job = fraud_job(sl.Stream.from_parquet(path))
        runs: list[tuple[int, float, float, float]] = []
        with subprocess_cluster(workers, tmp, record.monitor) as client, \
                sl.DaskRunner(client) as dask:
            job.run(dask)  # warm-up
            client.register_plugin(CountTasks())
            for _ in range(args.overhead_runs):
                tasks0, sched0 = client.run_on_scheduler(_scheduler_counters)
                cpu0 = sum(client.run(time.process_time).values())
                start = time.perf_counter()
                result = job.run(dask)
                wall = time.perf_counter() - start
                cpu = sum(client.run(time.process_time).values()) - cpu0
                tasks1, sched1 = client.run_on_scheduler(_scheduler_counters)
                runs.append((tasks1 - tasks0, sched1 - sched0, cpu, wall))
        # Medians of the runs: one run's CPU varies by tens of percent on a small machine.
        tasks_n, sched, cpu, wall = (float(np.median(column)) for column in zip(*runs, strict=True))
        ex = result.execution
        remote = sum(t.bytes_remote for t in ex.tasks)
        pushed = sum(t.bytes_pushed for t in ex.tasks)
        row = {"workers": workers, "rows": n, "partitions": len(ex.tasks),
               "key_ranges": len(ex.agents), "tasks": int(tasks_n),
               "scheduler_cpu_s": sched, "worker_cpu_s": cpu, "wall_s": wall,
               "bytes_pushed": pushed, "bytes_to_other_workers": remote, "cuts": ex.cuts,
               "cut_state_bytes": ex.cut_state_bytes}
        results.append(row)
        rows.append([f"{workers}", f"{n:,}", f"{row['partitions']}", f"{row['key_ranges']}",
                     f"{row['tasks']}", f"{row['scheduler_cpu_s'] * 1000:.0f}",
                     f"{cpu:.2f}", f"{pushed / 1e6:,.0f}", f"{remote / 1e6:,.0f}",
                     f"{ex.cuts}", f"{ex.cut_state_bytes / 1e6:,.1f}"])
        print(f"   W={workers} done", flush=True)
    headers = ["W", "rows", "partitions", "key ranges", "tasks", "scheduler CPU ms",
               "worker CPU s", "MB pushed", "MB to other workers", "cuts", "cut state MB"]
    title = (f"what a fraud job costs per cluster size ({args.rows_per_worker:,} txns and "
             f"{args.rows_per_worker // 10:,} accounts per worker, Parquet; scheduler in a "
             f"process of its own; CPU as the median of {args.overhead_runs} runs after a "
             f"warm-up; oversubscribed above {cores()} workers: counts, not speed)")
    record.add_table("overheads", title, headers, rows)
    record.add_results({"overheads": row} for row in results)
    return f"{title}\n\n{format_table(headers, rows, args.markdown)}"


def model(args: argparse.Namespace, record: Record) -> str:
    """Part 3: the scaling model (``scaling_model.py``) on part 2's counts."""
    headers, rows, costs = model_table(record.data, 1_000_000)
    title = (f"projected: fraud with 1M txns and 100K accounts per worker, 1 core and 10 GbE "
             f"per worker (benchmarks/scaling_model.py; target >= {MODEL_TARGET} x W x one "
             f"worker at 64); costs: " + ", ".join(f"{k} {v:.3g}" for k, v in costs.items()))
    record.add_table("model", title, headers, rows)
    return f"{title}\n\n{format_table(headers, rows, args.markdown)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (at least 5)")
    parser.add_argument("--rows-per-worker", type=int, default=500_000)
    parser.add_argument("--overhead-runs", type=int, default=3,
                        help="runs per cluster size in part 2 (CPU is their median)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--no-overheads", action="store_true",
                        help="only part 1 (local vs Dask)")
    add_json_option(parser)
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (the benchmark rules)")
    # Dask workers are child processes: their CPU is the run's, not background load.
    record = Record("agents", packages=("dask", "distributed"), monitor=TreeCpuMonitor())
    print(f"machine: {cores()} cores, {cpu_model()}, load average {load_average()}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        blocks = [speed(args, Path(tmp), record)]
        if not args.no_overheads:
            blocks.append(overheads(args, Path(tmp), record))
            blocks.append(model(args, record))
    for block in blocks:
        print()
        print(block)
    print()
    print(record.monitor.report())
    if args.json is not None:
        record.write(args.json)


if __name__ == "__main__":
    main()
