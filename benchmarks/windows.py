"""Benchmark: event-time windows through the public API against DuckDB SQL, in one process.

Events: ``--events`` rows (default 10M) over one hour of event time, ``--keys`` keys (1,000),
values drawn from an exponential distribution, in time order. The job: 5-minute tumbling
windows per key with count, sum, mean, exact p95 and p99, fed in 64K-row batches
(``sl.Stream.from_table(events, batch_size=65_536)``), plus top-10 keys by count per window.
DuckDB computes the same over the whole Arrow table (``quantile_cont``, ``row_number``). The
two results are checked to agree before timing. Reports events/s and the ratio to DuckDB, the
same job with sketch quantiles (``sl.approx_quantile``, 1% relative error) and their worst rank
error against the exact data, and the firing latency per window.

Run it from the repository root on an otherwise idle machine::

    .venv/bin/python benchmarks/windows.py
    .venv/bin/python benchmarks/windows.py --events 2000000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import CpuMonitor, cores, cpu_model, git_revision

import sabot_lab as sl

AGGS_SQL = ("count(*) AS n, sum(v) AS total, avg(v) AS mean, quantile_cont(v, 0.95) AS p95, "
            "quantile_cont(v, 0.99) AS p99")


def events(n: int, keys: int, seed: int = 0) -> pa.Table:
    """``n`` events over one hour (ms), ``keys`` keys, exponential values, in time order."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 3_600_000, n))
    return pa.table({"ts": pa.array(t).cast(pa.timestamp("ms")),
                     "key": pa.array(rng.integers(0, keys, n)),
                     "v": pa.array(rng.exponential(100.0, n))})


def sabot_windows(table: pa.Table, quantile: Callable = sl.quantile) -> pa.Table:
    """The job; ``quantile=sl.approx_quantile`` gives approximate p95/p99 (mergeable sketch,
    1% relative error)."""
    return (sl.Stream.from_table(table, batch_size=65_536).with_watermark("ts")
            .window(sl.tumbling("5min")).group_by("key")
            .agg(n=sl.count(), total=sl.sum("v"), mean=sl.mean("v"),
                 p95=quantile("v", 0.95), p99=quantile("v", 0.99))
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


def duckdb_windows(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return con.sql(f"SELECT time_bucket(INTERVAL 5 minute, ts) AS window_start, key, {AGGS_SQL} "
                   "FROM events GROUP BY ALL").to_arrow_table()


def duckdb_top10(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return con.sql(
        "SELECT * FROM (SELECT window_start, key, n, row_number() OVER (PARTITION BY "
        "window_start ORDER BY n DESC, key) AS rank FROM (SELECT time_bucket(INTERVAL 5 minute,"
        " ts) AS window_start, key, count(*) AS n FROM events GROUP BY ALL)) WHERE rank <= 10"
    ).to_arrow_table()


def _check(ours: pa.Table, theirs: pa.Table, columns: Sequence[str]) -> None:
    ours = ours.select(list(columns)).cast(theirs.select(list(columns)).schema)
    sl.assert_same_results(ours, theirs.select(list(columns)), rtol=1e-9)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    table = events(args.events, args.keys)
    con = duckdb.connect()
    con.execute(f"SET threads = {cores()}")
    con.register("events", table)
    print(f"windows benchmark: {args.events:,} events, {args.keys:,} keys, 1 h of event time, "
          f"5-min tumbling windows, 64K-row batches; median of {args.repeats} after a warm-up")
    _check(sabot_windows(table), duckdb_windows(con),
           ["window_start", "key", "n", "total", "mean", "p95", "p99"])
    _check(sabot_top10(table), duckdb_top10(con), ["window_start", "key", "n"])
    print("   results agree with DuckDB (aggregates and top-10 per window)")

    approx = sabot_windows(table, sl.approx_quantile)
    _check(approx, duckdb_windows(con), ["window_start", "key", "n", "total", "mean"])
    errors = rank_errors(approx, table)
    print(f"   sketch mode: worst rank error over {approx.num_rows:,} groups: "
          f"p95 {errors[0.95]:.2%}, p99 {errors[0.99]:.2%}")

    monitor = CpuMonitor()
    rows = []
    for name, ours, theirs in (("count/sum/mean/p95/p99", lambda: sabot_windows(table),
                                lambda: duckdb_windows(con)),
                               ("same, sketch p95/p99",
                                lambda: sabot_windows(table, sl.approx_quantile),
                                lambda: duckdb_windows(con)),
                               ("top-10 keys by count", lambda: sabot_top10(table),
                                lambda: duckdb_top10(con))):
        ours_s = _median_seconds(ours, args.repeats)
        theirs_s = _median_seconds(theirs, args.repeats)
        rows.append((name, ours_s, theirs_s))
    print(f"   {monitor.report()}\n")
    print("| job | sabot_lab s | sabot_lab events/s (M) | DuckDB s | DuckDB events/s (M) | "
          "ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, ours_s, theirs_s in rows:
        print(f"| {name} | {ours_s:.3f} | {args.events / ours_s / 1e6:.1f} | {theirs_s:.3f} | "
              f"{args.events / theirs_s / 1e6:.1f} | {theirs_s / ours_s:.2f}x |")
    print("\nfiring latency (exact job; from the batch that passes a window's end entering the "
          "watermark operator to the window's rows at the sink):")
    jobs = {"exact p95/p99": (sl.quantile("v", 0.95), sl.quantile("v", 0.99)),
            "sketch p95/p99": (sl.approx_quantile("v", 0.95), sl.approx_quantile("v", 0.99)),
            "count/sum/mean only": ()}
    for name, quantiles in jobs.items():
        extra = dict(zip(("p95", "p99"), quantiles, strict=False))
        for batch_size in (65_536, 8_192):
            latency = firing_latencies(table, lambda s, extra=extra: s.with_watermark("ts").window(
                sl.tumbling("5min")).group_by("key").agg(
                n=sl.count(), total=sl.sum("v"), mean=sl.mean("v"), **extra), batch_size)
            print(f"   {name}, {batch_size:,}-row batches, {len(latency)} firings: p50 "
                  f"{np.percentile(latency, 50):.1f} ms, p99 {np.percentile(latency, 99):.1f} ms")
    print(f"\nmachine: {cores()} cores ({cpu_model()}), pyarrow {pa.__version__}, duckdb "
          f"{duckdb.__version__}, sabot_lab {sl.__version__} (git {git_revision()}); "
          f"window results per run: {pc.count(duckdb_windows(con)['n']).as_py():,}")


if __name__ == "__main__":
    main()
