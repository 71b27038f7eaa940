"""Benchmark: event-time windows through the public API against DuckDB SQL, in one process.

Events: ``--events`` rows (default 10M) over one hour of event time, ``--keys`` keys (1,000),
values drawn from an exponential distribution, in time order. The job: 5-minute tumbling
windows per key with count, sum, mean, exact p95 and p99, fed in 64K-row batches
(``sl.Stream.from_table(events, batch_size=65_536)``), the same with count, sum and mean only,
plus top-10 keys by count per window.
DuckDB computes the same over the whole Arrow table (``quantile_cont``, ``row_number``). The
two results are checked to agree before timing. Reports events/s and the ratio to DuckDB, the
same job with sketch quantiles (``sl.approx_quantile``, 1% relative error) and their worst rank
error against the exact data, and the firing latency per window.

Run it from the repository root on an otherwise idle machine::

    .venv/bin/python benchmarks/windows.py
    .venv/bin/python benchmarks/windows.py --events 2000000 --rounds 5

Every round runs every job once with each engine (interleaved, so drifting load hits all
alike); the tables give min / median / max over the rounds, the ratio per round, and "met"
only when every round clears the target. DuckDB uses ``quantile_cont``, the definition
``sl.quantile`` computes (linear interpolation), so the quantile results are compared equal.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import duckdb
import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import CpuMonitor, cores, cpu_model, git_revision, load_average

import sabot_lab as sl

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


def _check(ours: pa.Table, theirs: pa.Table, columns: Sequence[str]) -> None:
    ours = ours.select(list(columns)).cast(theirs.select(list(columns)).schema)
    sl.assert_same_results(ours, theirs.select(list(columns)), rtol=1e-9)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stats(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


#: (job, sabot_lab's job, DuckDB's query, target: sabot_lab / DuckDB events/s, every round).
def _jobs(table: pa.Table, con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return [
        ("count/sum/mean", lambda: sabot_windows(table, None),
         lambda: duckdb_windows(con, CSM_SQL), 1.0),
        ("count/sum/mean/p95/p99 exact", lambda: sabot_windows(table),
         lambda: duckdb_windows(con), 1.0),
        ("same, sketch p95/p99 (vs DuckDB exact)",
         lambda: sabot_windows(table, sl.approx_quantile), lambda: duckdb_windows(con), 1.3),
        ("top-10 keys by count", lambda: sabot_top10(table), lambda: duckdb_top10(con), 1.0)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds: every engine runs every job once per round")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the firing-latency measurement")
    args = parser.parse_args(argv)

    table = events(args.events, args.keys)
    con = duckdb.connect()
    con.execute(f"SET threads = {cores()}")
    con.register("events", table)
    print(f"windows benchmark: {args.events:,} events, {args.keys:,} keys, 1 h of event time, "
          f"5-min tumbling windows, 64K-row batches; {args.rounds} rounds after a warm-up, "
          f"engines interleaved within each round")
    _check(sabot_windows(table, None), duckdb_windows(con, CSM_SQL),
           ["window_start", "key", "n", "total", "mean"])
    _check(sabot_windows(table), duckdb_windows(con),
           ["window_start", "key", "n", "total", "mean", "p95", "p99"])
    _check(sabot_top10(table), duckdb_top10(con), ["window_start", "key", "n"])
    print("   results agree with DuckDB (aggregates and top-10 per window)")

    approx = sabot_windows(table, sl.approx_quantile)
    _check(approx, duckdb_windows(con), ["window_start", "key", "n", "total", "mean"])
    errors = rank_errors(approx, table)
    print(f"   sketch mode: worst rank error over {approx.num_rows:,} groups: "
          f"p95 {errors[0.95]:.2%}, p99 {errors[0.99]:.2%}")

    jobs = _jobs(table, con)
    for _, ours, theirs, _ in jobs:  # warm-up
        ours()
        theirs()
    monitor = CpuMonitor()
    seconds: dict[str, tuple[list[float], list[float]]] = {j[0]: ([], []) for j in jobs}
    for r in range(args.rounds):  # interleaved rounds: drift hits every engine alike
        for name, ours, theirs, _ in jobs:
            seconds[name][0].append(_timed(ours))
            seconds[name][1].append(_timed(theirs))
        print(f"   round {r + 1}/{args.rounds} done")
    print(f"   {monitor.report()}\n")
    print("| job | sabot_lab s min / median / max | sabot_lab M events/s (median) | "
          "DuckDB s min / median / max | DuckDB M events/s (median) | "
          "ratio per round min / median / max | target | met |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, _, _, target in jobs:
        ours_s, theirs_s = seconds[name]
        ratios = [t / o for o, t in zip(ours_s, theirs_s, strict=True)]
        o, t, q = _stats(ours_s), _stats(theirs_s), _stats(ratios)
        print(f"| {name} | {o[0]:.3f} / {o[1]:.3f} / {o[2]:.3f} | {args.events / o[1] / 1e6:.1f} "
              f"| {t[0]:.3f} / {t[1]:.3f} / {t[2]:.3f} | {args.events / t[1] / 1e6:.1f} | "
              f"{q[0]:.2f}x / {q[1]:.2f}x / {q[2]:.2f}x | >= {target:.1f}x | "
              f"{'met' if q[0] >= target else 'not met'} |")
    if not args.no_latency:
        print("\nfiring latency (from the batch that passes a window's end entering the "
              "watermark operator to the window's rows at the sink; target p99 < 5 ms):")
        latency_jobs = {
            "exact p95/p99": (sl.quantile("v", 0.95), sl.quantile("v", 0.99)),
            "sketch p95/p99": (sl.approx_quantile("v", 0.95), sl.approx_quantile("v", 0.99)),
            "count/sum/mean only": ()}
        for name, quantiles in latency_jobs.items():
            extra = dict(zip(("p95", "p99"), quantiles, strict=False))
            for batch_size in (65_536, 8_192):
                p99s = []
                for _ in range(args.rounds):
                    latency = firing_latencies(
                        table, lambda s, extra=extra: s.with_watermark("ts").window(
                            sl.tumbling("5min")).group_by("key").agg(
                            n=sl.count(), total=sl.sum("v"), mean=sl.mean("v"), **extra),
                        batch_size)
                    p99s.append(float(np.percentile(latency, 99)))
                low, mid, high = _stats(p99s)
                print(f"   {name}, {batch_size:,}-row batches, {len(latency)} firings per run: "
                      f"p50 {np.percentile(latency, 50):.1f} ms (last run); p99 over "
                      f"{args.rounds} runs min / median / max {low:.1f} / {mid:.1f} / "
                      f"{high:.1f} ms: {'met' if high < 5 else 'not met'}")
    print(f"\nmachine: {cores()} cores ({cpu_model()}), python {platform.python_version()}, "
          f"pyarrow {pa.__version__}, duckdb {duckdb.__version__}, numpy {np.__version__}, "
          f"numba {numba.__version__}, sabot_lab {sl.__version__} (git {git_revision()}); "
          f"load average now {load_average()}; window results per run: "
          f"{pc.count(duckdb_windows(con)['n']).as_py():,}")


if __name__ == "__main__":
    main()
