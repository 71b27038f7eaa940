"""Benchmark: 12M-quote enrichment from Parquet, LocalRunner vs DaskRunner on a LocalCluster.

The job is the enrichment pattern read from Parquet::

    enrich_quotes(sl.Stream.from_parquet(path), sl.Table(securities(), key="instrument_id"))

(quotes with ``price > 100`` inner-joined to the securities master on ``instrument_id``, keeping
the quote columns plus ``symbol``, ``sector``, ``currency`` and ``notional``). It runs, in one
process and one run of this script, on

* ``local``: ``sl.LocalRunner()`` (this process, a thread pool of 2), and
* ``dask``: ``sl.DaskRunner()``, which starts a ``LocalCluster`` of 2 workers x 1 thread (TLS
  with credentials of its own, the default); each worker reads its own Parquet row groups and
  the output tables come back to this process.

The quotes (``datasets.quote_batches(n)``, the same rows as ``datasets.quotes(n)``) are written
once to a temporary Parquet file with fixed-size row groups (not timed; its size is reported);
the file is deleted at the end unless ``--keep``. Both runners are warmed up once (workers
JIT-compile the numba lookup and import pyarrow on first use) and their outputs checked to hold
the same rows (``sl.assert_same_results``); then ``--repeats`` interleaved rounds are timed
(``time.perf_counter`` around ``stream.run(runner)``) and medians reported.

Printed: (1) throughput: rows in and out, median seconds, input rows/s, ratio to local; (2) the
Dask phases from ``result.execution.timings`` (cluster start, planning, execution, gather) and
``DaskRunner.startup_ms``; (3) per agent (worker): partition tasks, rows, busy seconds; (4)
unless ``--no-diagnostics``, what limits Dask: partitions per worker (``--sweep``) and the job
with its output dropped on the workers (nothing to move back), interleaved with local runs; a
second LocalCluster whose workers run without Dask's statistical profiler, against the first;
CPU seconds used per run by this process (client and scheduler) and by the workers;
per-operator seconds; the cost of moving the output table alone, from the workers or relayed by
the scheduler; memory; (5) a machine line and the verdict on the target (Dask >= 0.7x local
rows/s); (6) unless ``--no-tls``, what TLS costs: ``DaskRunner()`` starts its LocalCluster with
TLS and credentials of its own (the default), ``DaskRunner(security=False)`` without; each
round starts one cluster of each kind in turn (one alive at a time), runs the job once
untimed on it, then once timed, and closes it; ``--tls-rounds`` rounds (at least 5), with
min, median and max of the cluster start and of the job.

Run it from the repository root (machine otherwise idle: check ``uptime``)::

    .venv/bin/python benchmarks/dask_runner.py
    .venv/bin/python benchmarks/dask_runner.py --repeats 5 --markdown
    .venv/bin/python benchmarks/dask_runner.py --partitions-per-worker 1 --no-diagnostics
    .venv/bin/python benchmarks/dask_runner.py --tls-only --rows 3000000 --tls-rounds 5
    .venv/bin/python benchmarks/dask_runner.py --no-diagnostics --json dask_runner.json

``--json PATH`` also writes the run's record for ``benchmarks/report.py``: the throughput table
(with the target, met only when the whole range clears it), the Dask phases and the TLS table.

(The file is named like the ``distributed`` package; run as a script, its directory would come
first on ``sys.path`` and shadow the package, so :func:`main` removes it first.)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import itertools
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from common import (
    Record,
    TreeCpuMonitor,
    add_json_option,
    cores,
    cpu_model,
    format_table,
    git_revision,
    load_average,
    spread,
    target_cell,
    versus,
)

import sabot_lab as sl
from sabot_lab.datasets import quote_batches, securities
from sabot_lab.datasets.market import QUOTES_SCHEMA
from sabot_lab.patterns.enrichment import enrich_quotes

KEY = "instrument_id"
ROWS = 12_000_000
#: Row groups of this many rows: 48 groups for 12M rows, 12 per partition with the runner's
#: default of 4 partitions (2 per worker), 6 with 8; both sizes measured in 250k-500k.
ROW_GROUP_ROWS = 250_000
#: The goal from the issue: the DaskRunner at least this fraction of local rows/s.
TARGET_RATIO = 0.7
SWEEP = (1, 2, 4)


# --- environment ----------------------------------------------------------------------------


class CpuClock:
    """CPU seconds (user + system) of this process and of its descendants (the LocalCluster's
    nannies and workers), and of the whole machine from ``/proc/stat``."""

    def __init__(self) -> None:
        self.me = psutil.Process()

    def sample(self) -> tuple[float, float, float, float]:
        own = sum(self.me.cpu_times()[:2])
        kids = 0.0
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a process that just ended
                kids += sum(child.cpu_times()[:2])
        times = psutil.cpu_times()
        machine = sum(getattr(times, n, 0.0) for n in
                      ("user", "nice", "system", "irq", "softirq", "steal"))
        return own, kids, machine, time.perf_counter()


@dataclass
class CpuUse:
    """CPU seconds over one timed region."""

    wall: float
    client: float  # this process: the client, and the scheduler of a LocalCluster
    workers: float  # the worker (and nanny) processes
    other: float  # everything else on the machine

    @classmethod
    def between(cls, a: tuple[float, ...], b: tuple[float, ...]) -> CpuUse:
        own, kids, machine, wall = (y - x for x, y in zip(a, b, strict=True))
        return cls(wall, own, kids, max(machine - own - kids, 0.0))


# --- data -----------------------------------------------------------------------------------


def write_quotes(path: Path, rows: int, row_group_rows: int) -> tuple[float, int, int]:
    """Stream ``rows`` quotes into one Parquet file with row groups of ``row_group_rows``.

    Generator batches (100k rows, the :func:`quotes` default, so the data equals
    ``quotes(rows)``) are buffered and cut at exact row-group boundaries: ``ParquetWriter``
    closes a row group at the end of every ``write_*`` call. Returns (seconds, bytes, groups).
    """
    start = time.perf_counter()
    pending: list[pa.RecordBatch] = []
    buffered = 0
    with pq.ParquetWriter(path, QUOTES_SCHEMA) as writer:
        for batch in quote_batches(rows):
            pending.append(batch)
            buffered += batch.num_rows
            while buffered >= row_group_rows:
                table = pa.Table.from_batches(pending, QUOTES_SCHEMA)
                writer.write_table(table.slice(0, row_group_rows), row_group_size=row_group_rows)
                rest = table.slice(row_group_rows)
                pending, buffered = rest.to_batches(), rest.num_rows
        if buffered:
            writer.write_table(pa.Table.from_batches(pending, QUOTES_SCHEMA),
                               row_group_size=row_group_rows)
    groups = pq.ParquetFile(path).metadata.num_row_groups
    return time.perf_counter() - start, path.stat().st_size, groups


def _drop_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Keeps no rows: the job's work without moving its output (diagnostics only)."""
    return batch.slice(0, 0)


