"""Benchmark: event-time timers, an alert from the absence of events, against DuckDB.

The job: heartbeats of many devices (``datasets.heartbeats``: each device in its own time
order, devices out of order across each other by up to 20 s), and an alert for every silence
of 5 minutes or more after a device's heartbeat (at the end of the input too). Engines, in
one process, from the same Arrow table:

* ``sabot_lab``: ``with_watermark("t", ...).key_by("device").process(Silence(...))``, the
  numba path with one event-time timer per device, through the public API;
* ``sabot_lab_python``: the same rule as a ``PythonProcessFunction`` with ``on_timer`` (the
  teaching path), on the first ``--python-rows`` rows only (rows/s compare, seconds do not);
* ``duckdb``: the same answer from the whole table at once, with no timers: ``lead(t)`` per
  device, a gap of at least 5 minutes or no next heartbeat;
* ``polars``: the same query as DuckDB's, lazily (a ``bench`` extra; skipped without it).

The streaming job and the batch queries are not the same work: the query sees the whole input
and sorts it, the job sees each row once, in arrival order, and alerts as soon as the
watermark allows. The table shows what the timers cost against that batch answer. Before
timing, every engine's alerts are checked to be the same multiset (the Python path's against
DuckDB's on its rows). Each engine is warmed up once, then timed ``--rounds`` times in
interleaved rounds; min/median/max seconds, rows/s on the median, and the ratio to DuckDB's
rows/s (worst: our slowest run against DuckDB's fastest).

Run it from the repository root (machine otherwise idle)::

    .venv/bin/python benchmarks/timers.py
    .venv/bin/python benchmarks/timers.py --json benchmarks/results/timers.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CpuMonitor,
    Record,
    add_json_option,
    cores,
    cpu_model,
    describe_background,
    format_table,
    load_average,
    spread,
    versus,
)

import sabot_lab as sl
from sabot_lab.datasets import heartbeats
from sabot_lab.patterns.silence import Silence, python_silence

try:
    import polars as pl
except ImportError:  # a benchmark-only dependency
    pl = None

GAP = 300
BOUND = 20
SQL = (f"SELECT device, t AS silent_since, t + {GAP} AS alert_at FROM ("
       f"SELECT device, t, lead(t) OVER (PARTITION BY device ORDER BY t) AS next FROM beats) "
       f"WHERE next IS NULL OR next - t >= {GAP}")


def _stream(beats: pa.Table, function: sl.ProcessFunction) -> sl.Stream:
    return (sl.Stream.from_table(beats)
            .with_watermark("t", unit="s", max_out_of_orderness=f"{BOUND}s")
            .key_by("device").process(function))


def run_sabot_lab(beats: pa.Table) -> pa.Table:
    return _stream(beats, Silence("device", "t", GAP)).run().table


def run_python(beats: pa.Table) -> pa.Table:
    return _stream(beats, python_silence("device", "t", GAP)).run().table


class DuckDB:
    """A connection with the heartbeats registered (not timed)."""

    def __init__(self, beats: pa.Table, threads: int) -> None:
        self.con = duckdb.connect()
        self.con.execute(f"SET threads TO {int(threads)}")
        self.con.register("beats", beats)

    def __call__(self, beats: pa.Table) -> pa.Table:
        return self.con.sql(SQL).to_arrow_table()


def run_polars(beats: pa.Table) -> Any:
    frame = pl.from_arrow(beats.select(["device", "t"])).lazy()
    return (frame.sort("device", "t")
            .with_columns(next=pl.col("t").shift(-1).over("device"))
            .filter(pl.col("next").is_null() | (pl.col("next") - pl.col("t") >= GAP))
            .select("device", silent_since=pl.col("t"), alert_at=pl.col("t") + GAP)
            .collect())


def alerts(result: Any) -> np.ndarray:
    """The alerts as a sorted (device, alert_at) array: their multiset."""
    device = np.asarray(result["device"].to_numpy(), dtype=np.int64)
    at = np.asarray(result["alert_at"].to_numpy(), dtype=np.int64)
    return np.sort(device * (1 << 40) + at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--python-rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    add_json_option(parser)
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (the benchmark rules)")
    record = Record("timers", packages=("duckdb", "polars"))
    print(f"machine: {cores()} cores, {cpu_model()}, load average {load_average()}",
          flush=True)
    beats = heartbeats(args.rows, args.devices, bound=BOUND)
    small = beats.slice(0, args.python_rows)
    duck = DuckDB(beats, cores())
    engines: dict[str, tuple[Callable[[pa.Table], Any], pa.Table]] = {
        "sabot_lab": (run_sabot_lab, beats), "duckdb": (duck, beats)}
    if pl is not None:
        engines["polars"] = (run_polars, beats)
    else:
        record.note('polars skipped: not installed (pip install -e ".[bench]")')
    engines["sabot_lab_python"] = (run_python, small)

    expected = alerts(duck(beats))
    duck.con.register("small", small)
    expected_small = alerts(duck.con.sql(SQL.replace("FROM beats", "FROM small")).to_arrow_table())
    for name, (fn, table) in engines.items():  # warm-up, and the check
        want = expected if table is beats else expected_small
        got = alerts(fn(table))
        if not np.array_equal(got, want):
            raise AssertionError(f"{name}: {len(got)} alerts, expected {len(want)}")
    print(f"alerts agree: {len(expected):,} silences among {args.rows:,} heartbeats of "
          f"{args.devices:,} devices", flush=True)

    seconds: dict[str, list[float]] = {name: [] for name in engines}
    monitor = CpuMonitor()  # while timing only
    for r in range(args.rounds):
        for name, (fn, table) in engines.items():
            gc.collect()
            start = time.perf_counter()
            fn(table)
            seconds[name].append(time.perf_counter() - start)
        print(f"   round {r + 1}/{args.rounds}: " + ", ".join(
            f"{e} {s[-1]:.3f} s" for e, s in seconds.items()), flush=True)
    background = monitor.cores_elsewhere()
    print("   " + describe_background(background), flush=True)
    duck_per_row = [s / args.rows for s in seconds["duckdb"]]
    rows, results = [], []
    for name, (_, table) in engines.items():
        n = table.num_rows
        # seconds per row: the Python path reads fewer rows than the others
        ratio = versus([s / n for s in seconds[name]], duck_per_row)
        times = spread(seconds[name])
        rows.append([name, f"{n:,}", f"{times['min']:.3f}", f"{times['median']:.3f}",
                     f"{times['max']:.3f}", f"{n / times['median'] / 1e6:.2f}",
                     f"{ratio['median']:.2f}x", f"{ratio['worst']:.2f}-{ratio['best']:.2f}x"])
        results.append({"engine": name, "rows": n, "seconds": times, "vs_duckdb": ratio,
                        "background": background})
    headers = ["engine", "heartbeats", "min s", "median s", "max s", "rows/s (M)",
               "vs DuckDB rows/s (median)", "(worst-best)"]
    title = (f"silences of {GAP // 60} min among {args.rows:,} heartbeats of "
             f"{args.devices:,} devices ({len(expected):,} alerts), {args.rounds} interleaved "
             f"rounds; no target (a streaming job against a batch query)")
    record.add_table("timers", title, headers, rows)
    record.add_results(results)
    print()
    print(title)
    print(format_table(headers, rows, False))
    if args.json is not None:
        record.write(args.json)


if __name__ == "__main__":
    main()
