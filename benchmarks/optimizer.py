"""Benchmark: what the PlanOptimizer buys on a seed-like enrichment job (optimize=False vs True).

The job is written the way a newcomer writes it: enrich first, filter later, select at the end::

    (sl.Stream.from_table(quotes)            # or sl.Stream.from_parquet(path)
       .enrich(sl.Table(securities, key="instrument_id"))   # all 30 security columns
       .filter(<about 10% of the quotes>)
       .select("quote_id", "ts", "price", "volume",          # a handful of quote columns
               "symbol", "sector", "currency", "market_cap"))  # and security columns

on the wide synthetic market data (``datasets.quotes(n)``: 20 columns; ``datasets.securities()``:
31 columns, 10,000 instruments). The same Stream runs with ``run(optimize=False)`` (the plan as
written: every quote is enriched with 30 columns, then 90% are thrown away) and ``run()``
(filter pushed below the enrich and into the source, only the needed columns read and added),
in one process, and the speedup is printed. Three predicates, each keeping about 10%:

* ``window``: a time window on ``ts`` (quotes' ``ts`` increases with ``quote_id``; the window
  spans rows 45%..55% of the data). From Parquet, row-group statistics skip ~90% of the file.
* ``price``: ``price > 180``. From Parquet, every row group may match: only columns are skipped.
* ``price+sector``: ``price > 60`` and ``sector`` in three sectors. The quote conjunct goes to
  the source; the security conjunct goes into the reference table (a smaller lookup).

Inputs: the in-memory Arrow table, and the same quotes written (untimed) to a temporary
Parquet file with 100,000-row row groups in natural (``quote_id``/``ts``) order, read with
``sl.Stream.from_parquet`` (the file is in the OS page cache: this measures decoding, not disk).

Method: per size, data is generated once; for every (input, predicate) the optimized and the
unoptimized results are checked to agree (row count, sums of ``price`` and ``market_cap`` to a
relative 1e-9, sorted ``quote_id`` equal; the script aborts otherwise; the optimized results
from memory and from Parquet must agree too). Each mode is warmed up once (the warm-up also
measures the peak Arrow memory allocated during the run, sampled), then timed ``--repeats``
times in interleaved rounds with ``time.perf_counter`` around ``stream.run(...)`` (optimizing
is inside the timed region); the table shows medians, and the speedup's range (worst: the
slowest optimized run against the fastest unoptimized one; best: the reverse); the target
counts as met only when the worst clears it. Rows/s are input quotes per second.
"cpu speedup" is the same ratio for process CPU seconds (all threads, ``time.process_time``),
which a busy machine distorts less. "selectivity" is output rows / input quotes (it includes
the ~3% of quotes the inner join drops: null or unknown ``instrument_id``). "peak MB" is the
Arrow memory allocated during the warm-up run, at its peak, above what was allocated before
(sampled every 2 ms). "row groups" (Parquet) is row groups that the optimized scan's filter
cannot exclude by their statistics / row groups in the file. Sizes run smallest first; a size
whose data or unoptimized run would not fit in memory (extrapolated from the smaller size) is
skipped or run optimized only, and says so. Each size's data is freed before the next.

The machine is shared: load average and the CPU used by other processes while timing are
printed; re-run when they are high. ``--explain`` also prints, per case, the executed optimized
plan with rows and times, and the seconds per operator of both plans.

Run it from the repository root::

    .venv/bin/python benchmarks/optimizer.py                      # 1.2M and 12M quotes
    .venv/bin/python benchmarks/optimizer.py --sizes 1200000 --repeats 5 --markdown
    .venv/bin/python benchmarks/optimizer.py --inputs parquet --predicates window --explain
    .venv/bin/python benchmarks/optimizer.py --json benchmarks/results/optimizer.json

``--json PATH`` also writes the run's record for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from common import (
    CpuMonitor,
    Record,
    add_json_option,
    cores,
    format_table,
    git_revision,
    load_average,
    spread,
    target_cell,
    versus,
)

import sabot_lab as sl
from sabot_lab.datasets import quotes, securities
from sabot_lab.expr import Expr
from sabot_lab.plan.nodes import Enrich, Fused, Source

KEY = "instrument_id"
SELECTED = ("quote_id", "ts", "price", "volume", "symbol", "sector", "currency", "market_cap")
PREDICATES = ("window", "price", "price+sector")
INPUTS = ("memory", "parquet")
ROW_GROUP_ROWS = 100_000
PRICE_MIN = 180.0
SECTOR_PRICE_MIN = 60.0
SECTORS = ("Materials", "Energy", "Utilities")
SUM_REL_TOL = 1e-9
#: The goal from the issue.
TARGET_SPEEDUP = 15.0
#: Use at most this fraction of the memory available when a size starts.
MEMORY_BUDGET = 0.8
GB = 1 << 30
MB = 1 << 20


# --- machine -------------------------------------------------------------------------------


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _max_rss_bytes() -> int:
    """The process's peak resident memory so far."""
    try:
        import resource
    except ImportError:  # not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class PeakArrow:
    """Peak Arrow-allocated memory while the block runs, above what was allocated before.

    Sampled by a thread every ``interval`` seconds (so short spikes can be missed). Arrow's
    allocator keeps freed pages, so RSS deltas say little after the first run; this does.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, pa.total_allocated_bytes())

    def __enter__(self) -> PeakArrow:
        gc.collect()
        self.before = self.peak = pa.total_allocated_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, pa.total_allocated_bytes())

    @property
    def above(self) -> int:
        """Peak allocation above the allocation before the block, in bytes."""
        return self.peak - self.before


# --- the job -------------------------------------------------------------------------------


def predicate(name: str, window: tuple[object, object]) -> Expr:
    """The filter of predicate variant ``name`` (``window``: the ts bounds)."""
    if name == "window":
        lo, hi = window
        return (sl.col("ts") >= lo) & (sl.col("ts") < hi)
    if name == "price":
        return sl.col("price") > PRICE_MIN
    if name == "price+sector":
        return (sl.col("price") > SECTOR_PRICE_MIN) & sl.col("sector").isin(list(SECTORS))
    raise ValueError(f"unknown predicate {name!r}")


def seed_job(source: sl.Stream, reference: sl.Table, where: Expr) -> sl.Stream:
    """Enrich first, filter later, select at the end: as a newcomer writes it."""
    return source.enrich(reference).filter(where).select(*SELECTED)


def time_window(q: pa.Table) -> tuple[object, object]:
    """``ts`` bounds of rows 45%..55% (``ts`` increases with the row number)."""
    n = q.num_rows
    return q["ts"][int(n * 0.45)].as_py(), q["ts"][int(n * 0.55)].as_py()


# --- correctness ---------------------------------------------------------------------------


@dataclass
class Digest:
    rows: int
    price_sum: float
    market_cap_sum: float
    quote_ids: np.ndarray  # sorted

    def mismatch(self, other: Digest) -> str | None:
        if self.rows != other.rows:
            return f"row count {self.rows:,} vs {other.rows:,}"
        for name in ("price_sum", "market_cap_sum"):
            a, b = getattr(self, name), getattr(other, name)
            if not math.isclose(a, b, rel_tol=SUM_REL_TOL):
                return f"{name} {a!r} vs {b!r}"
        if not np.array_equal(self.quote_ids, other.quote_ids):
            return "sorted quote_id differ"
        return None


def digest(table: pa.Table) -> Digest:
    def total(name: str) -> float:
        return float(pc.sum(table[name]).as_py() or 0.0)

    ids = np.sort(table["quote_id"].to_numpy())
    return Digest(table.num_rows, total("price"), total("market_cap"), ids)


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Row:
    input: str
    predicate: str
    rows: int
    rows_out: int = 0
    unopt: list[float] = field(default_factory=list)
    opt: list[float] = field(default_factory=list)
    unopt_cpu: list[float] = field(default_factory=list)
    opt_cpu: list[float] = field(default_factory=list)
    unopt_mem: int | None = None
    opt_mem: int | None = None
    row_groups: str = ""

    @property
    def selectivity(self) -> float:
        return self.rows_out / self.rows if self.rows else float("nan")

    @staticmethod
    def _median(times: list[float]) -> float | None:
        return statistics.median(times) if times else None

    @property
    def unopt_s(self) -> float | None:
        return self._median(self.unopt)

    @property
    def opt_s(self) -> float | None:
        return self._median(self.opt)

    @property
    def speedup(self) -> float | None:
        if self.unopt_s is None or self.opt_s is None:
            return None
        return self.unopt_s / self.opt_s

    @property
    def speedup_range(self) -> dict[str, Any] | None:
        """The speedup (:func:`common.versus` of the optimized runs against the unoptimized
        ones) with the target, or ``None`` when the unoptimized plan was not run."""
        if not self.unopt or not self.opt:
            return None
        return versus(self.opt, self.unopt, TARGET_SPEEDUP)

    @property
    def cpu_speedup(self) -> float | None:
        """The ratio of process CPU seconds (all threads): less sensitive to a busy machine."""
        if not self.unopt_cpu or not self.opt_cpu:
            return None
        return statistics.median(self.unopt_cpu) / statistics.median(self.opt_cpu)


def _timed(run: Callable[[], sl.Result]) -> tuple[float, float, sl.Result]:
    """Wall-clock and process CPU seconds of ``run()``, and its result."""
    cpu, start = time.process_time(), time.perf_counter()
    result = run()
    return time.perf_counter() - start, time.process_time() - cpu, result


def _source_predicate(result: sl.Result) -> Expr | None:
    for node in result.executed_plan.nodes:
        if isinstance(node, Source):
            return node.predicate
    return None


def _reference_rows(result: sl.Result) -> int | None:
    for node in result.executed_plan.nodes:
        inner = node.stages if isinstance(node, Fused) else (node,)
        for stage in inner:
            if isinstance(stage, Enrich):
                return stage.reference.num_rows
    return None


def row_groups_read(path: Path, where: Expr | None) -> tuple[int, int]:
    """(row groups whose statistics may match ``where``, row groups in the file)."""
    dataset = ds.dataset(path, format="parquet")
    fragments = list(dataset.get_fragments())
    total = sum(f.num_row_groups for f in fragments)
    if where is None:
        return total, total
    kept = sum(len(f.split_by_row_group(filter=where.to_pyarrow())) for f in fragments)
    return kept, total


def measure(
    stream: sl.Stream,
    row: Row,
    runner: sl.LocalRunner,
    repeats: int,
    run_unoptimized: bool,
    parquet_path: Path | None,
) -> tuple[sl.Result, sl.Result | None]:
    """Check, warm up (measuring memory), time; returns the last optimized/unoptimized results."""
    with PeakArrow() as mem:
        opt_result = stream.run(runner, optimize=True)
    row.opt_mem = mem.above
    row.rows_out = opt_result.table.num_rows
    unopt_result = None
    if run_unoptimized:
        with PeakArrow() as mem:
            unopt_result = stream.run(runner, optimize=False)
        row.unopt_mem = mem.above
        problem = digest(opt_result.table).mismatch(digest(unopt_result.table))
        if problem is not None:
            sys.exit(f"ABORT: {row.input} {row.predicate} n={row.rows:,}: optimized and "
                     f"unoptimized results differ: {problem}")
    if parquet_path is not None:
        kept, total = row_groups_read(parquet_path, _source_predicate(opt_result))
        row.row_groups = f"{kept}/{total}"
    for _ in range(repeats):
        if run_unoptimized:
            unopt_result = None
            gc.collect()
            seconds, cpu, unopt_result = _timed(lambda: stream.run(runner, optimize=False))
            row.unopt.append(seconds)
            row.unopt_cpu.append(cpu)
        opt_result = None
        gc.collect()
        seconds, cpu, opt_result = _timed(lambda: stream.run(runner, optimize=True))
        row.opt.append(seconds)
        row.opt_cpu.append(cpu)
    return opt_result, unopt_result


# --- output --------------------------------------------------------------------------------


HEADERS = ("input", "predicate", "rows", "selectivity", "unopt s", "opt s", "speedup",
           "speedup (worst-best)", "cpu speedup", "unopt rows/s", "opt rows/s", "unopt peak MB",
           "opt peak MB", "row groups", "target")


def _rate(rows: int, seconds: float | None) -> str:
    if seconds is None:
        return "-"
    rate = rows / seconds
    return f"{rate / 1e6:,.1f}M" if rate >= 1e6 else f"{rate / 1e3:,.0f}k"


def _cells(r: Row) -> list[str]:
    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    def mem(v: int | None) -> str:
        return "-" if v is None else f"{v / MB:,.0f}"

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}x"

    versus_unopt = r.speedup_range
    span = target = "-"
    if versus_unopt is not None:
        span = f"{versus_unopt['worst']:.1f}-{versus_unopt['best']:.1f}x"
        target = target_cell(versus_unopt)
    return [r.input, r.predicate, f"{r.rows:,}", f"{r.selectivity:.1%}", secs(r.unopt_s),
            secs(r.opt_s), ratio(r.speedup), span, ratio(r.cpu_speedup),
            _rate(r.rows, r.unopt_s), _rate(r.rows, r.opt_s), mem(r.unopt_mem),
            mem(r.opt_mem), r.row_groups or "-", target]


def result_row(r: Row) -> dict[str, Any]:
    """The machine-readable row of the record."""
    return {"input": r.input, "predicate": r.predicate, "rows": r.rows, "rows_out": r.rows_out,
            "unoptimized_seconds": spread(r.unopt) if r.unopt else None,
            "optimized_seconds": spread(r.opt), "speedup": r.speedup_range,
            "cpu_speedup_median": r.cpu_speedup, "unoptimized_peak_bytes": r.unopt_mem,
            "optimized_peak_bytes": r.opt_mem, "row_groups": r.row_groups or None}


def block(title: str, text: str, markdown: bool) -> str:
    if markdown:
        return f"\n**{title}**\n\n```\n{text}\n```"
    return f"\n--- {title}\n{text}"


def operator_times(result: sl.Result) -> str:
    """Seconds per operator (summed over threads) next to the run's wall-clock time."""
    frame = result.metrics[["operator", "rows_in", "rows_out", "seconds"]]
    lines = [f"wall {result.execution_time_ms / 1000:.3f} s; per operator (thread-seconds):"]
    for r in frame.itertuples(index=False):
        label = r.operator if len(r.operator) <= 70 else r.operator[:67] + "..."
        lines.append(f"  {r.seconds:8.3f} s  in={r.rows_in:>12,} out={r.rows_out:>12,}  {label}")
    return "\n".join(lines)


