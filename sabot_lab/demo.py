"""The main job: the three patterns end to end, local and on Dask, with a results table.

Run it with ``make demo`` (or ``python -m sabot_lab.demo``). Each job runs through the public
API, is checked against an independent computation (plain pyarrow or pandas; the Dask runs
against the local rows), and its headline figures are printed; charts are written to ``out/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import sabot_lab as sl
from sabot_lab.datasets import airports, apache_logs, flights, securities, transactions
from sabot_lab.patterns.analytics import flight_delays, request_stats
from sabot_lab.patterns.enrichment import enrich_flights, enrich_quotes, quote_stream
from sabot_lab.patterns.fraud import detect_fraud


def _pyarrow_quotes_check(result: sl.Result, min_price: float, rows: int) -> bool:
    """The same job in hand-written pyarrow: the same number of rows and the same notional."""
    from sabot_lab.datasets import quotes

    q = quotes(rows)
    q = q.filter(pc.greater(q["price"], min_price))
    joined = q.join(securities().select(["instrument_id", "sector"]), "instrument_id",
                    join_type="inner")
    notional = pc.sum(pc.multiply(joined["price"], joined["volume"])).as_py()
    ours = pc.sum(result.table["notional"]).as_py()
    return joined.num_rows == result.table.num_rows and abs(notional - ours) <= 1e-9 * notional


def _pyarrow_flights_check(result: sl.Result) -> bool:
    expected = flights().join(airports().select(["iata", "state"]), "origin", "iata",
                              join_type="left outer")
    got = result.table
    return got.num_rows == expected.num_rows and pc.count(got["origin_state"]).as_py() == (
        pc.count(expected["state"]).as_py())


def _delays_check(result: sl.Result) -> bool:
    """Flights per day and origin, and their mean delay, from a plain pyarrow group-by."""
    f = flights()
    day = pc.floor_temporal(f["date"], unit="day")
    expected = f.append_column("window_start", day).group_by(["window_start", "origin"]) \
        .aggregate([("delay", "count"), ("delay", "mean")])
    got = result.table
    return (got.num_rows == expected.num_rows
            and pc.sum(got["flights"]).as_py() == pc.sum(expected["delay_count"]).as_py()
            and abs(pc.sum(got["mean_delay"]).as_py() - pc.sum(expected["delay_mean"]).as_py())
            < 1e-6)


def _requests_check(result: sl.Result, logs: pa.Table) -> bool:
    """Requests and bytes per hour, from a plain pyarrow group-by."""
    hour = pc.floor_temporal(logs["time"], unit="hour")
    expected = logs.append_column("window_start", hour).group_by("window_start").aggregate(
        [([], "count_all"), ("bytes", "sum")])
    got = result.table
    return (got.num_rows == expected.num_rows
            and pc.sum(got["requests"]).as_py() == pc.sum(expected["count_all"]).as_py()
            and pc.sum(got["bytes"]).as_py() == pc.sum(expected["bytes_sum"]).as_py())


def _fraud_check(result: sl.Result, txns: pa.Table) -> bool:
    """Velocity alerts against numpy: a transaction preceded by 5 or more of its account's
    transactions within the 60 s before it (sorted by account, then time)."""
    account = txns["account_id"].to_numpy()
    ts = txns["ts"].cast(pa.int64()).to_numpy()
    order = np.lexsort((ts, account))  # stable: arrival order among equal times
    combined = account[order] * 10**13 + ts[order]
    earlier = np.arange(len(order)) - np.searchsorted(combined, combined - 60_000, "right")
    by_numpy = set(txns["txn_id"].to_numpy()[order][earlier >= 5].tolist())
    alerts = result.table.filter(pc.equal(result.table["rule"], "velocity"))
    return by_numpy == set(alerts["txn_id"].to_pylist())


def _sector_chart(table: pa.Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_sector = (table.select(["sector", "notional"])
                 .cast(pa.schema({"sector": pa.string(), "notional": pa.float64()}))
                 .group_by("sector").aggregate([("notional", "sum")])
                 .sort_by([("notional_sum", "descending")]))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(by_sector["sector"].to_pylist()[::-1],
            [v / 1e9 for v in by_sector["notional_sum"].to_pylist()[::-1]])
    ax.set_xlabel("notional (billions)")
    ax.set_title("Enriched quotes: notional by sector")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print_table(rows: list[dict[str, object]]) -> None:
    headers = list(rows[0])
    cells = [[f"{r[h]:,}" if isinstance(r[h], int) else str(r[h]) for h in headers]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def _same(distributed: sl.Result, local: sl.Result) -> bool:
    """The distributed run gives the local run's rows (and side outputs)."""
    timing = "detection_latency_ms"  # a measurement, not a result
    if timing in local.table.column_names:
        return _same_tables(distributed.table.drop_columns([timing]),
                            local.table.drop_columns([timing]))
    try:
        sl.assert_same_results(distributed, local)
        for name, side in local.side_outputs.items():
            sl.assert_same_results(distributed.side_outputs[name], side)
    except (AssertionError, KeyError):
        return False
    return True


