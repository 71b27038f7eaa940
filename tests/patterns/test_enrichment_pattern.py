"""The enrichment pattern against DuckDB running its SQL on the same data."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import airports, flights, quotes, securities
from sabot_lab.patterns.enrichment import (
    enrich_flights,
    enrich_quotes,
    enrichment_sql,
    main,
    quote_stream,
)
from tests.oracle import assert_balanced, assert_same_rows, duck


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("min_price", [20.0, 150.0])
def test_quotes_job_equals_its_sql(how, min_price):
    q, s = quotes(40_000, batch_size=16_000), securities()
    columns = ["symbol", "sector", "lot_size", "listing_date"]
    reference = sl.Table(s, key="instrument_id")
    result = enrich_quotes(quote_stream(40_000, batch_size=16_000), reference,
                           min_price=min_price, columns=columns, how=how).run()
    expected = duck(enrichment_sql(min_price, columns, how), quotes=q, securities=s)
    assert_same_rows(result.table, expected)
    assert_balanced(result.operator_metrics)


def test_generated_stream_is_the_dataset():
    assert quote_stream(25_000, batch_size=10_000).to_table().equals(
        quotes(25_000, batch_size=10_000))


def test_flights_job_equals_sql():
    f, a = flights(), airports()
    result = enrich_flights(sl.Stream.from_table(f, batch_size=3_000), sl.Table(a, key="iata"),
                            columns=["name", "state"]).run()
    expected = duck(
        "SELECT f.*, o.name AS origin_name, o.state AS origin_state, d.name AS dest_name, "
        "d.state AS dest_state FROM f LEFT JOIN a o ON f.origin = o.iata "
        "LEFT JOIN a d ON f.destination = d.iata", f=f, a=a)
    assert_same_rows(result.table, expected)
    assert result.table.num_rows == f.num_rows == 10_000


def test_cli_prints_summary(capsys):
    main(["--rows", "30000", "--batch-size", "10000"])
    out = capsys.readouterr().out
    assert "rows_in" in out and "30,000" in out and "Enrich[" in out


def test_sp500_sector_reference():
    from sabot_lab.datasets import sp500_constituents

    sp = sp500_constituents()
    trades = pa.table({"symbol": ["AAPL", "MSFT", "NOPE", "BRK.B"], "qty": [1, 2, 3, 4]})
    out = (sl.Stream.from_table(trades)
           .enrich(sl.Table(sp, key="symbol"), columns=["gics_sector"]).to_table())
    expected = duck("SELECT t.*, s.gics_sector FROM t JOIN s USING (symbol)", t=trades, s=sp)
    assert_same_rows(out, expected)
