"""Benchmark: stream enrichment of market quotes, sabot_lab vs pyarrow, DuckDB, polars, pandas.

Every engine computes the same query, :func:`sabot_lab.patterns.enrichment.enrichment_sql`:
quotes with ``price > 100`` inner-joined on ``instrument_id`` to the securities master,
keeping the quote columns plus ``symbol``, ``sector``, ``currency`` and
``notional = price * volume``. Engines, all in one process and one run:

* ``sabot_lab``: ``enrich_quotes(sl.Stream.from_table(q), sl.Table(s, key=...)).run()``
  through the public API (default ``LocalRunner``); building ``sl.Table`` (which checks key
  uniqueness) is inside the timed region.
* ``sabot_lab_plain``: the same job with ``dictionary_strings=False``: reference strings as
  plain strings, copied per row, like the other engines' output.
* ``pyarrow``: hand-written ``Table.filter`` -> ``select`` -> ``Table.join`` -> notional.
* ``duckdb``: ``con.sql(enrichment_sql()).to_arrow_table()`` over the registered Arrow
  tables, with ``threads`` set explicitly to the machine's core count.
* ``polars``: timed from the Arrow tables: ``pl.from_arrow`` of the needed columns, then a
  lazy filter -> inner join -> notional, collected (reference strings stay plain strings).
  polars is a dependency of the benchmarks only (``pip install -e ".[bench]"``): without it
  the engine is skipped, with a note.
* ``pandas``: timed from the Arrow tables: ``to_pandas()`` of the needed columns, boolean
  filter, ``merge(how="inner")``, notional.

Key cases (``--cases``), each the same query over a differently keyed copy of the same data:

* ``dense``: ``instrument_id`` as generated (``100_000 + 3 * i``): a compact integer range,
  sabot_lab's dense lookup table.
* ``sparse``: ``instrument_id`` mapped by ``x -> x * 7919 mod 1_000_003`` (a bijection) on both
  sides: 10K ids spread over [0, 1M), too wide for the dense table, so sabot_lab's int64 hash
  index.
* ``string``: the key is the security's ``symbol`` (plain ``string`` on both sides; ids absent
  from the securities become ``"?<id>"``, nulls stay null): the string hash index.
* ``two_keys``: ``(exchange, instrument_id)``, ids mapped as in ``sparse``; a quote's
  ``exchange`` is its security's, except about 0.5% of rows given another one (no match).

Data (``datasets.quotes(n)`` and ``datasets.securities()``) is generated once per size, and
each case's keyed copy once per case, in memory, before any timing. Before timing, every
engine's results are checked to agree (row count, sum of notional, multiset of
``quote_id``). Each engine is warmed up once per case and size, then run ``--repeats``
times in interleaved rounds (every engine once per round); the table shows the
min/median/max wall-clock time (``time.perf_counter``), input rows per second on the median
(input rows = quotes generated), the ratio to DuckDB's rows per second on medians, and the
ratio's range (worst: sabot_lab's slowest run against DuckDB's fastest; best: the reverse).
A target counts as met only when the worst ratio clears it. The background CPU (cores busy
outside this process while timing) is printed per case. ``--json PATH`` also writes the run's
record (see ``benchmarks/common.py``) for ``benchmarks/report.py``.

Run it from the repository root::

    .venv/bin/python benchmarks/enrichment.py                      # 1.2M and 12M quotes
    .venv/bin/python benchmarks/enrichment.py --sizes 1200000 --repeats 3 --markdown
    .venv/bin/python benchmarks/enrichment.py --engines sabot_lab duckdb
    .venv/bin/python benchmarks/enrichment.py --sizes 12000000 --engines sabot_lab duckdb \
        --cases dense sparse string two_keys --repeats 5
    .venv/bin/python benchmarks/enrichment.py --json benchmarks/results/enrichment.json
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asof_join
import duckdb
import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from common import (
    CpuMonitor,
    Record,
    add_json_option,
    cores,
    cpu_model,
    describe_background,
    format_table,
    git_revision,
    spread,
    target_cell,
    versus,
)

import sabot_lab as sl
from sabot_lab.datasets import quotes, securities
from sabot_lab.patterns.enrichment import (
    QUOTE_COLUMNS,
    REFERENCE_COLUMNS,
    enrich_quotes,
    enrichment_sql,
)

try:
    import polars as pl
except ImportError:  # a dependency of the benchmarks only: the engine is skipped
    pl = None

MIN_PRICE = 100.0
KEY = "instrument_id"
ENGINES = ("sabot_lab", "sabot_lab_plain", "pyarrow", "duckdb", "polars", "pandas")
SUM_REL_TOL = 1e-9
#: The goal from the issue: sabot_lab at least this many times DuckDB's rows/s at 12M quotes.
TARGET_ROWS, TARGET_RATIO = 12_000_000, 1.5
CASES = ("dense", "sparse", "string", "two_keys")
#: ``sparse``: ids mapped by ``x -> x * SPARSE_FACTOR mod SPARSE_MODULUS``, a bijection on
#: [0, SPARSE_MODULUS) (the modulus is prime), spreading 10K ids over [0, 1M).
SPARSE_FACTOR, SPARSE_MODULUS = 7_919, 1_000_003
EXCHANGE = "exchange"


@dataclass(frozen=True)
class Case:
    """A keying of the data: the key columns (same names on both sides) and the tables."""

    name: str
    keys: tuple[str, ...]
    quotes: pa.Table
    securities: pa.Table


def _sparse_ids(ids: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        return pa.chunked_array([_sparse_ids(c) for c in ids.chunks], pa.int64())
    values = ids.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= SPARSE_MODULUS):
        raise ValueError("ids outside the range the sparse mapping keeps distinct")
    mapped = values * SPARSE_FACTOR % SPARSE_MODULUS
    return pa.array(mapped, pa.int64(), mask=ids.is_null().to_numpy(zero_copy_only=False))


def _by_chunk(q: pa.Table, name: str, fn: Callable[[pa.Array], pa.Array]) -> pa.Table:
    """``q`` with column ``name`` replaced by ``fn`` applied chunk by chunk (keeps batches)."""
    column = q.column(name)
    new = pa.chunked_array([fn(c) for c in column.chunks])
    return q.set_column(q.schema.get_field_index(name), name, new)


def make_case(name: str, q: pa.Table, s: pa.Table) -> Case:
    """The tables of case ``name`` (see the module docstring), built outside any timing."""
    if name == "dense":
        return Case(name, (KEY,), q, s)
    if name == "sparse":
        return Case(name, (KEY,), _by_chunk(q, KEY, _sparse_ids),
                    s.set_column(s.schema.get_field_index(KEY), KEY, _sparse_ids(s[KEY])))
    ref_ids = s[KEY].combine_chunks()
    if name == "string":
        symbols = s["symbol"].combine_chunks().cast(pa.string())

        def to_symbol(ids: pa.Array) -> pa.Array:
            position = pc.index_in(ids, value_set=ref_ids)
            unknown = pc.binary_join_element_wise("?", ids.cast(pa.string()), "")
            return pc.if_else(pc.is_null(position), unknown, symbols.take(position))

        return Case(name, (KEY,), _by_chunk(q, KEY, to_symbol),
                    s.set_column(s.schema.get_field_index(KEY), KEY, symbols))
    if name == "two_keys":
        exchanges = s[EXCHANGE].combine_chunks().cast(pa.string())
        other = pa.array(["XNAS", "XLON"])
        rng = np.random.default_rng(11)
        chunks = []
        for ids in q.column(KEY).chunks:
            exchange = exchanges.take(pc.index_in(ids, value_set=ref_ids).fill_null(0))
            wrong = pa.array(rng.random(len(ids)) < 0.005)
            swapped = pc.if_else(pc.equal(exchange, other[0]), other[1], other[0])
            chunks.append(pc.if_else(wrong, swapped, exchange))
        keyed = _by_chunk(q, KEY, _sparse_ids).append_column(
            EXCHANGE, pa.chunked_array(chunks, pa.string()))
        ref = s.set_column(s.schema.get_field_index(KEY), KEY, _sparse_ids(s[KEY]))
        ref = ref.set_column(ref.schema.get_field_index(EXCHANGE), EXCHANGE, exchanges)
        return Case(name, (EXCHANGE, KEY), keyed, ref)
    raise ValueError(f"unknown case {name!r}")


def case_sql(keys: Sequence[str]) -> str:
    """:func:`enrichment_sql` joined on ``keys`` (the same text for the one-key cases)."""
    sql = enrichment_sql(min_price=MIN_PRICE)
    if tuple(keys) == (KEY,):
        return sql
    on = " AND ".join(f"q.{k} = s.{k}" for k in keys)
    return sql.replace(f"q.{KEY} = s.{KEY}", on)


# --- the implementations ---------------------------------------------------------------
# Each takes the quotes and securities Arrow tables and returns (result, extra); ``extra`` is
# whatever is worth reporting from the run (sabot_lab's per-operator metrics).


def _sabot_lab_job(q: pa.Table, s: pa.Table, keys: Sequence[str], dictionary_strings: bool
                   ) -> tuple[object, object]:
    reference = sl.Table(s, key=list(keys))  # checks key uniqueness: part of the job
    if tuple(keys) == (KEY,) and dictionary_strings:
        job = enrich_quotes(sl.Stream.from_table(q), reference, min_price=MIN_PRICE)
    else:  # enrich_quotes' plan, with another ``on`` or plain strings
        job = (sl.Stream.from_table(q).filter(sl.col("price") > MIN_PRICE)
               .enrich(reference, on=list(keys), columns=REFERENCE_COLUMNS,
                       dictionary_strings=dictionary_strings)
               .select(*QUOTE_COLUMNS, *REFERENCE_COLUMNS,
                       notional=sl.col("price") * sl.col("volume")))
    result = job.run()
    return result.table, result


def run_sabot_lab(q: pa.Table, s: pa.Table, keys: Sequence[str] = (KEY,)
                  ) -> tuple[object, object]:
    return _sabot_lab_job(q, s, keys, dictionary_strings=True)


def run_sabot_lab_plain(q: pa.Table, s: pa.Table, keys: Sequence[str] = (KEY,)
                        ) -> tuple[object, object]:
    """Like for like with the other engines: reference strings as plain strings, copied per
    row, instead of dictionary-encoded (``dictionary_strings=False``)."""
    return _sabot_lab_job(q, s, keys, dictionary_strings=False)


def run_pyarrow(q: pa.Table, s: pa.Table, keys: Sequence[str] = (KEY,)
                ) -> tuple[object, object]:
    kept = q.filter(pc.greater(q["price"], MIN_PRICE))
    kept = kept.select(list(dict.fromkeys([*QUOTE_COLUMNS, *keys])))
    ref = s.select(list(dict.fromkeys([*keys, *REFERENCE_COLUMNS])))
    joined = kept.join(ref, keys=list(keys), join_type="inner")
    joined = joined.select([*QUOTE_COLUMNS, *REFERENCE_COLUMNS])
    notional = pc.multiply(joined["price"], joined["volume"])
    return joined.append_column("notional", notional), None


class DuckDBRunner:
    """A DuckDB connection with both Arrow tables registered (setup is not timed)."""

    def __init__(self, q: pa.Table, s: pa.Table, threads: int,
                 keys: Sequence[str] = (KEY,)) -> None:
        self.con = duckdb.connect()
        self.con.execute(f"SET threads TO {int(threads)}")
        self.threads = int(self.con.sql("SELECT current_setting('threads')").fetchall()[0][0])
        self.con.register("quotes", q)
        self.con.register("securities", s)
        self.sql = case_sql(keys)

    def __call__(self, q: pa.Table, s: pa.Table, keys: Sequence[str] = (KEY,)
                 ) -> tuple[object, object]:
        return self.con.sql(self.sql).to_arrow_table(), None

    def close(self) -> None:
        self.con.close()


def run_pandas(q: pa.Table, s: pa.Table, keys: Sequence[str] = (KEY,)
               ) -> tuple[object, object]:
    quotes_df = q.select(list(dict.fromkeys([*QUOTE_COLUMNS, *keys]))).to_pandas()  # timed
    ref_df = s.select(list(dict.fromkeys([*keys, *REFERENCE_COLUMNS]))).to_pandas()
    kept = quotes_df[quotes_df["price"] > MIN_PRICE]
    joined = kept.merge(ref_df, on=list(keys), how="inner")
    joined["notional"] = joined["price"] * joined["volume"]
    return joined, None


def run_polars(q: pa.Table, s: pa.Table, keys: Sequence[str] = (KEY,)
               ) -> tuple[object, object]:
    """Lazy polars over the needed columns; the Arrow -> polars conversion is timed."""
    quotes_df = pl.from_arrow(q.select(list(dict.fromkeys([*QUOTE_COLUMNS, *keys]))))
    ref_df = pl.from_arrow(s.select(list(dict.fromkeys([*keys, *REFERENCE_COLUMNS]))))
    joined = (quotes_df.lazy().filter(pl.col("price") > MIN_PRICE)
              .join(ref_df.lazy(), on=list(keys), how="inner")
              .select(*QUOTE_COLUMNS, *REFERENCE_COLUMNS,
                      notional=pl.col("price") * pl.col("volume"))
              .collect())
    return joined, None


NOTES = {
    "sabot_lab": "public API, incl. sl.Table build + key check",
    "sabot_lab_plain": "the same, reference strings as plain strings (like the others)",
    "pyarrow": "filter -> select -> Table.join",
    "duckdb": "SQL over registered Arrow, -> Arrow",
    "polars": "lazy filter -> join, incl. Arrow -> polars conversion, DataFrame out",
    "pandas": "incl. Arrow -> pandas conversion",
}


# --- correctness ------------------------------------------------------------------------


@dataclass
class Digest:
    rows: int
    notional_sum: float
    quote_ids: np.ndarray  # sorted


def digest(result: object) -> Digest:
    """Rows, sum of notional and sorted quote ids of an Arrow table or a pandas or polars
    DataFrame."""
    ids = result["quote_id"].to_numpy()
    if isinstance(result, pa.Table):
        total = float(pc.sum(result["notional"]).as_py() or 0.0)
    else:
        total = float(result["notional"].sum())
    rows = len(result)
    return Digest(rows, total, np.sort(ids.astype(np.int64)))


def check_agreement(digests: dict[str, Digest]) -> None:
    """Abort unless every engine returned the same rows (count, notional sum, quote ids)."""
    names = list(digests)
    base_name = names[0]
    base = digests[base_name]
    problems = []
    for name in names[1:]:
        d = digests[name]
        if d.rows != base.rows:
            problems.append(f"{name} returned {d.rows:,} rows, {base_name} {base.rows:,}")
            continue
        if not math.isclose(d.notional_sum, base.notional_sum, rel_tol=SUM_REL_TOL):
            problems.append(
                f"{name} sum(notional) = {d.notional_sum!r}, {base_name} {base.notional_sum!r}"
            )
        if not np.array_equal(d.quote_ids, base.quote_ids):
            differ = int(np.count_nonzero(d.quote_ids != base.quote_ids))
            problems.append(f"{name} quote_id multiset differs from {base_name}'s "
                            f"({differ:,} positions of the sorted ids differ)")
    if problems:
        sys.exit("RESULTS DISAGREE, not timing anything:\n  " + "\n  ".join(problems))


# --- timing -----------------------------------------------------------------------------

Engine = Callable[[pa.Table, pa.Table, Sequence[str]], tuple[object, object]]


@dataclass
class Timing:
    engine: str
    case: str
    rows: int
    seconds: list[float] = field(default_factory=list)
    result_rows: int = 0
    background: Mapping[str, float] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.median


def timed(fn: Engine, case: Case) -> tuple[float, object, object]:
    start = time.perf_counter()
    out, extra = fn(case.quotes, case.securities, case.keys)
    return time.perf_counter() - start, out, extra


def bench_case(n: int, case: Case, engines: Sequence[str], repeats: int, cores: int,
               info: dict[str, object]
               ) -> tuple[list[Timing], tuple[pd.DataFrame, str] | None]:
    print(f"\n-- case {case.name} (keys {', '.join(case.keys)})", flush=True)
    duck = (DuckDBRunner(case.quotes, case.securities, cores, case.keys)
            if "duckdb" in engines else None)
    if duck is not None:
        info["duckdb threads"] = duck.threads
    impl: dict[str, Engine] = {
        "sabot_lab": run_sabot_lab, "sabot_lab_plain": run_sabot_lab_plain,
        "pyarrow": run_pyarrow, "polars": run_polars, "pandas": run_pandas,
    }
    if duck is not None:
        impl["duckdb"] = duck
    fns = {e: impl[e] for e in engines}

    # Warm-up (one untimed run each), whose outputs are the correctness check.
    digests = {}
    timings = {e: Timing(e, case.name, n) for e in engines}
    for engine, fn in fns.items():
        seconds, out, _ = timed(fn, case)
        digests[engine] = digest(out)
        timings[engine].result_rows = digests[engine].rows
        print(f"   warm-up {engine:<10} {seconds:8.3f} s  {digests[engine].rows:,} rows out",
              flush=True)
        del out
    if len(digests) > 1:
        check_agreement(digests)
        d = next(iter(digests.values()))
        print(f"   results agree: {d.rows:,} rows, sum(notional) = {d.notional_sum:,.2f}, "
              f"same quote_id multiset", flush=True)
    del digests

    metrics: tuple[pd.DataFrame, str] | None = None
    monitor = CpuMonitor()
    for r in range(repeats):  # interleaved rounds: drift hits every engine alike
        for engine, fn in fns.items():
            gc.collect()
            seconds, out, extra = timed(fn, case)
            timings[engine].seconds.append(seconds)
            if engine == "sabot_lab" and r == repeats - 1:
                metrics = (extra.metrics[["operator", "seconds"]], extra.explain())
            del out, extra
        print(f"   round {r + 1}/{repeats}: " + ", ".join(
            f"{e} {timings[e].seconds[-1]:.3f} s" for e in fns), flush=True)
    background = monitor.cores_elsewhere()
    print("   " + describe_background(background), flush=True)
    for t in timings.values():
        t.background = background

    if duck is not None:
        duck.close()
    return list(timings.values()), metrics


def bench_size(n: int, s: pa.Table, cases: Sequence[str], engines: Sequence[str], repeats: int,
               cores: int, info: dict[str, object]
               ) -> tuple[list[Timing], list[tuple[str, tuple[pd.DataFrame, str]]]]:
    t0 = time.perf_counter()
    q = quotes(n)
    print(f"\n== {n:,} quotes ({q.nbytes / 1e9:.2f} GB in memory, generated in "
          f"{time.perf_counter() - t0:.1f} s, not timed)", flush=True)
    timings: list[Timing] = []
    breakdowns = []
    for name in cases:
        case = make_case(name, q, s)
        case_timings, metrics = bench_case(n, case, engines, repeats, cores, info)
        timings += case_timings
        if metrics is not None:
            breakdowns.append((name, metrics))
        del case
        gc.collect()
    del q
    gc.collect()
    return timings, breakdowns


# --- output -----------------------------------------------------------------------------


HEADERS = ("case", "engine", "input rows", "rows out", "min s", "median s", "max s",
           "rows/s (M)", "vs DuckDB (median)", "vs DuckDB (worst-best)", "target", "notes")
LEFT = (0, 1, len(HEADERS) - 2, len(HEADERS) - 1)  # the columns of text


def against_duckdb(timings: list[Timing]) -> list[tuple[Timing, dict[str, Any] | None]]:
    """Every timing with its :func:`common.versus` DuckDB of the same size and case (``None``
    without DuckDB); the target applies to sabot_lab at :data:`TARGET_ROWS`."""
    duck = {(t.rows, t.case): t for t in timings if t.engine == "duckdb"}
    out = []
    for t in timings:
        base = duck.get((t.rows, t.case))
        target = TARGET_RATIO if (t.engine, t.rows) == ("sabot_lab", TARGET_ROWS) else None
        out.append((t, None if base is None else versus(t.seconds, base.seconds, target)))
    return out


def table_rows(timings: list[Timing]) -> list[tuple[str, ...]]:
    out = []
    for t, ratio in against_duckdb(timings):
        median = "n/a" if ratio is None else f"{ratio['median']:.2f}x"
        span = "n/a" if ratio is None else f"{ratio['worst']:.2f}-{ratio['best']:.2f}x"
        out.append((t.case, t.engine, f"{t.rows:,}", f"{t.result_rows:,}",
                    f"{min(t.seconds):.3f}", f"{t.median:.3f}", f"{max(t.seconds):.3f}",
                    f"{t.rows_per_second / 1e6:.1f}", median, span,
                    "-" if ratio is None else target_cell(ratio), NOTES[t.engine]))
    return out


def result_rows(timings: list[Timing]) -> list[dict[str, Any]]:
    """The machine-readable rows of the record, one per (size, case, engine)."""
    return [{"case": t.case, "engine": t.engine, "input_rows": t.rows,
             "rows_out": t.result_rows, "seconds": spread(t.seconds),
             "rows_per_second_median": t.rows_per_second, "vs_duckdb": ratio,
             "background": t.background} for t, ratio in against_duckdb(timings)]


def machine_line(cores: int, info: dict[str, object]) -> str:
    extra = "".join(f", {k} {v}" for k, v in info.items())
    return (
        f"machine: {cores} cores ({cpu_model()}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, pyarrow {pa.__version__}, "
        f"duckdb {duckdb.__version__}, pandas {pd.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__}, "
        f"polars {'not installed' if pl is None else pl.__version__}, "
        f"sabot_lab {sl.__version__} (git {git_revision()}){extra}"
    )


def available_engines(requested: Sequence[str], record: Record) -> list[str]:
    """``requested`` in :data:`ENGINES` order, less polars when it is not installed (noted)."""
    engines = [e for e in ENGINES if e in requested]
    if "polars" in engines and pl is None:
        note = 'polars skipped: not installed (pip install -e ".[bench]")'
        print(f"note: {note}")
        record.note(note)
        engines.remove("polars")
    return engines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_200_000, 12_000_000],
                        help="numbers of quotes (default: 1200000 12000000)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds (every engine once per round; default 5)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="engines to run (default: all)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="key cases (default: all)")
    parser.add_argument("--asof-sizes", type=int, nargs="*", default=[12_000_000],
                        help="numbers of quotes for the as-of join against 100K versions "
                             "(benchmarks/asof_join.py; default 12000000; none to skip)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    record = Record("enrichment", ("duckdb", "pandas", "polars"))
    engines = available_engines(args.engines, record)
    cases = [c for c in CASES if c in args.cases]

    n_cores = cores()
    info: dict[str, object] = {
        "sabot_lab threads": sl.LocalRunner().threads,
        "pyarrow cpu_count": pa.cpu_count(),
    }
    if "polars" in engines:
        info["polars threads"] = pl.thread_pool_size()
    s = securities()
    print(f"enrichment benchmark: {', '.join(engines)}; cases {', '.join(cases)}; sizes "
          f"{args.sizes}; {args.repeats} interleaved rounds after 1 warm-up; "
          f"{s.num_rows:,} securities")
    print("query (dense, sparse, string; two_keys joins on exchange and instrument_id):\n"
          + "\n".join("   " + line for line in enrichment_sql(MIN_PRICE).split("\n")))

    timings: list[Timing] = []
    breakdowns: list[tuple[int, str, tuple[pd.DataFrame, str]]] = []
    for n in args.sizes:
        size_timings, size_breakdowns = bench_size(n, s, cases, engines, args.repeats, n_cores,
                                                   info)
        timings += size_timings
        breakdowns += [(n, name, m) for name, m in size_breakdowns]

    asof_rows, asof_results = asof_join.bench(args.asof_sizes, args.repeats, n_cores,
                                              "polars" in engines)
    rows = table_rows(timings)
    print()
    print(machine_line(n_cores, info))
    print()
    print(format_table(HEADERS, rows, False, left=LEFT))
    print()
    for n, name, (metrics, _) in breakdowns:
        parts = ", ".join(f"{op.split('[')[0]} {sec:.3f}" for op, sec in
                          zip(metrics["operator"], metrics["seconds"], strict=True))
        print(f"sabot_lab per-operator seconds, {name} at {n:,} (last run, summed over "
              f"threads): {parts}")
    if breakdowns:
        n, name, (_, plan) = breakdowns[-1]
        print(f"sabot_lab executed plan, {name} at {n:,} (last run):")
        print("\n".join("   " + line for line in plan.split("\n")))
    for t, ratio in against_duckdb(timings):
        if ratio is not None and ratio["target"] is not None:
            verdict = "met" if ratio["met"] else "NOT met"
            print(f"target sabot_lab >= {TARGET_RATIO}x DuckDB rows/s at {TARGET_ROWS:,} rows, "
                  f"{t.case}: {verdict} (median {ratio['median']:.2f}x, range "
                  f"{ratio['worst']:.2f}-{ratio['best']:.2f}x; "
                  f"{describe_background(t.background)})")
    asof_title = (f"as-of join (each quote gets the version valid at its time), "
                  f"{args.repeats} interleaved rounds; target sabot_lab >= "
                  f"{asof_join.TARGET}x DuckDB's ASOF JOIN")
    if asof_rows:
        print()
        print(asof_title)
        print(format_table(asof_join.HEADERS, asof_rows, False, left=(2,)))
    if args.markdown:
        print()
        print(format_table(HEADERS, rows, True, left=LEFT))
    if args.json is not None:
        record.add_table("results", f"enrichment, {args.repeats} interleaved rounds; rows/s on "
                         "the median; ratios against DuckDB's rows/s", HEADERS, rows,
                         left=LEFT)
        if asof_rows:
            record.add_table("asof", asof_title, asof_join.HEADERS, asof_rows, left=(2,))
        record.add_results(result_rows(timings) + asof_results)
        record.write(args.json)


if __name__ == "__main__":
    main()