def _same_tables(a: pa.Table, b: pa.Table) -> bool:
    try:
        sl.assert_same_results(a, b)
    except AssertionError:
        return False
    return True


def _row(pattern: str, result: sl.Result, check: bool) -> dict[str, object]:
    side = sum(t.num_rows for t in result.side_outputs.values())
    return {
        "pattern": pattern,
        "runner": result.runner,
        "rows in": result.rows_in,
        "rows out": result.rows_out,
        "side out": side,
        "ms": f"{result.execution_time_ms:,.0f}",
        "rows/s": f"{result.rows_per_second:,.0f}",
        "check": "ok" if check else "MISMATCH",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns a process exit code (non-zero if a check failed)."""
    parser = argparse.ArgumentParser(description="sabot_lab: the patterns end to end")
    parser.add_argument("--rows", type=int, default=1_200_000, help="synthetic quotes")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where charts go")
    parser.add_argument("--transactions", type=int, default=200_000,
                        help="synthetic card transactions (accounts: a tenth of them)")
    parser.add_argument("--local-only", action="store_true", help="skip the Dask runs")
    parser.add_argument("--scheduler", default=None,
                        help="a Dask scheduler address (default: start a LocalCluster)")
    args = parser.parse_args(argv)

    rows = []
    min_price = 100.0
    market = enrich_quotes(quote_stream(args.rows), sl.Table(securities(), key="instrument_id"),
                           min_price=min_price, unmatched="side_output")
    market_result = market.run()
    rows.append(_row("enrichment: quotes + securities", market_result,
                     _pyarrow_quotes_check(market_result, min_price, args.rows)))

    flights_job = enrich_flights(sl.Stream.from_table(flights()),
                                 sl.Table(airports(), key="iata"))
    flights_result = flights_job.run()
    rows.append(_row("enrichment: flights + airports", flights_result,
                     _pyarrow_flights_check(flights_result)))

    daily = flight_delays(sl.Stream.from_table(flights()), window="1d").run()
    rows.append(_row("analytics: daily flight delays", daily, _delays_check(daily)))
    logs = apache_logs()
    hourly = request_stats(sl.Stream.from_table(logs), window="1h",
                           max_out_of_orderness="1min").run()
    rows.append(_row("analytics: hourly web requests", hourly, _requests_check(hourly, logs)))

    txns = transactions(args.transactions, n_accounts=max(1, args.transactions // 10))
    fraud_job = detect_fraud(sl.Stream.from_table(txns, batch_size=10_000))
    fraud = fraud_job.run()
    rows.append(_row("fraud: card transactions", fraud, _fraud_check(fraud, txns)))

    execution = None
    if not args.local_only:
        from sabot_lab.runtime.dask import DaskRunner

        with DaskRunner(args.scheduler) as runner:
            for name, job, local in (
                    ("enrichment: quotes + securities", market, market_result),
                    ("enrichment: flights + airports", flights_job, flights_result),
                    ("fraud: card transactions", fraud_job, fraud),
                    ("analytics: daily flight delays",
                     flight_delays(sl.Stream.from_table(flights()), window="1d"), daily),
                    ("analytics: hourly web requests",
                     request_stats(sl.Stream.from_table(logs), window="1h",
                                   max_out_of_orderness="1min"), hourly)):
                distributed = job.run(runner)
                rows.append(_row(name, distributed, _same(distributed, local)))
                execution = execution or distributed.execution

    print("sabot_lab demo: the patterns end to end\n")
    _print_table(rows)
    print("(times include generating the synthetic quotes batch by batch inside the source;\n"
          " check: local runs against hand-written pyarrow or pandas, Dask runs against the\n"
          " local rows; fraud: alerts against a plain-Python replay of the rules)")

    print("\nFraud alerts by rule, and how many labelled fraudulent transactions they flag:")
    truth = txns.filter(pc.field("is_fraud"))
    for rule in ("velocity", "amount", "geo"):
        flagged = fraud.table.filter(pc.equal(fraud.table["rule"], rule))["txn_id"]
        kind = truth.filter(pc.equal(truth["fraud_kind"], rule))["txn_id"]
        hits = pc.sum(pc.is_in(kind, flagged)).as_py() or 0
        print(f"  {rule:<9} {len(flagged):>7,} alerts; {hits:,} of {len(kind):,} labelled "
              f"{rule} transactions flagged")
    latency = fraud.table["detection_latency_ms"].to_numpy()
    if len(latency):
        print(f"  time inside the rules per 10K-transaction batch: p50 "
              f"{np.percentile(latency, 50):.2f} ms, p99 {np.percentile(latency, 99):.2f} ms")

    print("\nUnmatched quotes by reason (side output 'unmatched'):")
    reasons = market_result.side_outputs["unmatched"].group_by("reason").aggregate(
        [([], "count_all")]).sort_by("reason")
    for reason, count in zip(reasons["reason"].to_pylist(), reasons["count_all"].to_pylist(),
                             strict=True):
        print(f"  {reason:<28} {count:>9,}")

    print("\nMean departure delay by origin state (flights + airports), worst five:")
    delays = (flights_result.table.select(["origin_state", "delay"])
              .cast(pa.schema({"origin_state": pa.string(), "delay": pa.int64()}))
              .group_by("origin_state").aggregate([("delay", "mean"), ("delay", "count")])
              .filter(pc.greater_equal(pc.field("delay_count"), 50))
              .sort_by([("delay_mean", "descending")]).slice(0, 5))
    for state, mean, count in zip(*(delays[c].to_pylist() for c in
                                    ("origin_state", "delay_mean", "delay_count")), strict=True):
        print(f"  {state:<4} {mean:7.1f} min over {count:,} flights")

    print("\nBusiest origin-days and their p95 departure delay (analytics, 1-day windows):")
    busiest = daily.table.sort_by([("flights", "descending"), ("origin", "ascending")]).slice(
        0, 5)
    for row in busiest.select(["window_start", "origin", "flights", "p95_delay"]).to_pylist():
        print(f"  {row['window_start']:%Y-%m-%d} {row['origin']:<4} {row['flights']:>4} flights,"
              f" p95 delay {row['p95_delay']:6.1f} min")

    print("\nBusiest hours of the web server (analytics, 1-hour windows over the access log):")
    top_hours = hourly.table.sort_by([("requests", "descending")]).slice(0, 3)
    for row in top_hours.to_pylist():
        print(f"  {row['window_start']:%Y-%m-%d %H:%M} {row['requests']:>5} requests, "
              f"p95 {row['p95_bytes'] / 1e3:8.1f} kB, p99 {row['p99_bytes'] / 1e3:8.1f} kB")

    chart = args.out / "enrichment_notional_by_sector.png"
    _sector_chart(market_result.table, chart)
    print(f"\nChart written to {chart}")
    print("\nExecuted plan of the quotes job:")
    print(market_result.explain())
    if execution is not None:
        print("\nOn Dask (which worker ran which partition):")
        print(execution)
        timings = ", ".join(f"{k} {v:,.0f}" for k, v in execution.timings.items())
        print(f"timings (ms): {timings}")
    return 0 if all(r["check"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