# --- timing ---------------------------------------------------------------------------------


@dataclass
class Timing:
    """The timed runs of one configuration."""

    name: str
    rows: int
    seconds: list[float] = field(default_factory=list)
    cpu: list[CpuUse] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    rows_out: int = 0
    last: sl.Result | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.median

    def cpu_median(self, name: str) -> float:
        return statistics.median(getattr(c, name) for c in self.cpu)

    def phase_stats(self, key: str) -> tuple[float, float, float]:
        values = [p[key] for p in self.phases]
        return statistics.median(values), min(values), max(values)


def run_once(job: sl.Stream, runner: object, clock: CpuClock, timing: Timing | None = None,
             keep: bool = False) -> tuple[float, sl.Result]:
    """One run of ``job`` on ``runner`` (timed if ``timing``); the output table is dropped
    unless ``keep``, so that it is not alive during the next run."""
    gc.collect()
    # With two clusters alive (diagnostics), make the runner's client the current one: the
    # JobManager's ``as_completed()`` takes its event loop from Dask's *default* client.
    current = runner.client.as_current() if hasattr(runner, "client") else contextlib.nullcontext()
    before = clock.sample()
    start = time.perf_counter()
    with current:
        result = job.run(runner)
    seconds = time.perf_counter() - start
    after = clock.sample()
    if timing is not None:
        timing.seconds.append(seconds)
        timing.cpu.append(CpuUse.between(before, after))
        timing.rows_out = result.rows_out
        if result.execution is not None:
            timing.phases.append({**result.execution.timings,
                                  "total_ms": result.execution_time_ms,
                                  "wall_ms": seconds * 1000})
    if not keep:
        result.table = None
    if timing is not None:
        timing.last = result
    return seconds, result