# --- driver --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_200_000, 12_000_000],
                        help="numbers of quotes (default: 1200000 12000000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    parser.add_argument("--predicates", nargs="+", choices=PREDICATES, default=list(PREDICATES))
    parser.add_argument("--threads", type=int, default=None,
                        help="LocalRunner threads (default: the runner's default)")
    parser.add_argument("--explain", action="store_true",
                        help="print the executed plans with rows and times, per operator")
    parser.add_argument("--tmpdir", default=None, help="where the temporary Parquet file goes")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


@dataclass
class State:
    """What carries over between sizes: measurements to extrapolate memory from, output."""

    args: argparse.Namespace
    runner: sl.LocalRunner
    reference: sl.Table
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_row_data: float = 160.0  # bytes of quotes per row (measured after the first size)
    per_row_unopt: float | None = None  # worst unoptimized peak above baseline, per row
    shown_plans: bool = False


def _heading(text: str, markdown: bool) -> str:
    return f"\n## {text}" if markdown else f"\n=== {text}"


def memory_plan(state: State, n: int) -> bool | None:
    """Whether to run unoptimized at size ``n`` (``None``: skip the size), from measurements."""
    available = _available_bytes()
    if available is None:
        return True
    budget = MEMORY_BUDGET * available
    data = n * state.per_row_data * (1.5 if "parquet" in state.args.inputs else 1.0)
    if data > budget:
        note = (f"{n:,} quotes skipped: the data alone needs ~{data / GB:.1f} GB, "
                f"budget {budget / GB:.1f} GB")
        print(note)
        state.notes.append(note)
        return None
    if state.per_row_unopt is None:
        return True
    need = data + n * state.per_row_unopt
    print(f"memory estimate from the smaller size: data ~{data / GB:.2f} GB + unoptimized run "
          f"~{n * state.per_row_unopt / GB:.2f} GB = {need / GB:.2f} GB; budget "
          f"{budget / GB:.1f} GB ({MEMORY_BUDGET:.0%} of available)")
    if need > budget:
        note = (f"{n:,} quotes: unoptimized runs skipped, they would need ~{need / GB:.1f} GB "
                f"(budget {budget / GB:.1f} GB)")
        print(note)
        state.notes.append(note)
        return False
    return True


