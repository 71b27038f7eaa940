"""The analytics pattern against DuckDB on the real flights sample."""

from __future__ import annotations

import pyarrow as pa

import sabot_lab as sl
from sabot_lab.datasets import flights
from sabot_lab.patterns.analytics import flight_delays, main
from tests.oracle import assert_balanced, assert_same_rows, duck


def test_flight_delays_equal_sql():
    f = flights()
    result = flight_delays(sl.Stream.from_table(f, batch_size=2_500), window="1d").run()
    expected = duck(
        "SELECT CAST(time_bucket(INTERVAL 1 day, date) AS TIMESTAMP) AS window_start, origin, "
        "count(*) AS flights, avg(delay) AS mean_delay, quantile_cont(delay, 0.95) AS p95_delay,"
        " quantile_cont(delay, 0.99) AS p99_delay FROM f GROUP BY ALL", f=f)
    expected = expected.set_column(0, "window_start",
                                   expected["window_start"].cast(pa.timestamp("s")))
    got = result.table.drop_columns(["window_end", "revision", "is_update"])
    assert_same_rows(got, expected)
    assert_balanced(result.operator_metrics)


def test_cli_prints_the_worst_windows(capsys):
    main(["--window", "1d", "--top", "3"])
    out = capsys.readouterr().out
    assert "Highest p95 departure delay" in out and "Window[tumbling('1d')" in out
