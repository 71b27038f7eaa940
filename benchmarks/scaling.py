"""Benchmark: throughput and peak memory of each pattern at 1x, 2x, 5x and 10x its data.

Every job reads Parquet and writes Parquet (``sl.Stream.from_parquet`` -> ``to_parquet``), so
nothing but state and buffers needs to stay in memory: 10x the data should not need 10x the
memory for enrichment and analytics. The jobs (1x = ``--base-rows`` defaults below):

* ``enrichment`` (1x = 2M quotes): ``enrich_quotes(sl.Stream.from_parquet(dir),
  sl.Table(securities(), key="instrument_id"))``; no state beyond the 10,000-row reference.
* ``fraud`` (1x = 500K transactions): ``detect_fraud(sl.Stream.from_parquet(file))`` over
  ``datasets.transactions(n, n_accounts=n // 10)``: per-account state, so the state grows
  with the accounts, 10x at 10x (reported as ``state MB``, the keyed state's own gauge).
* ``analytics`` (1x = 2M clicks, ~17 minutes of event time): ``datasets.clicks`` with
  ``.with_watermark("event_time", max_out_of_orderness="10s").window(sl.tumbling("1min"))
  .group_by("path").agg(clicks=count, bytes=sum, mean_latency_ms=mean,
  p99_latency_ms=quantile(0.99))``: the exact quantile keeps the values of the open windows
  (about two minutes of rows, whatever the scale); the ~0.1% late rows go to the ``late`` side
  output, which a Result keeps in memory.

Data is written before anything is measured, to a temporary directory (deleted at the end
unless ``--keep``), in row groups of 100,000 rows. Quotes and clicks are one generated stream
cut into 1x-sized files; scale ``s`` is a directory of hard links to the first ``s`` files (the
first ``s`` x 1x rows of the stream). Transactions are generated per scale (their accounts
scale with the rows).

Each run (pattern, scale, runner) is a fresh process (``scaling.py --one PATTERN SCALE
RUNNER``), so runs do not share a memory high-water mark. It builds the runner (``local``:
``sl.LocalRunner()``; ``dask``: ``sl.DaskRunner(n_workers=2, threads_per_worker=1)``, a fresh
LocalCluster), runs the job once on the first 4 row groups (warm-up: imports, numba kernels),
resets the peak-RSS counters, then times the job (``time.perf_counter`` around
``stream.to_parquet(path, runner)``, optimizer included, cluster start not) and reads the peak
RSS of this process and, for Dask, of each worker process.

Peak RSS is ``VmHWM`` from ``/proc/<pid>/status``, reset after the warm-up by writing ``5`` to
``/proc/<pid>/clear_refs`` (Linux >= 4.0): the peak of the timed run alone. Not
``getrusage().ru_maxrss``: Linux carries it over ``fork``/``exec``, so a child started by a
parent that once held 1.5 GB reports at least 1.5 GB (measured here; the JSON of every run
keeps ``ru_maxrss`` for comparison). ``client`` is the process that runs the job: for Dask it
also holds the scheduler and the nannies of the LocalCluster. ``workers`` is the sum over the
two worker processes. ``base`` is the RSS at the reset (after imports, cluster start and
warm-up); the peak includes it. The outputs of the two runners are checked to agree (rows,
and the sum of one column) at every scale.

Run it from the repository root::

    .venv/bin/python benchmarks/scaling.py                   # 1x 2x 5x 10x, ~11 min busy
    .venv/bin/python benchmarks/scaling.py --quick           # 1x and 2x, ~4 min
    .venv/bin/python benchmarks/scaling.py --runners dask --partitions-per-worker 10
    .venv/bin/python benchmarks/scaling.py --max-scale 5 --patterns enrichment --markdown
    .venv/bin/python benchmarks/scaling.py --json benchmarks/results/scaling.json

``--json PATH`` also writes the run's record for ``benchmarks/report.py``: both tables, every
run's measurements and the growth verdicts (a bound is met only when the peak at the largest
scale is within ``BOUND`` times the peak at 1x; fraud has no bound, its state grows).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import (
    Record,
    TreeCpuMonitor,
    add_json_option,
    cores,
    cpu_model,
    describe_background,
    format_table,
    git_revision,
    load_average,
)

import sabot_lab as sl

#: 1x per pattern, in input rows.
BASE_ROWS = {"enrichment": 2_000_000, "fraud": 500_000, "analytics": 2_000_000}
PATTERNS = tuple(BASE_ROWS)
RUNNERS = ("local", "dask")
SCALES = (1, 2, 5, 10)
ROW_GROUP_ROWS = 100_000
#: Row groups of the warm-up input: 4, so every Dask partition (2 workers x 2) gets one.
WARM_ROW_GROUPS = 4
#: The output column whose sum checks that both runners wrote the same rows.
CHECK_COLUMN = {"enrichment": "notional", "fraud": "severity", "analytics": "bytes"}
#: A streaming job is called bounded when its peak RSS (client + workers) at the largest
#: scale is at most this many times its peak at 1x.
BOUND = 1.5
RESULT_MARK = "SCALING_RESULT "


# --- environment ----------------------------------------------------------------------------


def _memory(reset: bool = False) -> dict[str, int]:
    """This process's current and peak RSS (bytes), and ``ru_maxrss``; ``reset`` then sets
    the peak back to the current RSS. Runs here and, through ``client.run``, on workers."""
    import resource

    with open("/proc/self/status", encoding="utf-8") as f:
        status = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f
                  if line.startswith(("VmRSS", "VmHWM"))}
    out = {"rss": status["VmRSS"], "peak": status["VmHWM"],
           "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if reset:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    return out


class CpuClock:
    """CPU seconds of this process, of its live descendants (the LocalCluster's workers) and
    of the whole machine (``/proc/stat``, steal apart), and wall seconds."""

    def __init__(self) -> None:
        self.me = psutil.Process()

    def sample(self) -> tuple[float, float, float, float]:
        own = sum(self.me.cpu_times()[:2])
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a process that just ended
                own += sum(child.cpu_times()[:2])
        times = psutil.cpu_times()
        busy = sum(getattr(times, n, 0.0) for n in ("user", "nice", "system", "irq", "softirq"))
        return own, busy, getattr(times, "steal", 0.0), time.perf_counter()

    @staticmethod
    def background(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
        """Cores busy outside this process tree, and cores stolen, between two samples."""
        own, busy, steal, wall = (y - x for x, y in zip(a, b, strict=True))
        return max(busy - own, 0.0) / wall, steal / wall


# --- data (written by the parent before any measurement) -------------------------------------


class RowGroupWriter:
    """Writes batches to a Parquet file in row groups of exactly ``ROW_GROUP_ROWS`` rows
    (``ParquetWriter`` closes a row group at every ``write_*`` call, so rows are buffered)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.writer = pq.ParquetWriter(path, schema)
        self.schema = schema
        self.pending: list[pa.RecordBatch] = []
        self.buffered = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.buffered += batch.num_rows
        while self.buffered >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(self.pending, self.schema)
            self.writer.write_table(table.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
            rest = table.slice(ROW_GROUP_ROWS)
            self.pending, self.buffered = rest.to_batches(), rest.num_rows

    def close(self) -> None:
        if self.buffered:
            self.writer.write_table(pa.Table.from_batches(self.pending, self.schema),
                                    row_group_size=ROW_GROUP_ROWS)
        self.writer.close()


def _split_stream(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows_per_file: int,
                  paths: Sequence[Path]) -> None:
    """Cut one batch stream into consecutive files of ``rows_per_file`` rows."""
    it = iter(batches)
    carry: pa.RecordBatch | None = None
    for path in paths:
        writer = RowGroupWriter(path, schema)
        left = rows_per_file
        while left > 0:
            batch = carry if carry is not None else next(it)
            carry = None
            if batch.num_rows > left:
                batch, carry = batch.slice(0, left), batch.slice(left)
            writer.write(batch)
            left -= batch.num_rows
        writer.close()


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_data(pattern: str, base: int, scales: Sequence[int], root: Path) -> dict[str, Path]:
    """The inputs of ``pattern``: ``{"warm": dir, "1": dir, "2": dir, ...}``."""
    from sabot_lab.datasets import click_batches, quote_batches, transactions
    from sabot_lab.datasets.clicks import CLICKS_SCHEMA
    from sabot_lab.datasets.market import QUOTES_SCHEMA

    top = root / pattern
    dirs = {str(s): top / f"x{s}" for s in scales}
    for d in dirs.values():
        d.mkdir(parents=True)
    first: Path
    if pattern == "fraud":
        for s in scales:
            n = s * base
            table = transactions(n, n_accounts=n // 10)
            pq.write_table(table, dirs[str(s)] / "part-000.parquet",
                           row_group_size=ROW_GROUP_ROWS)
            del table
            gc.collect()
        first = dirs[str(min(scales))] / "part-000.parquet"
    else:
        parts = top / "parts"
        parts.mkdir()
        files = [parts / f"part-{i:03d}.parquet" for i in range(max(scales))]
        if pattern == "enrichment":
            stream, schema = quote_batches(max(scales) * base), QUOTES_SCHEMA
        else:
            stream, schema = click_batches(max(scales) * base), CLICKS_SCHEMA
        _split_stream(stream, schema, base, files)
        for s in scales:
            for f in files[:s]:
                _link(f, dirs[str(s)] / f.name)
        first = files[0]
    # The warm-up input: the first row groups of the 1x data.
    warm = top / "warm"
    warm.mkdir()
    source = pq.ParquetFile(first)
    pq.write_table(source.read_row_groups(range(min(WARM_ROW_GROUPS, source.num_row_groups))),
                   warm / "part-000.parquet", row_group_size=ROW_GROUP_ROWS)
    dirs["warm"] = warm
    return dirs


def dir_stats(path: Path) -> tuple[int, int, int]:
    """Rows, row groups and bytes of the Parquet files in ``path``."""
    rows = groups = size = 0
    for f in sorted(path.glob("*.parquet")):
        meta = pq.ParquetFile(f).metadata
        rows, groups, size = rows + meta.num_rows, groups + meta.num_row_groups, \
            size + f.stat().st_size
    return rows, groups, size


# --- one measured run (in its own process) ---------------------------------------------------


def build_job(pattern: str, path: Path) -> sl.Stream:
    """The job of ``pattern`` reading the Parquet files under ``path``."""
    source = sl.Stream.from_parquet(path)
    if pattern == "enrichment":
        from sabot_lab.datasets import securities
        from sabot_lab.patterns.enrichment import enrich_quotes

        return enrich_quotes(source, _reference(securities))
    if pattern == "fraud":
        from sabot_lab.patterns.fraud import detect_fraud

        return detect_fraud(source)
    return (source.with_watermark("event_time", max_out_of_orderness="10s")
            .window(sl.tumbling("1min")).group_by("path")
            .agg(clicks=sl.count(), bytes=sl.sum("bytes"), mean_latency_ms=sl.mean("latency_ms"),
                 p99_latency_ms=sl.quantile("latency_ms", 0.99)))


_REFERENCE: list[sl.Table] = []


def _reference(securities: object) -> sl.Table:
    """The securities reference, built once per process (not timed)."""
    if not _REFERENCE:
        _REFERENCE.append(sl.Table(securities(), key="instrument_id"))
    return _REFERENCE[0]


def digest(path: Path, column: str) -> tuple[int, float]:
    """Rows of a Parquet file and the sum of ``column``, read a row group at a time."""
    f = pq.ParquetFile(path)
    total = 0.0
    for batch in f.iter_batches(columns=[column]):
        total += float(pc.sum(batch.column(0)).as_py() or 0)
    return f.metadata.num_rows, total


def run_one(pattern: str, scale: int, runner_name: str, data: Path, out: Path,
            partitions_per_worker: int | None) -> dict[str, object]:
    """Warm up, reset the peak counters, time the job once; everything the parent reports."""
    record: dict[str, object] = {"pattern": pattern, "scale": scale, "runner": runner_name}
    client = None
    if runner_name == "dask":
        kwargs = {} if partitions_per_worker is None else {
            "partitions_per_worker": partitions_per_worker}
        runner = sl.DaskRunner(n_workers=2, threads_per_worker=1, **kwargs)
        client = runner.client
        record["startup_ms"] = runner.startup_ms
        record["partitions"] = runner.partitions_per_worker * sum(client.nthreads().values())
    else:
        runner = sl.LocalRunner()
        record["threads"] = runner.threads
    try:
        warm = out / "warm.parquet"
        t0 = time.perf_counter()
        build_job(pattern, data / "warm").to_parquet(warm, runner)
        record["warm_s"] = time.perf_counter() - t0
        warm.unlink()
        job = build_job(pattern, data / f"x{scale}")
        gc.collect()
        clock = CpuClock()
        base = _memory(reset=True)
        workers_base = client.run(_memory, True) if client is not None else {}
        a = clock.sample()
        t0 = time.perf_counter()
        result = job.to_parquet(out / "out.parquet", runner)
        seconds = time.perf_counter() - t0
        b = clock.sample()
        peak = _memory()
        workers_peak = client.run(_memory) if client is not None else {}
    finally:
        if client is not None:
            runner.close()
    state = result.metrics.get("state_bytes")
    record.update(
        seconds=seconds, rows_in=result.rows_in,
        client_base=base["rss"], client_peak=peak["peak"], client_ru_maxrss=peak["ru_maxrss"],
        workers_base=[m["rss"] for m in workers_base.values()],
        workers_peak=[m["peak"] for m in workers_peak.values()],
        workers_ru_maxrss=[m["ru_maxrss"] for m in workers_peak.values()],
        state_bytes=float(state.fillna(0).sum()) if state is not None else 0.0,
        side_rows={k: v.num_rows for k, v in result.side_outputs.items()},
    )
    record["background_cores"], record["steal_cores"] = CpuClock.background(a, b)
    record["rows_out"], record["check_sum"] = digest(out / "out.parquet", CHECK_COLUMN[pattern])
    return record


def child_main(args: argparse.Namespace) -> None:
    pattern, scale, runner = args.one
    out = Path(tempfile.mkdtemp(prefix="sabot_scaling_out_", dir=args.data))
    try:
        record = run_one(pattern, int(scale), runner, Path(args.data) / pattern, out,
                         args.partitions_per_worker)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(RESULT_MARK + json.dumps(record), flush=True)


# --- the parent: data, one process per run, the table ---------------------------------------


@dataclass
class Run:
    pattern: str
    scale: int
    runner: str
    rows: int
    record: dict[str, object] | None = None
    error: str | None = None
    wall_s: float = 0.0

    def mb(self, key: str) -> float:
        value = self.record[key] if self.record else 0
        return (sum(value) if isinstance(value, list) else float(value)) / 2**20

    @property
    def total_peak(self) -> float:
        return self.mb("client_peak") + self.mb("workers_peak")


def measure(pattern: str, scale: int, runner: str, rows: int, root: Path,
            args: argparse.Namespace) -> Run:
    """Run one configuration in a fresh process and parse what it printed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", pattern, str(scale), runner,
           "--data", str(root)]
    if args.partitions_per_worker is not None:
        cmd += ["--partitions-per-worker", str(args.partitions_per_worker)]
    run = Run(pattern, scale, runner, rows)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        run.error = f"timed out after {args.timeout:.0f} s"
        return run
    finally:
        run.wall_s = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            run.record = json.loads(line[len(RESULT_MARK):])
    if run.record is None:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        reason = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else \
            f"exit {proc.returncode}"
        run.error = f"{reason}: {tail[0][:200]}"
    return run


HEADERS = ("pattern", "runner", "scale", "input rows", "rows out", "s", "rows/s (M)",
           "client base MB", "client peak MB", "workers base MB", "workers peak MB",
           "state MB", "peak vs 1x", "bg cores")


def table_rows(runs: Sequence[Run]) -> list[list[str]]:
    ones = {(r.pattern, r.runner): r for r in runs if r.scale == 1 and r.record}
    out = []
    for r in runs:
        head = [r.pattern, r.runner, f"{r.scale}x", f"{r.rows:,}"]
        if r.record is None:
            out.append([*head, "failed", r.error or "", *[""] * (len(HEADERS) - 6)])
            continue
        rec = r.record
        dask = r.runner == "dask"
        one = ones.get((r.pattern, r.runner))
        ratio = f"{r.total_peak / one.total_peak:.2f}x" if one else "n/a"
        out.append([
            *head, f"{rec['rows_out']:,}", f"{rec['seconds']:.2f}",
            f"{rec['rows_in'] / rec['seconds'] / 1e6:.2f}",
            f"{r.mb('client_base'):,.0f}", f"{r.mb('client_peak'):,.0f}",
            f"{r.mb('workers_base'):,.0f}" if dask else "-",
            f"{r.mb('workers_peak'):,.0f}" if dask else "-",
            f"{rec['state_bytes'] / 2**20:,.0f}" if rec["state_bytes"] else "-",
            ratio, f"{rec['background_cores']:.2f}"])
    return out


GROWTH_HEADERS = ("pattern", "runner", "data", "peak (client + workers)",
                  "above base (client + workers)", "client peak", "workers peak", "verdict")


def _above_base(r: Run) -> float:
    return r.total_peak - r.mb("client_base") - r.mb("workers_base")


def growth_results(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Peak RSS at the largest scale measured over 1x, per pattern and runner; the bound
    (``target``) applies to every pattern but fraud, whose state grows with its accounts."""
    out = []
    done = [r for r in runs if r.record]
    for pattern in dict.fromkeys(r.pattern for r in runs):
        for runner in dict.fromkeys(r.runner for r in runs):
            mine = [r for r in done if r.pattern == pattern and r.runner == runner]
            one = next((r for r in mine if r.scale == 1), None)
            top = max(mine, key=lambda r: r.scale, default=None)
            if one is None or top is None or top is one:
                continue
            ratio = top.total_peak / one.total_peak
            target = None if pattern == "fraud" else BOUND
            out.append({
                "kind": "growth", "pattern": pattern, "runner": runner, "scale": top.scale,
                "peak_ratio": ratio,
                "above_base_ratio": _above_base(top) / max(_above_base(one), 1.0),
                "client_peak_ratio": top.mb("client_peak") / one.mb("client_peak"),
                "workers_peak_ratio": (top.mb("workers_peak") / one.mb("workers_peak")
                                       if runner == "dask" else None),
                "target": target, "met": None if target is None else ratio <= target})
    return out


def growth_cells(row: dict[str, Any]) -> list[str]:
    """The printed row of a :func:`growth_results` row, with its verdict."""
    if row["target"] is None:
        verdict = "state grows with accounts (expected)"
    elif row["met"]:
        verdict = f"bounded (<= {row['target']}x)"
    else:
        verdict = f"GROWS with the data (> {row['target']}x)"
    workers = row["workers_peak_ratio"]
    return [row["pattern"], row["runner"], f"{row['scale']}x", f"{row['peak_ratio']:.2f}x",
            f"{row['above_base_ratio']:.2f}x", f"{row['client_peak_ratio']:.2f}x",
            "-" if workers is None else f"{workers:.2f}x", verdict]


def run_results(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Every run's measurements (bytes, seconds), as its process reported them."""
    return [{"kind": "run", "pattern": r.pattern, "scale": r.scale, "runner": r.runner,
             "input_rows": r.rows, "error": r.error, "process_seconds": r.wall_s,
             "measured": r.record} for r in runs]


def agreement(runs: Sequence[Run]) -> list[str]:
    """Local and Dask outputs compared at every scale: rows and the check column's sum."""
    lines = []
    by_key: dict[tuple[str, int], dict[str, Run]] = {}
    for r in runs:
        if r.record:
            by_key.setdefault((r.pattern, r.scale), {})[r.runner] = r
    for (pattern, scale), pair in by_key.items():
        if len(pair) < 2:
            continue
        a, b = pair["local"].record, pair["dask"].record
        same = a["rows_out"] == b["rows_out"] and math.isclose(
            a["check_sum"], b["check_sum"], rel_tol=1e-9, abs_tol=1e-6)
        lines.append(f"{pattern} {scale}x: " + (
            f"agree ({a['rows_out']:,} rows, sum({CHECK_COLUMN[pattern]}) = "
            f"{a['check_sum']:,.2f})" if same else
            f"DISAGREE: local {a['rows_out']:,} rows / {a['check_sum']!r}, dask "
            f"{b['rows_out']:,} rows / {b['check_sum']!r}"))
    return lines




def _dask_version() -> str:
    import dask
    import distributed

    return f"{dask.__version__}/{distributed.__version__}"


def parent_main(args: argparse.Namespace) -> None:
    scales = [s for s in (args.scales or SCALES) if s <= args.max_scale]
    if args.quick:
        scales = [s for s in scales if s <= 2]
    if 1 not in scales:
        scales = [1, *scales]
    scales = sorted(set(scales))
    base = {p: args.base_rows.get(p, BASE_ROWS[p]) for p in args.patterns}
    print(f"scaling benchmark: {', '.join(args.patterns)} at {', '.join(f'{s}x' for s in scales)}"
          f" ({', '.join(f'{p} 1x = {n:,} rows' for p, n in base.items())}), Parquet in and "
          f"out, runners {', '.join(args.runners)}, one process per run", flush=True)
    print(f"   before start: load average {load_average()}", flush=True)
    record = Record("scaling", ("dask", "distributed", "psutil"))
    root = Path(tempfile.mkdtemp(prefix="sabot_scaling_", dir=args.tmp))
    try:
        inputs: dict[str, dict[str, Path]] = {}
        rows: dict[tuple[str, int], int] = {}
        for pattern in args.patterns:
            t0 = time.perf_counter()
            inputs[pattern] = write_data(pattern, base[pattern], scales, root)
            stats = {s: dir_stats(inputs[pattern][str(s)]) for s in scales}
            for s in scales:
                rows[(pattern, s)] = stats[s][0]
            top = stats[max(scales)]
            print(f"   wrote {pattern} data in {time.perf_counter() - t0:.1f} s (not timed): "
                  f"{max(scales)}x = {top[0]:,} rows, {top[1]} row groups, "
                  f"{top[2] / 2**20:,.0f} MiB", flush=True)

        runs: list[Run] = []
        monitor = TreeCpuMonitor()
        for pattern in args.patterns:
            for s in scales:
                for runner in args.runners:
                    run = measure(pattern, s, runner, rows[(pattern, s)], root, args)
                    runs.append(run)
                    if run.record is None:
                        print(f"   {pattern:<10} {s:>2}x {runner:<5} FAILED ({run.wall_s:.0f} s):"
                              f" {run.error}", flush=True)
                        continue
                    rec = run.record
                    workers = (f", workers {run.mb('workers_peak'):,.0f} MiB"
                               if runner == "dask" else "")
                    print(f"   {pattern:<10} {s:>2}x {runner:<5} {rec['seconds']:7.2f} s, "
                          f"peak client {run.mb('client_peak'):,.0f} MiB{workers} "
                          f"(process {run.wall_s:.0f} s, background "
                          f"{rec['background_cores']:.2f} cores)", flush=True)
        background = monitor.cores_elsewhere()
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    md = args.markdown
    print()
    title = ("throughput and peak RSS per scale (MB = MiB; workers = sum of the 2 worker "
             "processes; peak vs 1x = (client + workers) peak over the same at 1x; bg cores = "
             "CPU busy outside the run's processes while it timed)")
    print(f"== {title}")
    rows = table_rows(runs)
    print(format_table(HEADERS, rows, md, left=(0, 1)))
    record.add_table("runs", title, HEADERS, rows, left=(0, 1))
    print()
    title = (f"growth of peak RSS from 1x to {max(scales)}x ({max(scales)}x the rows; above "
             f"base = peak minus the RSS before the run)")
    print(f"== {title}")
    growth = growth_results(runs)
    if growth:
        growth_rows = [growth_cells(g) for g in growth]
        print(format_table(GROWTH_HEADERS, growth_rows, md, left=(0, 1, 7)))
        record.add_table("growth", title, GROWTH_HEADERS, growth_rows, left=(0, 1, 7))
    print()
    print("== local and Dask outputs")
    for line in agreement(runs) or ["(one runner only: nothing to compare)"]:
        print("   " + line)
    print()
    notes = []
    if "local" in args.runners:
        threads = next((r.record.get("threads") for r in runs
                        if r.record and r.runner == "local"), "?")
        notes.append(f"LocalRunner threads {threads}")
    if "dask" in args.runners:
        parts = next((r.record.get("partitions") for r in runs
                      if r.record and r.runner == "dask"), "?")
        notes.append(f"DaskRunner 2 workers x 1 thread, {parts} partitions")
    print(f"machine: {cores()} cores ({cpu_model()}), "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python "
          f"{platform.python_version()}, pyarrow {pa.__version__}, dask/distributed "
          f"{_dask_version()}, numba {numba.__version__}, sabot_lab {sl.__version__} "
          f"(git {git_revision()}); {'; '.join(notes)}; Parquet row "
          f"groups of {ROW_GROUP_ROWS:,} rows; {describe_background(background)}; load average "
          f"{load_average()} at the end")
    if args.json is not None:
        compared = agreement(runs)
        differ = [line for line in compared if "DISAGREE" in line]
        if compared:
            record.note("local and Dask outputs: " + ("; ".join(differ) if differ else
                        "the same rows and check-column sums at every scale"))
        record.add_results([*run_results(runs), *growth])
        record.write(args.json, background)


def _base_rows(values: Sequence[str]) -> dict[str, int]:
    out = {}
    for v in values:
        name, _, n = v.partition("=")
        if name not in BASE_ROWS or not n.isdigit():
            raise argparse.ArgumentTypeError(f"expected PATTERN=ROWS, got {v!r}")
        out[name] = int(n)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    parser.add_argument("--scales", type=int, nargs="+", default=None,
                        help=f"multiples of 1x to run (default {' '.join(map(str, SCALES))})")
    parser.add_argument("--max-scale", type=int, default=max(SCALES),
                        help="skip scales above this")
    parser.add_argument("--quick", action="store_true", help="1x and 2x only")
    parser.add_argument("--base-rows", nargs="+", default=[], metavar="PATTERN=ROWS",
                        help="change 1x, e.g. fraud=200000")
    parser.add_argument("--partitions-per-worker", type=int, default=None,
                        help="DaskRunner partitions per worker thread (default: the runner's)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds before one run is given up")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the Parquet data")
    parser.add_argument("--tmp", default=None, help="where to write the data (default: $TMPDIR)")
    add_json_option(parser)
    parser.add_argument("--one", nargs=3, metavar=("PATTERN", "SCALE", "RUNNER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        child_main(args)
        return
    try:
        args.base_rows = _base_rows(args.base_rows)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    parent_main(args)


if __name__ == "__main__":
    main()
