"""Benchmark: event-time windows through the public API against DuckDB and polars, in one process.

Events: ``--events`` rows (default 10M) over one hour of event time, ``--keys`` keys (1,000),
values drawn from an exponential distribution, in time order. The job: 5-minute tumbling
windows per key with count, sum, mean, exact p95 and p99, fed in 64K-row batches
(``sl.Stream.from_table(events, batch_size=65_536)``), the same with count, sum and mean only,
plus top-10 keys by count per window.
DuckDB computes the same over the whole Arrow table (``quantile_cont``, ``row_number``), and so
does polars over a DataFrame made from it before timing (``group_by`` on
``dt.truncate("5m")`` and the key, ``quantile(q, interpolation="linear")``; top-10 by sorting
and ``head(10)`` per window). Every engine's results are checked to agree with DuckDB's before
timing. Reports events/s and the ratio to DuckDB, the same job with sketch quantiles
(``sl.approx_quantile``, 1% relative error, against the peers' exact quantiles) and their worst
rank error against the exact data, and the firing latency per window. polars is a dependency
of the benchmarks only (``pip install -e ".[bench]"``): without it the engine is skipped, with
a note.

Run it from the repository root on an otherwise idle machine::

    .venv/bin/python benchmarks/windows.py
    .venv/bin/python benchmarks/windows.py --events 2000000 --rounds 5 --markdown
    .venv/bin/python benchmarks/windows.py --json benchmarks/results/windows.json

Every round runs every job once with each engine (interleaved, so drifting load hits all
alike); the tables give min / median / max over the rounds and the ratio to DuckDB on medians
and over the whole range (worst: sabot_lab's slowest run against DuckDB's fastest); a target
is "met" only when the worst ratio clears it, a latency target only when every run's p99 is
below it. DuckDB's ``quantile_cont`` and polars' ``interpolation="linear"`` are the definition
``sl.quantile`` computes (linear interpolation), so the quantile results are compared equal.
``--json PATH`` also writes the run's record for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import (
    CpuMonitor,
    Record,
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

try:
    import polars as pl
except ImportError:  # a dependency of the benchmarks only: the engine is skipped
    pl = None

ENGINES = ("sabot_lab", "duckdb", "polars")
#: Firing latency: every run's p99 below this many milliseconds.
TARGET_P99_MS = 5.0
CSM_SQL = "count(*) AS n, sum(v) AS total, avg(v) AS mean"
AGGS_SQL = f"{CSM_SQL}, quantile_cont(v, 0.95) AS p95, quantile_cont(v, 0.99) AS p99"


def events(n: int, keys: int, seed: int = 0) -> pa.Table:
    """``n`` events over one hour (ms), ``keys`` keys, exponential values, in time order."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 3_600_000, n))
    return pa.table({"ts": pa.array(t).cast(pa.timestamp("ms")),
                     "key": pa.array(rng.integers(0, keys, n)),
                     "v": pa.array(rng.exponential(100.0, n))})


def sabot_windows(table: pa.Table, quantile: Callable | None = sl.quantile) -> pa.Table:
    """The job; ``quantile=sl.approx_quantile`` gives approximate p95/p99 (mergeable sketch,
    1% relative error), ``None`` count, sum and mean only."""
    extra = {} if quantile is None else {"p95": quantile("v", 0.95), "p99": quantile("v", 0.99)}
    return (sl.Stream.from_table(table, batch_size=65_536).with_watermark("ts")
            .window(sl.tumbling("5min")).group_by("key")
            .agg(n=sl.count(), total=sl.sum("v"), mean=sl.mean("v"), **extra)
            .to_table())


def rank_errors(approx: pa.Table, table: pa.Table) -> dict[float, float]:
    """Worst rank error over all (window, key) groups, per quantile: how many positions the
    estimate lies from the exact lower quantile ``x[floor(q (n - 1))]`` in the sorted group,
    as a fraction of the group's size (0 when it equals that value)."""
    frame = table.select(["ts", "key", "v"]).to_pandas()
    frame["window_start"] = frame["ts"].dt.floor("5min")
    groups = {k: np.sort(g.to_numpy()) for k, g in frame.groupby(["window_start", "key"])["v"]}
    worst = {}
    estimates = approx.to_pandas()
    for q, column in ((0.95, "p95"), (0.99, "p99")):
        errors = []
        for start, key, estimate in zip(estimates["window_start"], estimates["key"],
                                        estimates[column], strict=True):
            values = groups[(start, key)]
            target = int(np.floor(q * (len(values) - 1)))
            low = np.searchsorted(values, estimate, "left")  # positions the estimate could
            high = np.searchsorted(values, estimate, "right")  # take: [low, high]
            distance = 0 if low <= target <= high else min(abs(low - target),
                                                           abs(high - target))
            errors.append(distance / len(values))
        worst[q] = max(errors)
    return worst