def interleaved(configs: dict[str, tuple[sl.Stream, Callable[[], object]]], rows: int,
                repeats: int, clock: CpuClock, label: str) -> dict[str, Timing]:
    """``repeats`` rounds over every configuration (drift hits them all alike).

    ``configs`` maps a name to (job, a function preparing the runner and returning it).
    """
    timings = {name: Timing(name, rows) for name in configs}
    for r in range(repeats):
        for name, (job, runner) in configs.items():
            run_once(job, runner(), clock, timings[name])
        print(f"   {label} round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {t.seconds[-1]:.3f} s" for n, t in timings.items()), flush=True)
    print(f"   {label}: {background(timings.values())}", flush=True)
    return timings


def background(timings: Iterable[Timing]) -> str:
    """CPU used outside this process and its workers while ``timings`` ran, in cores."""
    uses = [c for t in timings for c in t.cpu]
    other = sum(c.other for c in uses) / max(sum(c.wall for c in uses), 1e-9)
    worst = max((c.other / c.wall for c in uses), default=0.0)
    return (f"background CPU while timing {other:.2f} cores on average (worst run {worst:.2f}) "
            f"outside this process and its workers")


def _partitioned(dask: object, n: int) -> Callable[[], object]:
    """A function that sets the runner's partitions per worker to ``n`` and returns it."""
    def prepare() -> object:
        dask.partitions_per_worker = n
        return dask

    return prepare


# --- tables ---------------------------------------------------------------------------------

def throughput_rows(timings: Sequence[Timing], local: Timing) -> list[list[str]]:
    return [[t.name, f"{t.rows:,}", f"{t.rows_out:,}", f"{t.median:.3f}",
             f"{min(t.seconds):.3f}", f"{t.rows_per_second / 1e6:.2f}",
             f"{t.rows_per_second / local.rows_per_second:.2f}x"] for t in timings]


THROUGHPUT_HEADERS = ("runner", "input rows", "output rows", "median s", "min s",
                      "rows/s (M)", "ratio vs local")


def phase_rows(dask: Timing, startup_ms: float) -> list[list[str]]:
    notes = {
        "cluster start": "DaskRunner.startup_ms: LocalCluster + Client, once per runner",
        "cluster_start_ms": "timings['cluster_start_ms'] (the same, copied into each run)",
        "planning_ms": "split the sources into partitions (client)",
        "execution_ms": "scatter, submit, run, and fetch every partition's output",
        "gather_ms": "close the sink, merge metrics (client; fetching is in execution)",
        "total_ms": "Result.execution_time_ms (planning + execution + gather)",
        "wall_ms": "perf_counter around stream.run: + optimizer, Result",
    }
    out = [["cluster start", f"{startup_ms:,.1f}", "", "", notes["cluster start"]]]
    for key in ("cluster_start_ms", "planning_ms", "execution_ms", "gather_ms", "total_ms",
                "wall_ms"):
        med, lo, hi = dask.phase_stats(key)
        out.append([key, f"{med:,.1f}", f"{lo:,.1f}", f"{hi:,.1f}", notes[key]])
    return out


