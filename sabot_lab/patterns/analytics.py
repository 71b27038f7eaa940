"""Real-time analytics: event-time windows over a stream, for dashboards and SLAs.

Each job is a function of its parameters, so notebooks, scripts, tests and benchmarks run
the same plan:

* :func:`request_stats`: per window, request count, bytes sum/mean and p95/p99 of bytes.
* :func:`top_paths`: the most requested paths per window.
* :func:`flight_delays`: per window and origin airport, flights and p95/p99 departure delay.

Run ``python -m sabot_lab.patterns.analytics --help`` for the command line.

Examples
--------
>>> import sabot_lab as sl
>>> from sabot_lab.datasets import flights
>>> job = flight_delays(sl.Stream.from_table(flights()), window="1h")
>>> result = job.run()
>>> result.rows_in, int(result.table["flights"].to_numpy().sum())
(10000, 10000)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pyarrow.compute as pc

from sabot_lab.plan import windows as w
from sabot_lab.stream import Stream

__all__ = ["flight_delays", "request_stats", "top_paths"]


def request_stats(
    requests: Stream,
    window: str = "5min",
    time_col: str = "time",
    max_out_of_orderness: str = "10s",
    allowed_lateness: str = "0s",
    max_future_skew: str | None = None,
) -> Stream:
    """Requests per tumbling window: count, bytes sum and mean, p95 and p99 of bytes.

    Parameters
    ----------
    requests
        A stream with a timestamp column ``time_col`` and a numeric ``bytes`` column.
    window
        Window size, e.g. ``"5min"``.
    max_out_of_orderness, allowed_lateness, max_future_skew
        As in :meth:`Stream.with_watermark`. Set ``max_future_skew`` (e.g. ``"1h"``) when a
        bad clock may stamp a row far in the future: such a row goes to the ``rejected``
        side output instead of moving the watermark past every later row (which would send
        them all to ``late``).
    """
    return (
        requests.with_watermark(time_col, max_out_of_orderness=max_out_of_orderness,
                                allowed_lateness=allowed_lateness,
                                max_future_skew=max_future_skew)
        .window(w.tumbling(window))
        .agg(requests=w.count(), bytes=w.sum("bytes"), mean_bytes=w.mean("bytes"),
             p95_bytes=w.quantile("bytes", 0.95), p99_bytes=w.quantile("bytes", 0.99))
    )


def top_paths(
    requests: Stream,
    n: int = 10,
    window: str = "5min",
    time_col: str = "time",
    max_out_of_orderness: str = "10s",
    max_future_skew: str | None = None,
) -> Stream:
    """The ``n`` most requested paths of every tumbling window, with their rank.

    ``max_out_of_orderness`` and ``max_future_skew`` are as in :func:`request_stats`.
    """
    return (
        requests.with_watermark(time_col, max_out_of_orderness=max_out_of_orderness,
                                max_future_skew=max_future_skew)
        .window(w.tumbling(window)).group_by("path")
        .agg(hits=w.count(), bytes=w.sum("bytes"))
        .top_n(n, by="hits")
    )


def flight_delays(
    flights: Stream,
    window: str = "1h",
    max_out_of_orderness: str = "30min",
    max_future_skew: str | None = None,
) -> Stream:
    """Per window and origin airport: flights, mean, p95 and p99 departure delay (minutes).

    ``max_out_of_orderness`` and ``max_future_skew`` are as in :func:`request_stats`.
    """
    return (
        flights.with_watermark("date", max_out_of_orderness=max_out_of_orderness,
                               max_future_skew=max_future_skew)
        .window(w.tumbling(window)).group_by("origin")
        .agg(flights=w.count(), mean_delay=w.mean("delay"),
             p95_delay=w.quantile("delay", 0.95), p99_delay=w.quantile("delay", 0.99))
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: windowed flight-delay statistics on the real flights sample."""
    from sabot_lab.datasets import flights

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", default="1d", help="window size, e.g. 1h or 1d")
    parser.add_argument("--top", type=int, default=10, help="rows to print")
    parser.add_argument("--distributed", action="store_true", help="run on a Dask cluster")
    parser.add_argument("--scheduler", help="scheduler address (default: a LocalCluster)")
    args = parser.parse_args(argv)
    job = flight_delays(Stream.from_table(flights()), window=args.window)
    if args.distributed:
        from sabot_lab.runtime.dask import DaskRunner

        with DaskRunner(args.scheduler) as runner:
            result = job.run(runner)
    else:
        result = job.run()
    for key, value in result.summary().items():
        print(f"{key:<20} {value:>14,}" if isinstance(value, int | float)
              else f"{key:<20} {value:>14}")
    busy = result.table.filter(pc.greater_equal(result.table["flights"], 5))
    worst = busy.sort_by([("p95_delay", "descending")]).slice(0, args.top)
    print(f"\nHighest p95 departure delay, windows with at least 5 flights "
          f"({busy.num_rows:,} of {result.table.num_rows:,} windows):")
    print(worst.select(["window_start", "origin", "flights", "p95_delay"]).to_pandas()
          .to_string(index=False))
    print()
    print(result.explain())
    if result.execution is not None:
        print(result.execution)


if __name__ == "__main__":
    main()