def firing_latencies(table: pa.Table, job: Callable[[sl.Stream], sl.Stream],
                     batch_size: int = 65_536) -> np.ndarray:
    """Milliseconds from the batch that moves the watermark past a window's end entering the
    event-time operators to that window's rows reaching the sink (one thread, so nothing
    else runs in between): the latency a dashboard would see."""
    entered: list[float] = []

    def stamp(batch: pa.RecordBatch) -> pa.RecordBatch:
        entered.append(time.perf_counter())
        return batch

    latencies: list[float] = []

    def arrived(batch: pa.RecordBatch) -> None:
        latencies.append((time.perf_counter() - entered[-1]) * 1000)

    stream = sl.Stream.from_table(table, batch_size=batch_size).map_batches(stamp, table.schema)
    job(stream).for_each_batch(arrived, runner=sl.LocalRunner(threads=1))
    return np.array(latencies[:-1])  # the last: the end of input, not a watermark


def sabot_top10(table: pa.Table) -> pa.Table:
    return (sl.Stream.from_table(table, batch_size=65_536).with_watermark("ts")
            .window(sl.tumbling("5min")).group_by("key").agg(n=sl.count())
            .top_n(10, by="n").to_table())


def duckdb_windows(con: duckdb.DuckDBPyConnection, aggs: str = AGGS_SQL) -> pa.Table:
    return con.sql(f"SELECT time_bucket(INTERVAL 5 minute, ts) AS window_start, key, {aggs} "
                   "FROM events GROUP BY ALL").to_arrow_table()