def agent_rows(result: sl.Result, wall_s: float) -> list[list[str]]:
    agents = result.execution.per_worker()
    out = []
    for row in agents.itertuples(index=False):
        out.append([row.worker, f"{row.tasks}", f"{row.rows_in:,}", f"{row.rows_out:,}",
                    f"{row.seconds:.3f}", f"{row.rows_in / row.seconds / 1e6:.2f}",
                    f"{row.seconds / wall_s:.0%}"])
    return out


def operator_rows(local: sl.Result, dask: sl.Result) -> list[list[str]]:
    a, b = local.metrics, dask.metrics
    out = []
    for op, ls, ds in zip(a["operator"], a["seconds"], b["seconds"], strict=True):
        name = op.split("[")[0]
        out.append([name, f"{ls:.3f}", f"{ds:.3f}", f"{ds / ls:.2f}x" if ls else "n/a"])
    return out


# --- diagnostics ----------------------------------------------------------------------------


def transfer_cost(client: object, table: pa.Table, parts: int, repeats: int, direct: bool
                  ) -> tuple[float, float]:
    """Seconds to fetch ``table``, held on the workers as ``parts`` slices, into this process
    (what a run pays to bring its output back), median of ``repeats``; and the MB moved.
    ``direct``: from the workers, or (False) relayed by the scheduler."""
    workers = sorted(client.scheduler_info()["workers"])
    slices = [table.slice(start, stop - start) for start, stop in
              _bounds(table.num_rows, parts)]
    futures = [client.scatter(s, workers=[workers[i % len(workers)]], hash=False)
               for i, s in enumerate(slices)]
    seconds = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fetched = client.gather(futures, direct=direct)
        seconds.append(time.perf_counter() - start)
        del fetched
    client.cancel(futures)
    return statistics.median(seconds), table.nbytes / 1e6


