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
2. **Overheads that decide scale-out**, for LocalClusters of W = 1, 2, 4, 8 workers x 1
   thread (oversubscribed on a small machine: read them as counts, not speed): fraud with
   ``--rows-per-worker`` transactions and a tenth as many accounts per worker, from Parquet.
   Per W: scheduler tasks (a scheduler plugin counts tasks handed to workers), CPU of the
   scheduler's event-loop thread, worker CPU, rows and bytes pushed to agents on other
   workers, consistent cuts and the state bytes they held. Tasks must grow linearly in W.

``benchmarks/scaling_model.py`` projects throughput at more workers from part 2's record.

Run it from the repository root (machine otherwise idle: check ``uptime``)::

    .venv/bin/python benchmarks/agents.py
    .venv/bin/python benchmarks/agents.py --markdown --json benchmarks/results/agents.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
    return dask_scheduler.plugins[_CountTasks.name].started, time.thread_time()


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
        with sl.DaskRunner(n_workers=workers) as dask:
            client = dask.client
            job.run(dask)  # warm-up
            client.register_plugin(CountTasks())
            tasks0, sched0 = client.run_on_scheduler(_scheduler_counters)
            cpu0 = sum(client.run(time.process_time).values())
            start = time.perf_counter()
            result = job.run(dask)
            wall = time.perf_counter() - start
            cpu = sum(client.run(time.process_time).values()) - cpu0
            tasks1, sched1 = client.run_on_scheduler(_scheduler_counters)
        ex = result.execution
        remote = sum(t.bytes_remote for t in ex.tasks)
        pushed = sum(t.bytes_pushed for t in ex.tasks)
        row = {"workers": workers, "rows": n, "partitions": len(ex.tasks),
               "key_ranges": len(ex.agents), "tasks": tasks1 - tasks0,
               "scheduler_cpu_s": sched1 - sched0, "worker_cpu_s": cpu, "wall_s": wall,
               "bytes_pushed": pushed, "bytes_to_other_workers": remote, "cuts": ex.cuts,
               "cut_state_bytes": ex.cut_state_bytes}
        results.append(row)
        rows.append([f"{workers}", f"{n:,}", f"{row['partitions']}", f"{row['key_ranges']}",
                     f"{row['tasks']}", f"{row['scheduler_cpu_s'] * 1000:.0f}",
                     f"{cpu:.2f}", f"{pushed / 1e6:,.0f}", f"{remote / 1e6:,.0f}",
                     f"{ex.cuts}", f"{ex.cut_state_bytes / 1e6:,.1f}"])
        print(f"   W={workers} done", flush=True)
    headers = ["W", "rows", "partitions", "key ranges", "tasks", "scheduler ms",
               "worker CPU s", "MB pushed", "MB to other workers", "cuts", "cut state MB"]
    title = (f"what a fraud job costs per cluster size ({args.rows_per_worker:,} txns and "
             f"{args.rows_per_worker // 10:,} accounts per worker, Parquet; one run after a "
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
