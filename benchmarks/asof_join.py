"""The as-of part of the enrichment benchmark (``benchmarks/enrichment.py`` runs it).

Every engine computes the same temporal join, :data:`SQL`: each quote joined to the version
of its instrument's reference data valid at the quote's time (the latest ``valid_from`` at or
before ``ts``), quotes without one left out. Data: ``datasets.quotes(n)`` (a quote's time
grows with its id, 500K quotes per business day) and ``datasets.security_versions`` (10
versions for each of 10K instruments, spread over the quotes' days: 100K versions, shuffled).

* ``sabot_lab``: ``Stream.from_table(q).enrich(Table(v, key=..., valid_from=...),
  as_of="ts")`` through the public API; building the versioned ``Table`` (which checks that
  no key has two versions at one time) is timed; ``rating`` comes out dictionary-encoded.
* ``duckdb``: ``ASOF JOIN`` over the registered Arrow tables, to Arrow.
* ``polars``: ``join_asof(by="instrument_id", strategy="backward")`` from the Arrow tables
  (conversion and the sorts it needs timed), null keys dropped first, unmatched rows after.

Before timing, the engines' results are checked to agree (rows, the multiset of quote ids,
sums of ``version`` and ``risk_weight``).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from common import CpuMonitor, describe_background, spread, target_cell, versus

import sabot_lab as sl
from sabot_lab.datasets import quotes, security_versions

try:
    import polars as pl
except ImportError:  # a benchmark-only dependency
    pl = None

TARGET = 1.0
VERSION_COLUMNS = ["version", "rating", "risk_weight"]
QUOTE_COLUMNS = ["quote_id", "ts", "instrument_id", "price"]
SQL = ("SELECT q.*, v.version, v.rating, v.risk_weight FROM q ASOF JOIN v "
       "ON q.instrument_id = v.instrument_id AND q.ts >= v.valid_from")
HEADERS = ("events", "versions", "engine", "rows out", "min s", "median s", "max s",
           "rows/s (M)", "vs DuckDB (median)", "vs DuckDB (worst-best)", "target")
NOTES = {
    "sabot_lab": "public API, incl. building the versioned sl.Table",
    "duckdb": "ASOF JOIN over registered Arrow, -> Arrow",
    "polars": "join_asof, incl. Arrow -> polars and the sorts it needs",
}

Engine = Callable[[pa.Table, pa.Table], Any]


def run_sabot_lab(q: pa.Table, v: pa.Table) -> pa.Table:
    table = sl.Table(v, key="instrument_id", valid_from="valid_from")
    return sl.Stream.from_table(q).enrich(table, as_of="ts", columns=VERSION_COLUMNS).run().table


def run_polars(q: pa.Table, v: pa.Table) -> Any:
    events = pl.from_arrow(q).filter(pl.col("instrument_id").is_not_null()).sort("ts")
    versions = pl.from_arrow(v.select(["instrument_id", "valid_from", *VERSION_COLUMNS]))
    joined = events.join_asof(versions.sort("valid_from"), left_on="ts",
                              right_on="valid_from", by="instrument_id", strategy="backward",
                              check_sortedness=False)
    return joined.filter(pl.col("version").is_not_null()).drop("valid_from")


class DuckDB:
    """A connection with both tables registered (not timed)."""

    def __init__(self, q: pa.Table, v: pa.Table, threads: int) -> None:
        self.con = duckdb.connect()
        self.con.execute(f"SET threads TO {int(threads)}")
        self.con.register("q", q)
        self.con.register("v", v)

    def __call__(self, q: pa.Table, v: pa.Table) -> pa.Table:
        return self.con.sql(SQL).to_arrow_table()


def digest(result: Any) -> tuple[int, float, float, np.ndarray]:
    """Rows, sum of version, sum of risk_weight, sorted quote ids."""
    if isinstance(result, pa.Table):
        columns = {c: result.column(c).to_numpy() for c in ("quote_id", "version",
                                                              "risk_weight")}
    else:
        columns = {c: result[c].to_numpy() for c in ("quote_id", "version", "risk_weight")}
    return (len(columns["quote_id"]), float(columns["version"].sum()),
            float(columns["risk_weight"].sum()), np.sort(columns["quote_id"]))


def _agree(digests: dict[str, tuple]) -> None:
    (first, d0), *rest = digests.items()
    for engine, d in rest:
        same = (d[0] == d0[0] and d[1] == d0[1] and abs(d[2] - d0[2]) <= 1e-6 * abs(d0[2])
                and np.array_equal(d[3], d0[3]))
        if not same:
            raise AssertionError(f"as-of results differ: {first} {d0[:3]} vs {engine} {d[:3]}")


def bench(sizes: Sequence[int], repeats: int, threads: int, with_polars: bool
          ) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Table rows and record results for each number of quotes in ``sizes``."""
    versions = security_versions(10_000, 10, days=25)
    rows: list[list[str]] = []
    results: list[dict[str, Any]] = []
    for n in sizes:
        q = quotes(n).select(QUOTE_COLUMNS)
        duck = DuckDB(q, versions, threads)
        engines: dict[str, Engine] = {"sabot_lab": run_sabot_lab, "duckdb": duck}
        if with_polars and pl is not None:
            engines["polars"] = run_polars
        print(f"\n-- as-of join: {n:,} quotes x {versions.num_rows:,} versions", flush=True)
        digests = {}
        for name, fn in engines.items():  # warm-up, and the check
            digests[name] = digest(fn(q, versions))
        _agree(digests)
        out_rows = digests["duckdb"][0]
        print(f"   results agree: {out_rows:,} rows", flush=True)
        del digests
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        monitor = CpuMonitor()
        for r in range(repeats):
            for name, fn in engines.items():
                gc.collect()
                start = time.perf_counter()
                out = fn(q, versions)
                seconds[name].append(time.perf_counter() - start)
                del out
            print(f"   round {r + 1}/{repeats}: " + ", ".join(
                f"{e} {s[-1]:.3f} s" for e, s in seconds.items()), flush=True)
        background = monitor.cores_elsewhere()
        print("   " + describe_background(background), flush=True)
        duck.con.close()
        for name, times in seconds.items():
            ratio = versus(times, seconds["duckdb"], TARGET if name == "sabot_lab" else None)
            median = statistics.median(times)
            rows.append([f"{n:,}", f"{versions.num_rows:,}", name, f"{out_rows:,}",
                         f"{min(times):.3f}", f"{median:.3f}", f"{max(times):.3f}",
                         f"{n / median / 1e6:.1f}", f"{ratio['median']:.2f}x",
                         f"{ratio['worst']:.2f}-{ratio['best']:.2f}x",
                         target_cell(ratio) if name == "sabot_lab" else "-"])
            results.append({"part": "as-of", "engine": name, "input_rows": n,
                            "versions": versions.num_rows, "rows_out": out_rows,
                            "seconds": spread(times), "vs_duckdb": ratio,
                            "background": background, "note": NOTES[name]})
        del q
        gc.collect()
    return rows, results