def _bounds(total: int, n: int) -> list[tuple[int, int]]:
    edges = [total * i // n for i in range(n + 1)]
    return list(itertools.pairwise(edges))


def _rss() -> int:
    return psutil.Process().memory_info().rss


def worker_memory(client: object) -> dict[str, int]:
    return client.run(_rss)


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=ROWS, help="quotes in the Parquet file")
    parser.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS,
                        help="rows per Parquet row group (the unit of partitioning)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per configuration; medians are reported")
    parser.add_argument("--partitions-per-worker", type=int, default=None,
                        help="DaskRunner partitions per worker thread (default: the runner's)")
    parser.add_argument("--sweep", type=int, nargs="+", default=list(SWEEP),
                        help="partitions per worker to compare in the diagnostics")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="only the throughput, phase and agent tables")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the Parquet file")
    parser.add_argument("--no-tls", action="store_true",
                        help="skip the TLS vs no-TLS comparison")
    parser.add_argument("--tls-only", action="store_true",
                        help="only the TLS vs no-TLS comparison")
    parser.add_argument("--tls-rounds", type=int, default=5,
                        help="rounds of the TLS comparison (at least 5)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.tls_rounds < 5:
        parser.error("--tls-rounds must be at least 5")
    if args.tls_only and args.no_tls:
        parser.error("--tls-only and --no-tls exclude each other")

    md = args.markdown
    record = Record("dask_runner", ("dask", "distributed", "cryptography", "pandas", "psutil"),
                    monitor=TreeCpuMonitor())
    clock = CpuClock()
    n_cores = cores()
    what = (f"DaskRunner with TLS vs without; {args.tls_rounds} rounds" if args.tls_only else
            f"LocalRunner vs DaskRunner; median of {args.repeats} after 1 warm-up")
    print(f"distributed benchmark: enrich_quotes over {args.rows:,} quotes from Parquet, {what}",
          flush=True)
    print(f"   before start: load average {load_average()}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="sabot_distributed_"))
    try:
        path = tmp / "quotes.parquet"
        seconds, size, groups = write_quotes(path, args.rows, args.row_group_rows)
        print(f"   wrote {path} in {seconds:.1f} s (not timed): {size / 1e6:,.0f} MB, "
              f"{groups} row groups of {args.row_group_rows:,} rows, 20 columns "
              f"(the job reads 5)", flush=True)
        reference = sl.Table(securities(), key=KEY)
        job = enrich_quotes(sl.Stream.from_parquet(path), reference)
        if args.tls_only:
            ppw = args.partitions_per_worker or inspect.signature(
                sl.DaskRunner).parameters["partitions_per_worker"].default
            block = tls_block(job, args, clock, 2, ppw, md, record)
            print()
            print(block)
            print()
            print(machine_line(n_cores, 2, size, groups, None))
            if args.json is not None:
                record.write(args.json)
            return
        local = sl.LocalRunner()

        runner_kwargs = {}
        if args.partitions_per_worker is not None:
            runner_kwargs["partitions_per_worker"] = args.partitions_per_worker
        with sl.DaskRunner(**runner_kwargs) as dask:
            ppw = dask.partitions_per_worker
            threads = sum(dask.client.nthreads().values())
            print(f"   DaskRunner started in {dask.startup_ms:,.0f} ms: {threads} worker "
                  f"threads, {ppw} partitions per worker -> {ppw * threads} partitions",
                  flush=True)

            # Warm-up, and the check that both runners produce the same rows.
            t_local, warm_local = run_once(job, local, clock, keep=True)
            t_dask, warm_dask = run_once(job, dask, clock, keep=True)
            print(f"   warm-up (not timed): local {t_local:.3f} s, dask {t_dask:.3f} s (first "
                  f"runs: imports, kernels, page cache)", flush=True)
            sl.assert_same_results(warm_local, warm_dask)
            output = warm_local.table
            print(f"   results agree: {output.num_rows:,} rows, {output.num_columns} columns, "
                  f"{output.nbytes / 1e6:,.0f} MB of output", flush=True)
            del warm_local, warm_dask

            print(f"   timing: load average {load_average()}", flush=True)
            main_timings = interleaved(
                {"local": (job, lambda: local), "dask": (job, _partitioned(dask, ppw))},
                args.rows, args.repeats, clock, "main")
            t_local, t_dask = main_timings["local"], main_timings["dask"]
            if args.json is not None:
                record_throughput(record, args, t_local, t_dask, dask.startup_ms)

            extra: list[str] = []
            if not args.no_diagnostics:
                extra = diagnostics(args, job, local, dask, output, t_local, t_dask, clock,
                                    ppw, md)

        if not args.no_tls:
            extra.append(tls_block(job, args, clock, threads, ppw, md, record))
        print()
        print(f"== throughput ({args.rows:,} quotes from Parquet, median of {args.repeats}; "
              f"{background([t_local, t_dask])})")
        print(format_table(THROUGHPUT_HEADERS, throughput_rows([t_local, t_dask], t_local), md))
        print()
        print(f"== Dask phases, ms (median, min, max of {args.repeats} runs)")
        print(format_table(("phase", "median", "min", "max", "what"),
                           phase_rows(t_dask, dask.startup_ms), md, left=(0, 4)))
        print()
        print(f"== Dask agents (last timed run, {t_dask.seconds[-1]:.3f} s wall)")
        print(format_table(("worker", "tasks", "rows in", "rows out", "busy s",
                            "rows/s (M)", "busy / wall"),
                           agent_rows(t_dask.last, t_dask.seconds[-1]), md))
        for block in extra:
            print()
            print(block)
        print()
        print(machine_line(n_cores, threads, size, groups, local))
        ratio = t_dask.rows_per_second / t_local.rows_per_second
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"target DaskRunner >= {TARGET_RATIO}x LocalRunner rows/s: {verdict} "
              f"({ratio:.2f}x on medians)")
        if args.json is not None:
            record.write(args.json)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


SECURITY = {"TLS (default)": {}, "no TLS (security=False)": {"security": False}}


def tls_cost(job: sl.Stream, rows: int, rounds: int, clock: CpuClock, threads: int,
             ppw: int) -> tuple[dict[str, list[float]], dict[str, Timing]]:
    """Cluster start seconds and job timings per security setting (see the module doc)."""
    starts: dict[str, list[float]] = {name: [] for name in SECURITY}
    timings = {name: Timing(name, rows) for name in SECURITY}
    for r in range(rounds):
        for name, kwargs in SECURITY.items():
            gc.collect()
            with sl.DaskRunner(n_workers=threads, partitions_per_worker=ppw,
                               **kwargs) as runner:
                starts[name].append(runner.startup_ms / 1000)
                run_once(job, runner, clock)  # this cluster's first run: not timed
                run_once(job, runner, clock, timings[name])
        print(f"   tls round {r + 1}/{rounds}: " + ", ".join(
            f"{n}: start {starts[n][-1]:.2f} s, job {t.seconds[-1]:.3f} s"
            for n, t in timings.items()), flush=True)
    return starts, timings


def tls_rows(starts: dict[str, list[float]], timings: dict[str, Timing]) -> list[list[str]]:
    """One row per security setting and measure: min, median, max, median vs no TLS."""
    plain = "no TLS (security=False)"
    out = []
    for measure, values in (("cluster start s", starts),
                            ("job s", {n: t.seconds for n, t in timings.items()})):
        base = statistics.median(values[plain])
        for name, seconds in values.items():
            med = statistics.median(seconds)
            out.append([name, measure, f"{min(seconds):.3f}", f"{med:.3f}",
                        f"{max(seconds):.3f}", f"{med / base:.2f}x"])
    return out


TLS_HEADERS = ("security", "measure", "min", "median", "max", "median vs no TLS")


def tls_block(job: sl.Stream, args: argparse.Namespace, clock: CpuClock, threads: int,
              ppw: int, md: bool, record: Record) -> str:
    """The printed TLS-cost block (its table and seconds go to ``record`` too)."""
    print(f"   tls: load average {load_average()}", flush=True)
    starts, timings = tls_cost(job, args.rows, args.tls_rounds, clock, threads, ppw)
    title = (f"what TLS costs: LocalCluster {threads} workers x 1 thread, {ppw} partitions "
             f"per worker; {args.tls_rounds} rounds, settings interleaved, a fresh cluster each "
             f"(first job on it untimed)")
    rows = tls_rows(starts, timings)
    record.add_table("tls", title, TLS_HEADERS, rows, left=(0, 1))
    record.add_results({"kind": "tls", "security": name, "cluster_start_seconds":
                        spread(starts[name]), "job_seconds": spread(t.seconds)}
                       for name, t in timings.items())
    return (f"== {title}\n   ({background(timings.values())}; load average "
            f"{load_average()} at the end)\n"
            + format_table(TLS_HEADERS, rows, md, left=(0, 1)))


def record_throughput(record: Record, args: argparse.Namespace, local: Timing, dask: Timing,
                      startup_ms: float) -> None:
    """The throughput (with the target over the whole range) and phase tables, and their
    machine-readable rows."""
    ratio = versus(dask.seconds, local.seconds, TARGET_RATIO)
    cells = [[*r, c] for r, c in zip(throughput_rows([local, dask], local),
                                     ["-", target_cell(ratio)], strict=True)]
    record.add_table("throughput", f"{args.rows:,} quotes from Parquet, median of "
                     f"{args.repeats} interleaved rounds", (*THROUGHPUT_HEADERS, "target"),
                     cells, left=(0, len(THROUGHPUT_HEADERS)))
    record.add_table("phases", f"Dask phases, ms (median, min, max of {args.repeats} runs)",
                     ("phase", "median", "min", "max", "what"), phase_rows(dask, startup_ms),
                     left=(0, 4))
    rows: list[dict[str, Any]] = [
        {"kind": "throughput", "runner": t.name, "input_rows": t.rows, "rows_out": t.rows_out,
         "seconds": spread(t.seconds), "rows_per_second_median": t.rows_per_second}
        for t in (local, dask)]
    rows[1]["vs_local"] = ratio
    record.add_results(rows)


def machine_line(n_cores: int, threads: int, size: int, groups: int,
                 local: sl.LocalRunner | None) -> str:
    """The machine, the package versions and the load."""
    import cryptography

    runner = "" if local is None else f"LocalRunner threads {local.threads}, "
    return (f"machine: {n_cores} cores ({cpu_model()}), "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, pyarrow {pa.__version__}, "
            f"dask/distributed {_dask_version()}, cryptography {cryptography.__version__}, "
            f"numba {numba.__version__}, pandas {pd.__version__}, sabot_lab {sl.__version__} "
            f"(git {git_revision()}); {runner}LocalCluster {threads} workers x 1 thread; "
            f"Parquet {size / 1e6:,.0f} MB, {groups} row groups; "
            f"load average {load_average()} at the end")


def _dask_version() -> str:
    import dask
    import distributed

    return f"{dask.__version__}/{distributed.__version__}"


def diagnostics(args: argparse.Namespace, job: sl.Stream, local: sl.LocalRunner,
                dask: object, output: pa.Table, t_local: Timing, t_dask: Timing,
                clock: CpuClock, ppw: int, md: bool) -> list[str]:
    """What limits the DaskRunner: partitions, how outputs travel back, CPU, per-operator
    time, memory. Returns the printed blocks."""
    import dask as dask_config

    blocks = []
    client = dask.client
    threads = sum(client.nthreads().values())
    # 1. Partitions per worker, and the job with its output dropped on the workers (nothing to
    # move back), interleaved with local runs.
    drop_job = job.map_batches(_drop_rows, name="drop_rows")
    configs: dict[str, tuple[sl.Stream, Callable[[], object]]] = {"local": (job, lambda: local)}
    for n in args.sweep:
        configs[f"dask ppw={n}"] = (job, _partitioned(dask, n))
    configs["local, output dropped"] = (drop_job, lambda: local)
    configs[f"dask ppw={ppw}, output dropped"] = (drop_job, _partitioned(dask, ppw))
    try:
        for stream, prepare in configs.values():  # warm every configuration once
            run_once(stream, prepare(), clock)
        sweep = interleaved(configs, args.rows, args.repeats, clock, "diagnostics")
    finally:
        dask.partitions_per_worker = ppw

    # 2. Dask's statistical profiler (a thread in every worker sampling its task thread's stack
    # every 10 ms): a second LocalCluster of the same shape without it, both alive, interleaved
    # (not mixed into block 1: an idle cluster alive costs this 2-core machine CPU too).
    with dask_config.config.set({"distributed.worker.profile.enabled": False}):
        quiet = sl.DaskRunner(n_workers=threads, partitions_per_worker=ppw)
    try:
        run_once(job, quiet, clock)
        profiler = interleaved(
            {f"dask ppw={ppw}, profiler on (default)": (job, _partitioned(dask, ppw)),
             f"dask ppw={ppw}, profiler off": (job, lambda: quiet)},
            args.rows, args.repeats, clock, "profiler")
    finally:
        quiet.close()

    # 3. Moving the output back alone: relayed by the scheduler (a Client's default) or
    # straight from the workers (what the JobManager asks for).
    parts = ppw * threads
    relay_s, mb = transfer_cost(client, output, parts, args.repeats, direct=False)
    direct_s, _ = transfer_cost(client, output, parts, args.repeats, direct=True)

    def sweep_rows(timings: dict[str, Timing], base: Timing) -> list[list[str]]:
        rows = []
        for name, t in timings.items():
            parts_used = busy = execution = ""
            if t.last is not None and t.last.execution is not None:
                parts_used = f"{len(t.last.execution.tasks)}"
                busy = f"{t.last.execution.per_worker()['seconds'].max():.3f}"
                execution = f"{t.phase_stats('execution_ms')[0]:,.0f}"
            rows.append([name, parts_used, f"{t.median:.3f}", f"{t.rows_per_second / 1e6:.2f}",
                         f"{t.rows_per_second / base.rows_per_second:.2f}x", execution, busy])
        return rows

    headers = ("config", "partitions", "median s", "rows/s (M)", "ratio", "execution ms",
               "max worker busy s")
    blocks.append(
        f"== what limits Dask (1): partitions per worker (ppw), output dropped on the workers\n"
        f"   (median of {args.repeats}, interleaved; ratio vs this block's local; busy = the "
        f"busiest worker's task seconds, last run;\n   {background(sweep.values())})\n"
        + format_table(headers, sweep_rows(sweep, sweep["local"]), md))
    default = next(iter(profiler.values()))
    blocks.append(
        f"== what limits Dask (2): the workers' statistical profiler, on a second LocalCluster "
        f"alive at the same time\n   (median of {args.repeats}, interleaved; ratio vs profiler "
        f"on; {background(profiler.values())})\n"
        + format_table(headers, sweep_rows(profiler, default), md))

    # 3. CPU seconds per run: who uses the 2 cores.
    rows = []
    runs = [("main: local", t_local), ("main: dask", t_dask),
            *((f"(1) {name}", t) for name, t in sweep.items()),
            *((f"(2) {name}", t) for name, t in profiler.items())]
    for name, t in runs:
        wall = t.cpu_median("wall")
        client_s, workers_s, other = (t.cpu_median(n) for n in ("client", "workers", "other"))
        rows.append([name, f"{wall:.3f}", f"{client_s:.3f}", f"{workers_s:.3f}",
                     f"{other:.3f}", f"{(client_s + workers_s) / wall:.2f}"])
    blocks.append("== CPU seconds per run (median; client = this process, incl. the "
                  "LocalCluster scheduler; workers = all worker and nanny processes;\n"
                  "   other = rest of the machine; cores used = (client + workers) / wall)\n"
                  + format_table(
                      ("run", "wall s", "client CPU s", "workers CPU s", "other CPU s",
                       "cores used"), rows, md))

    # 4. Per-operator seconds, summed over threads (local) or partition tasks (dask).
    blocks.append("== per-operator seconds (last timed run; summed over threads / tasks)\n"
                  + format_table(("operator", "local s", "dask s", "dask / local"),
                                 operator_rows(t_local.last, t_dask.last), md))

    # 5. Output transfer and memory.
    mem = worker_memory(client)
    exec_ms = t_dask.phase_stats("execution_ms")[0]
    blocks.append(
        "== output transfer and memory\n"
        f"fetch the {output.num_rows:,}-row output ({mb:,.0f} MB Arrow, {parts} slices held "
        f"on the workers) into this process, median of {args.repeats}:\n"
        f"   directly from the workers (gather(direct=True), as the JobManager fetches): "
        f"{direct_s * 1000:,.0f} ms ({mb / direct_s:,.0f} MB/s) = "
        f"{direct_s * 1000 / exec_ms:.0%} of the Dask execution phase ({exec_ms:,.0f} ms)\n"
        f"   relayed by the scheduler (a Client's default): {relay_s * 1000:,.0f} ms "
        f"({mb / relay_s:,.0f} MB/s)\n"
        f"memory after the runs: this process {_rss() / 2**20:,.0f} MiB RSS; workers "
        + ", ".join(f"{v / 2**20:,.0f} MiB" for v in mem.values()) + " RSS")
    return blocks


if __name__ == "__main__":
    main()