def run_size(state: State, n: int) -> None:
    """Generate ``n`` quotes, run every (input, predicate) both ways, free the data."""
    args, md = state.args, state.args.markdown
    available = _available_bytes()
    print(_heading(f"{n:,} quotes (load average {load_average()}, available memory "
                   f"{'?' if available is None else f'{available / GB:.1f} GB'})", md))
    run_unoptimized = memory_plan(state, n)
    if run_unoptimized is None:
        return
    q: pa.Table | None = quotes(n)
    state.per_row_data = q.nbytes / n
    window = time_window(q)
    with tempfile.TemporaryDirectory(prefix="sabot_optimizer_", dir=args.tmpdir) as tmp:
        path = Path(tmp) / "quotes.parquet"
        size = f"quotes: {q.nbytes / MB:,.0f} MB in memory"
        if "parquet" in args.inputs:
            pq.write_table(q, path, row_group_size=ROW_GROUP_ROWS)
            size += (f"; Parquet file {path.stat().st_size / MB:,.0f} MB, "
                     f"{pq.ParquetFile(path).metadata.num_row_groups} row groups")
        print(size)
        cpu = CpuMonitor()
        digests: dict[str, Digest] = {}
        for input_name in [i for i in INPUTS if i in args.inputs]:  # memory first
            if input_name == "parquet":
                q = None  # the Parquet runs read only the file
                gc.collect()
            for pred_name in args.predicates:
                source = (sl.Stream.from_table(q) if input_name == "memory"
                          else sl.Stream.from_parquet(path))
                stream = seed_job(source, state.reference, predicate(pred_name, window))
                show = input_name == "memory" and not state.shown_plans
                if show:
                    print(block(f"compare_plans ({pred_name}, in-memory)",
                                repr(sl.compare_plans(stream)), md))
                row = Row(input_name, pred_name, n)
                opt, unopt = measure(stream, row, state.runner, args.repeats, run_unoptimized,
                                     path if input_name == "parquet" else None)
                if show:
                    print(f"optimizer_stats.counts(): {opt.optimizer_stats.counts()}; "
                          f"reference rows in the executed enrich: {_reference_rows(opt):,} "
                          f"of {state.reference.num_rows:,}")
                problem = digests.setdefault(pred_name, digest(opt.table)).mismatch(
                    digest(opt.table))
                if problem is not None:
                    sys.exit(f"ABORT: {pred_name} n={n:,}: in-memory and Parquet results "
                             f"differ: {problem}")
                if args.explain:
                    title = f"{input_name}, {pred_name}, {n:,}"
                    print(block(f"optimized, executed plan ({title})", opt.explain(), md))
                    print(block(f"optimized, operator times ({title})", operator_times(opt),
                                md))
                    if unopt is not None:
                        print(block(f"unoptimized, operator times ({title})",
                                    operator_times(unopt), md))
                if row.unopt_mem is not None:
                    state.per_row_unopt = max(state.per_row_unopt or 0.0, row.unopt_mem / n)
                state.rows.append(row)
                print(f"done: {input_name} {pred_name} {n:,}: " + ", ".join(
                    f"{h} {c}" for h, c in zip(HEADERS[3:], _cells(row)[3:], strict=True)))
            state.shown_plans = state.shown_plans or input_name == "memory"
        print(cpu.report())
    del q
    gc.collect()
    print(f"process peak RSS so far: {_max_rss_bytes() / GB:.2f} GB")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    md = args.markdown
    record = Record("optimizer")
    runner = sl.LocalRunner(threads=args.threads)
    print(("# " if md else "") + "sabot_lab optimizer benchmark: optimize=False vs optimize=True")
    print(f"sabot_lab {git_revision()}, python {platform.python_version()}, "
          f"pyarrow {pa.__version__}, {cores()} cores, "
          f"{runner!r}, repeats={args.repeats} (median), load average {load_average()}")
    print(f"job: from_{{table,parquet}}(quotes).enrich(Table(securities, key={KEY!r}))"
          f".filter(<predicate>).select{SELECTED}")
    print(f"predicates: window = ts in [ts@45%, ts@55%); price = price > {PRICE_MIN:g}; "
          f"price+sector = price > {SECTOR_PRICE_MIN:g} & sector in {list(SECTORS)}")
    state = State(args, runner, sl.Table(securities(), key=KEY))
    for n in sorted(args.sizes):
        gc.collect()
        run_size(state, n)

    print(_heading(f"results (median of {args.repeats}; rows/s = input quotes per second; "
                   f"peak MB = Arrow memory allocated during the warm-up run, peak above the "
                   f"allocation before it)", md))
    rows = [_cells(r) for r in state.rows]
    left = (0, 1, len(HEADERS) - 1)
    print(format_table(HEADERS, rows, md, left=left))
    for note in state.notes:
        print(f"note: {note}")
        record.note(note)
    timed = [r for r in state.rows if r.speedup_range is not None]
    if timed:
        best = max(timed, key=lambda r: r.speedup)
        worst = min(timed, key=lambda r: r.speedup)
        reached = sum(r.speedup_range["met"] for r in timed)
        print(f"target >= {TARGET_SPEEDUP:g}x (over the whole range): best median "
              f"{best.speedup:.1f}x ({best.input} {best.predicate} {best.rows:,}), worst "
              f"median {worst.speedup:.1f}x ({worst.input} {worst.predicate} {worst.rows:,}); "
              f"{reached}/{len(timed)} reach it")
    if args.json is not None:
        record.add_table("results", f"median of {args.repeats}; rows/s = input quotes per "
                         "second; peak MB = Arrow memory during the warm-up run", HEADERS, rows,
                         left=left)
        record.add_results(result_row(r) for r in state.rows)
        record.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