def duckdb_top10(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return con.sql(
        "SELECT * FROM (SELECT window_start, key, n, row_number() OVER (PARTITION BY "
        "window_start ORDER BY n DESC, key) AS rank FROM (SELECT time_bucket(INTERVAL 5 minute,"
        " ts) AS window_start, key, count(*) AS n FROM events GROUP BY ALL)) WHERE rank <= 10"
    ).to_arrow_table()


def _polars_window(frame: pl.DataFrame) -> pl.LazyFrame:
    return frame.lazy().group_by(pl.col("ts").dt.truncate("5m").alias("window_start"), "key")


def polars_windows(frame: pl.DataFrame, quantiles: bool = True) -> pl.DataFrame:
    """The windows in polars; quantiles as DuckDB's ``quantile_cont`` (linear)."""
    extra = [pl.col("v").quantile(q, interpolation="linear").alias(name)
             for name, q in (("p95", 0.95), ("p99", 0.99))] if quantiles else []
    return _polars_window(frame).agg(pl.len().alias("n"), pl.col("v").sum().alias("total"),
                                     pl.col("v").mean().alias("mean"), *extra).collect()


def polars_top10(frame: pl.DataFrame) -> pl.DataFrame:
    """The 10 keys with most events per window in polars, ties by key (as DuckDB's)."""
    return (_polars_window(frame).agg(pl.len().alias("n"))
            .sort(["window_start", "n", "key"], descending=[False, True, False])
            .group_by("window_start", maintain_order=True).head(10).collect())


def _check(ours: pa.Table, theirs: pa.Table, columns: Sequence[str]) -> None:
    ours = ours.select(list(columns)).cast(theirs.select(list(columns)).schema)
    sl.assert_same_results(ours, theirs.select(list(columns)), rtol=1e-9)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Job:
    """One job: each engine's way to run it, and sabot_lab's target against DuckDB
    (events/s, over the whole min..max range)."""

    name: str
    engines: dict[str, Callable[[], object]]
    target: float


def _jobs(table: pa.Table, con: duckdb.DuckDBPyConnection, frame: pl.DataFrame | None
          ) -> list[Job]:
    """The timed jobs; ``frame`` is the events as a polars DataFrame (``None``: no polars)."""
    jobs = [
        Job("count/sum/mean", {"sabot_lab": lambda: sabot_windows(table, None),
                               "duckdb": lambda: duckdb_windows(con, CSM_SQL)}, 1.0),
        Job("count/sum/mean/p95/p99 exact", {"sabot_lab": lambda: sabot_windows(table),
                                             "duckdb": lambda: duckdb_windows(con)}, 1.0),
        Job("same, sketch p95/p99 (vs exact)",
            {"sabot_lab": lambda: sabot_windows(table, sl.approx_quantile),
             "duckdb": lambda: duckdb_windows(con)}, 1.3),
        Job("top-10 keys by count", {"sabot_lab": lambda: sabot_top10(table),
                                     "duckdb": lambda: duckdb_top10(con)}, 1.0)]
    if frame is not None:
        peers = (lambda: polars_windows(frame, quantiles=False), lambda: polars_windows(frame),
                 lambda: polars_windows(frame), lambda: polars_top10(frame))
        for job, peer in zip(jobs, peers, strict=True):
            job.engines["polars"] = peer
    return jobs


def check_results(table: pa.Table, con: duckdb.DuckDBPyConnection, frame: pl.DataFrame | None
                  ) -> pa.Table:
    """Abort unless sabot_lab's (and polars') results equal DuckDB's; returns sabot_lab's
    sketch-quantile windows (checked on everything but the quantiles)."""
    csm = ["window_start", "key", "n", "total", "mean"]
    exact = [*csm, "p95", "p99"]
    top = ["window_start", "key", "n"]
    _check(sabot_windows(table, None), duckdb_windows(con, CSM_SQL), csm)
    _check(sabot_windows(table), duckdb_windows(con), exact)
    _check(sabot_top10(table), duckdb_top10(con), top)
    if frame is not None:
        _check(polars_windows(frame, quantiles=False).to_arrow(), duckdb_windows(con, CSM_SQL),
               csm)
        _check(polars_windows(frame).to_arrow(), duckdb_windows(con), exact)
        _check(polars_top10(frame).to_arrow(), duckdb_top10(con), top)
    approx = sabot_windows(table, sl.approx_quantile)
    _check(approx, duckdb_windows(con), csm)
    return approx


def time_jobs(jobs: Sequence[Job], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per job and engine: a warm-up, then ``rounds`` interleaved rounds."""
    for job in jobs:
        for run in job.engines.values():
            run()
    seconds = {job.name: {engine: [] for engine in job.engines} for job in jobs}
    for r in range(rounds):  # interleaved rounds: drift hits every engine alike
        for job in jobs:
            for engine, run in job.engines.items():
                seconds[job.name][engine].append(_timed(run))
        print(f"   round {r + 1}/{rounds} done", flush=True)
    return seconds


JOB_HEADERS = ("job", "engine", "min s", "median s", "max s", "M events/s (median)",
               "vs DuckDB (median)", "vs DuckDB (worst-best)", "target")


def job_results(jobs: Sequence[Job], seconds: dict[str, dict[str, list[float]]], events: int
                ) -> list[dict[str, Any]]:
    """One machine-readable row per job and engine; the target applies to sabot_lab."""
    rows = []
    for job in jobs:
        duck = seconds[job.name]["duckdb"]
        for engine, runs in seconds[job.name].items():
            target = job.target if engine == "sabot_lab" else None
            rows.append({"kind": "throughput", "job": job.name, "engine": engine,
                         "events": events, "seconds": spread(runs),
                         "events_per_second_median": events / spread(runs)["median"],
                         "vs_duckdb": versus(runs, duck, target)})
    return rows


def job_cells(row: dict[str, Any]) -> list[str]:
    """The printed row of a :func:`job_results` row."""
    s, ratio = row["seconds"], row["vs_duckdb"]
    return [row["job"], row["engine"], f"{s['min']:.3f}", f"{s['median']:.3f}",
            f"{s['max']:.3f}", f"{row['events_per_second_median'] / 1e6:.1f}",
            f"{ratio['median']:.2f}x", f"{ratio['worst']:.2f}-{ratio['best']:.2f}x",
            target_cell(ratio)]


LATENCY_HEADERS = ("job", "batch rows", "firings per run", "p50 ms (last run)",
                   "p99 ms min / median / max", "target")


def latency_results(table: pa.Table, rounds: int) -> list[dict[str, Any]]:
    """Firing latency per job and batch size: p99 of each of ``rounds`` runs."""
    latency_jobs = {
        "exact p95/p99": (sl.quantile("v", 0.95), sl.quantile("v", 0.99)),
        "sketch p95/p99": (sl.approx_quantile("v", 0.95), sl.approx_quantile("v", 0.99)),
        "count/sum/mean only": ()}
    rows = []
    for name, quantiles in latency_jobs.items():
        extra = dict(zip(("p95", "p99"), quantiles, strict=False))
        for batch_size in (65_536, 8_192):
            p99s = []
            for _ in range(rounds):
                latency = firing_latencies(
                    table, lambda s, extra=extra: s.with_watermark("ts").window(
                        sl.tumbling("5min")).group_by("key").agg(
                        n=sl.count(), total=sl.sum("v"), mean=sl.mean("v"), **extra),
                    batch_size)
                p99s.append(float(np.percentile(latency, 99)))
            rows.append({"kind": "latency", "job": name, "batch_rows": batch_size,
                         "firings_per_run": len(latency),
                         "p50_ms_last_run": float(np.percentile(latency, 50)),
                         "p99_ms": spread(p99s), "target_p99_ms": TARGET_P99_MS,
                         "met": max(p99s) < TARGET_P99_MS})
    return rows


def latency_cells(row: dict[str, Any]) -> list[str]:
    """The printed row of a :func:`latency_results` row."""
    p99 = row["p99_ms"]
    return [row["job"], f"{row['batch_rows']:,}", f"{row['firings_per_run']}",
            f"{row['p50_ms_last_run']:.1f}",
            f"{p99['min']:.1f} / {p99['median']:.1f} / {p99['max']:.1f}",
            f"< {row['target_p99_ms']:g} ms: {'met' if row['met'] else 'not met'}"]


def polars_frame(table: pa.Table, record: Record) -> pl.DataFrame | None:
    """The events as a polars DataFrame (made before timing, as DuckDB registers the table),
    or ``None`` with a note when polars is not installed."""
    if pl is None:
        note = 'polars skipped: not installed (pip install -e ".[bench]")'
        print(f"note: {note}")
        record.note(note)
        return None
    return pl.from_arrow(table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds: every engine runs every job once per round")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the firing-latency measurement")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    add_json_option(parser)
    args = parser.parse_args(argv)

    record = Record("windows", ("duckdb", "polars"))
    table = events(args.events, args.keys)
    con = duckdb.connect()
    con.execute(f"SET threads = {cores()}")
    con.register("events", table)
    frame = polars_frame(table, record)
    engines = [e for e in ENGINES if e != "polars" or frame is not None]
    print(f"windows benchmark: {args.events:,} events, {args.keys:,} keys, 1 h of event time, "
          f"5-min tumbling windows, 64K-row batches; engines {', '.join(engines)}; "
          f"{args.rounds} rounds after a warm-up, engines interleaved within each round")
    approx = check_results(table, con, frame)
    print(f"   results agree with DuckDB (aggregates and top-10 per window): "
          f"{', '.join(e for e in engines if e != 'duckdb')}")
    errors = rank_errors(approx, table)
    sketch_line = (f"sketch p95/p99: worst rank error over {approx.num_rows:,} groups: "
                   f"p95 {errors[0.95]:.2%}, p99 {errors[0.99]:.2%}")
    print(f"   {sketch_line}")
    record.note(sketch_line)

    jobs = _jobs(table, con, frame)
    monitor = CpuMonitor()
    results = job_results(jobs, time_jobs(jobs, args.rounds), args.events)
    print(f"   {monitor.report()}\n")
    job_rows = [job_cells(r) for r in results]
    print(format_table(JOB_HEADERS, job_rows, args.markdown, left=(0, 1, 8)))
    record.add_table("jobs", f"{args.events:,} events, {args.rounds} interleaved rounds",
                     JOB_HEADERS, job_rows, left=(0, 1, 8))
    if not args.no_latency:
        print("\nfiring latency (from the batch that passes a window's end entering the "
              f"watermark operator to the window's rows at the sink; target p99 < "
              f"{TARGET_P99_MS:g} ms in every run):")
        latency = latency_results(table, args.rounds)
        latency_rows = [latency_cells(r) for r in latency]
        print(format_table(LATENCY_HEADERS, latency_rows, args.markdown, left=(0, 5)))
        record.add_table("latency", f"firing latency, {args.rounds} runs each",
                         LATENCY_HEADERS, latency_rows, left=(0, 5))
        results += latency
    print(f"\nmachine: {cores()} cores ({cpu_model()}), python {platform.python_version()}, "
          f"pyarrow {pa.__version__}, duckdb {duckdb.__version__}, "
          f"polars {'not installed' if pl is None else pl.__version__}, numpy {np.__version__}, "
          f"numba {numba.__version__}, sabot_lab {sl.__version__} (git {git_revision()}); "
          f"load average now {load_average()}; window results per run: "
          f"{pc.count(duckdb_windows(con)['n']).as_py():,}")
    if args.json is not None:
        record.add_results(results)
        record.write(args.json)


if __name__ == "__main__":
    main()
