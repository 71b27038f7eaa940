"""The analytics pattern against DuckDB on the real flights sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import flights
from sabot_lab.patterns.analytics import flight_delays, main, request_stats, top_paths
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


def test_request_stats_on_the_apache_log_equal_sql():
    from sabot_lab.datasets import apache_logs

    logs = apache_logs()
    result = request_stats(sl.Stream.from_table(logs, batch_size=1_000), window="1h",
                           max_out_of_orderness="1min").run()
    expected = duck(
        "SELECT time_bucket(INTERVAL 1 hour, time) AS window_start, count(*) AS requests, "
        "sum(bytes) AS bytes, avg(bytes) AS mean_bytes, quantile_cont(bytes, 0.95) AS p95_bytes,"
        " quantile_cont(bytes, 0.99) AS p99_bytes FROM l GROUP BY ALL", l=logs)
    expected = expected.set_column(0, "window_start",
                                   expected["window_start"].cast(logs.schema.field("time").type))
    assert_same_rows(result.table.drop_columns(["window_end", "revision", "is_update"]),
                     expected)
    assert result.side_outputs["late"].num_rows == 0  # the log is out of order by under a minute


def test_top_paths_equal_sql():
    from sabot_lab.datasets import apache_logs

    logs = apache_logs()
    result = top_paths(sl.Stream.from_table(logs, batch_size=2_000), n=5, window="1d",
                       max_out_of_orderness="1min").run()
    expected = duck(
        "SELECT * FROM (SELECT window_start, path, hits, bytes, CAST(row_number() OVER ("
        "PARTITION BY window_start ORDER BY hits DESC, path) AS INTEGER) AS rank FROM ("
        "SELECT time_bucket(INTERVAL 1 day, time) AS window_start, path, count(*) AS hits, "
        "sum(bytes) AS bytes FROM l GROUP BY ALL)) WHERE rank <= 5", l=logs)
    expected = expected.set_column(0, "window_start",
                                   expected["window_start"].cast(logs.schema.field("time").type))
    assert_same_rows(result.table.drop_columns(["window_end", "revision", "is_update"]),
                     expected)


#: The row of the samples whose clock goes wrong in the tests below.
BAD_ROW = 400


def one_row_30_years_ahead(table: pa.Table, time_col: str, row: int = BAD_ROW) -> pa.Table:
    """``table`` with the event time of ``row`` moved 30 years ahead (a bad clock)."""
    times = table[time_col].to_numpy().copy()
    times[row] = times[row] + np.timedelta64(30 * 365, "D")
    i = table.schema.get_field_index(time_col)
    return table.set_column(i, table.schema.field(i), pa.array(times, table[time_col].type))


def _cases() -> list[tuple]:
    from sabot_lab.datasets import apache_logs

    return [(request_stats, apache_logs, "time", {"window": "1h", "max_out_of_orderness": "1min"}),
            (top_paths, apache_logs, "time", {"window": "1d", "max_out_of_orderness": "1min"}),
            (flight_delays, flights, "date", {"window": "1d"})]


@pytest.mark.parametrize(("pattern", "data", "time_col", "options"), _cases(),
                         ids=["request_stats", "top_paths", "flight_delays"])
def test_max_future_skew_rejects_one_row_30_years_ahead(pattern, data, time_col, options):
    table = data()
    bad = one_row_30_years_ahead(table, time_col)
    unguarded = pattern(sl.Stream.from_table(bad, batch_size=1_000), **options).run()
    assert unguarded.side_outputs["late"].num_rows > table.num_rows // 2  # the problem
    result = pattern(sl.Stream.from_table(bad, batch_size=1_000), max_future_skew="1d",
                     **options).run()
    assert result.side_outputs["late"].num_rows == 0
    rejected = result.side_outputs["rejected"]
    assert rejected.drop_columns(["reason"]).to_pylist() == bad.slice(BAD_ROW, 1).to_pylist()
    assert_balanced(result.operator_metrics)


def test_request_stats_with_max_future_skew_equal_sql_without_the_bad_row():
    from sabot_lab.datasets import apache_logs

    logs = apache_logs()
    bad = one_row_30_years_ahead(logs, "time")
    result = request_stats(sl.Stream.from_table(bad, batch_size=1_000), window="1h",
                           max_out_of_orderness="1min", max_future_skew="1d").run()
    expected = duck(
        "SELECT time_bucket(INTERVAL 1 hour, time) AS window_start, count(*) AS requests, "
        "sum(bytes) AS bytes, avg(bytes) AS mean_bytes, quantile_cont(bytes, 0.95) AS p95_bytes,"
        " quantile_cont(bytes, 0.99) AS p99_bytes FROM l "
        "WHERE time < TIMESTAMPTZ '2030-01-01' GROUP BY ALL", l=bad)
    expected = expected.set_column(0, "window_start",
                                   expected["window_start"].cast(logs.schema.field("time").type))
    assert_same_rows(result.table.drop_columns(["window_end", "revision", "is_update"]),
                     expected)
