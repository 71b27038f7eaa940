"""Stream enrichment: join an event stream to a reference table as the events flow.

Two ready-made jobs, each a function of its parameters so that notebooks, scripts, tests and
benchmarks run the same plan:

* :func:`enrich_quotes`: market quotes above a price threshold, enriched with security
  attributes (symbol, sector, currency…), plus a computed notional.
* :func:`enrich_flights`: real US flights enriched with their origin and destination airports.

Run ``python -m sabot_lab.patterns.enrichment --help`` for the command line.

Examples
--------
>>> import sabot_lab as sl
>>> from sabot_lab.datasets import securities
>>> job = enrich_quotes(quote_stream(10_000, batch_size=4_000), sl.Table(securities(),
...                     key="instrument_id"), min_price=50.0)
>>> job.schema.names
['quote_id', 'ts', 'instrument_id', 'price', 'volume', 'symbol', 'sector', 'currency', 'notional']
>>> result = job.run()
>>> result.rows_in
10000
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from sabot_lab.datasets.market import QUOTES_SCHEMA, quotes_batch
from sabot_lab.expr import col
from sabot_lab.reference import Table
from sabot_lab.stream import Stream

__all__ = [
    "QUOTE_COLUMNS",
    "REFERENCE_COLUMNS",
    "enrich_flights",
    "enrich_quotes",
    "enrichment_sql",
    "quote_stream",
]

#: Quote columns the job keeps.
QUOTE_COLUMNS = ("quote_id", "ts", "instrument_id", "price", "volume")
#: Security attributes added by default.
REFERENCE_COLUMNS = ("symbol", "sector", "currency")
#: Airport attributes added to flights by default.
AIRPORT_COLUMNS = ("name", "state", "latitude", "longitude")


@dataclass(frozen=True)
class QuoteBatches:
    """Batch ``i`` of a synthetic quote stream of ``rows`` rows (picklable, for workers)."""

    rows: int
    batch_size: int
    seed: int = 42
    securities_n: int = 10_000

    @property
    def n_batches(self) -> int:
        return -(-self.rows // self.batch_size)

    def __call__(self, i: int) -> pa.RecordBatch:
        start = i * self.batch_size
        return quotes_batch(i, min(self.batch_size, self.rows - start), seed=self.seed,
                            securities_n=self.securities_n, start_id=start)


def quote_stream(
    rows: int = 1_200_000,
    batch_size: int = 100_000,
    seed: int = 42,
    securities_n: int = 10_000,
) -> Stream:
    """A generated stream of market quotes, each batch made only when it is needed.

    The rows equal ``datasets.quotes(rows, batch_size=batch_size, seed=seed)``: the data
    depends on ``batch_size`` (the generation unit), as it does there.
    """
    make = QuoteBatches(rows, batch_size, seed, securities_n)
    return Stream.from_generator(make, make.n_batches, QUOTES_SCHEMA)


def enrich_quotes(
    quotes: Stream,
    securities: Table,
    *,
    min_price: float = 100.0,
    columns: Sequence[str] = REFERENCE_COLUMNS,
    how: str = "inner",
    unmatched: str = "drop",
) -> Stream:
    """Quotes priced above ``min_price``, enriched with security ``columns`` and a notional.

    Parameters
    ----------
    quotes
        A stream with the columns of :data:`sabot_lab.datasets.market.QUOTES_SCHEMA`.
    securities
        The securities reference table keyed on ``instrument_id``.
    min_price
        Keep quotes with ``price > min_price``.
    columns
        Security attributes to add.
    how, unmatched
        As in :meth:`Stream.enrich`.
    """
    return (
        quotes.filter(col("price") > min_price)
        .enrich(securities, on="instrument_id", columns=columns, how=how, unmatched=unmatched)
        .select(*QUOTE_COLUMNS, *columns, notional=col("price") * col("volume"))
    )


def enrichment_sql(
    min_price: float = 100.0, columns: Sequence[str] = REFERENCE_COLUMNS, how: str = "inner"
) -> str:
    """The SQL that :func:`enrich_quotes` computes, over tables ``quotes`` and ``securities``.

    Used as the DuckDB oracle in tests and as the DuckDB baseline in benchmarks.

    >>> print(enrichment_sql(columns=["symbol"]))
    SELECT q.quote_id, q.ts, q.instrument_id, q.price, q.volume, s.symbol,
           q.price * q.volume AS notional
    FROM quotes q INNER JOIN securities s ON q.instrument_id = s.instrument_id
    WHERE q.price > 100.0
    """
    selected = ", ".join([*(f"q.{c}" for c in QUOTE_COLUMNS), *(f"s.{c}" for c in columns)])
    return (
        f"SELECT {selected},\n       q.price * q.volume AS notional\n"
        f"FROM quotes q {how.upper()} JOIN securities s ON q.instrument_id = s.instrument_id\n"
        f"WHERE q.price > {float(min_price)!r}"
    )


def enrich_flights(
    flights: Stream,
    airports: Table,
    columns: Sequence[str] = AIRPORT_COLUMNS,
    how: str = "left",
) -> Stream:
    """Flights with ``origin_*`` and ``dest_*`` airport attributes (two lookups, one table).

    >>> from sabot_lab.datasets import airports, flights
    >>> job = enrich_flights(Stream.from_table(flights()), Table(airports(), key="iata"))
    >>> job.to_table().slice(0, 1).select(["origin", "origin_state", "dest_state"]).to_pylist()
    [{'origin': 'DTW', 'origin_state': 'MI', 'dest_state': 'NV'}]
    """
    keep = flights.schema.names
    return (
        flights.enrich(airports, on={"origin": "iata"}, columns=columns, how=how)
        .select(*keep, **{f"origin_{c}": c for c in columns})
        .enrich(airports, on={"destination": "iata"}, columns=columns, how=how)
        .select(*keep, *(f"origin_{c}" for c in columns), **{f"dest_{c}": c for c in columns})
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the quotes job locally (or on Dask) and print a summary."""
    from sabot_lab.datasets import securities
    from sabot_lab.runtime.local import LocalRunner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_200_000, help="quotes to generate")
    parser.add_argument("--min-price", type=float, default=100.0)
    parser.add_argument("--batch-size", type=int, default=100_000, help="rows per batch")
    parser.add_argument("--threads", type=int, default=None, help="local worker threads")
    parser.add_argument("--distributed", action="store_true",
                        help="run on Dask: a LocalCluster, or the scheduler given")
    parser.add_argument("--scheduler", default=None, help="scheduler address, tcp://host:port")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    args = parser.parse_args(argv)
    reference = Table(securities(), key="instrument_id")
    job = enrich_quotes(quote_stream(args.rows, args.batch_size), reference,
                        min_price=args.min_price)
    if args.distributed or args.scheduler:
        from sabot_lab.runtime.dask import DaskRunner

        with DaskRunner(args.scheduler, n_workers=args.workers) as runner:
            print(f"Dask dashboard: {runner.dashboard_link}")
            result = job.run(runner)
    else:
        result = job.run(LocalRunner(threads=args.threads))
    summary = result.summary()
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value:>14,}" if isinstance(value, int | float)
              else f"{key:<{width}}  {value:>14}")
    print()
    print(result.explain())
    if result.execution is not None:
        print()
        print(result.execution)


if __name__ == "__main__":
    main()
