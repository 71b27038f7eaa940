"""Tests of the synthetic market data, checked with independent numpy/pandas/duckdb code."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot_lab.datasets import quote_batches, quotes, quotes_batch, securities

SECURITIES_TYPES = {
    "instrument_id": pa.int64(),
    "symbol": pa.string(),
    "name": pa.string(),
    "isin": pa.string(),
    "asset_class": pa.string(),
    "sector": pa.string(),
    "industry": pa.string(),
    "country": pa.string(),
    "region": pa.string(),
    "currency": pa.string(),
    "exchange": pa.string(),
    "lot_size": pa.int32(),
    "tick_size": pa.float64(),
    "listing_date": pa.date32(),
    "is_active": pa.bool_(),
    "market_cap": pa.float64(),
    "cap_bucket": pa.string(),
    "reference_price": pa.float64(),
    "shares_outstanding": pa.int64(),
    "free_float": pa.float64(),
    "avg_daily_volume": pa.int64(),
    "beta": pa.float64(),
    "volatility_30d": pa.float64(),
    "dividend_yield": pa.float64(),
    "pe_ratio": pa.float64(),
    "rating": pa.string(),
    "esg_score": pa.float64(),
    "analyst_count": pa.int32(),
    "employees": pa.int64(),
    "founded_year": pa.int32(),
    "updated_at": pa.timestamp("us"),
}

QUOTES_TYPES = {
    "quote_id": pa.int64(),
    "ts": pa.timestamp("us"),
    "instrument_id": pa.int64(),
    "bid": pa.float64(),
    "ask": pa.float64(),
    "price": pa.float64(),
    "bid_size": pa.int64(),
    "ask_size": pa.int64(),
    "volume": pa.int64(),
    "side": pa.dictionary(pa.int8(), pa.string()),
    "venue": pa.dictionary(pa.int8(), pa.string()),
    "trader_id": pa.int32(),
    "sequence": pa.int64(),
    **{f"payload_{k}": pa.float64() for k in range(6)},
    "note": pa.string(),
}

N_SEC = 10_000
N_QUOTES = 200_000


def sql(query: str, **tables: pa.Table) -> list[tuple]:
    """Run ``query`` in a fresh duckdb connection with ``tables`` registered by name."""
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    return con.sql(query).fetchall()


@pytest.fixture(scope="module")
def sec() -> pa.Table:
    return securities(N_SEC)


@pytest.fixture(scope="module")
def q() -> pa.Table:
    return quotes(N_QUOTES, batch_size=50_000, securities_n=N_SEC)


def isin_is_valid(isin: str) -> bool:
    """Plain-Python ISIN check: letters -> numbers, Luhn over the digit string."""
    digits = "".join(str(int(c, 36)) for c in isin)
    total = 0
    for pos, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if pos % 2 else 1)
        total += d // 10 + d % 10
    return len(isin) == 12 and total % 10 == 0


# --- securities -----------------------------------------------------------------------------


def test_securities_schema(sec: pa.Table) -> None:
    assert sec.num_rows == N_SEC
    assert dict(zip(sec.schema.names, sec.schema.types, strict=True)) == SECURITIES_TYPES
    assert sec.num_columns == 31
    nulls = {name: sec[name].null_count for name in sec.column_names}
    assert {name for name, count in nulls.items() if count} == {"pe_ratio"}


def test_securities_keys_unique_with_duckdb(sec: pa.Table) -> None:
    [(rows, ids, symbols, isins)] = sql(
        "select count(*), count(distinct instrument_id), count(distinct symbol), "
        "count(distinct isin) from sec",
        sec=sec,
    )
    assert rows == ids == symbols == isins == N_SEC


def test_securities_id_formula_and_unsorted(sec: pa.Table) -> None:
    ids = sec["instrument_id"].to_numpy()
    np.testing.assert_array_equal(np.sort(ids), 100_000 + 3 * np.arange(N_SEC))
    assert not (np.diff(ids) > 0).all()  # shuffled, not sorted by key


def test_securities_deterministic(sec: pa.Table) -> None:
    assert securities(N_SEC, seed=7).equals(sec)
    other = securities(N_SEC, seed=8)
    assert not other.equals(sec)
    # the key set does not depend on the seed
    assert set(other["instrument_id"].to_pylist()) == set(sec["instrument_id"].to_pylist())


def test_securities_symbols_and_isins(sec: pa.Table) -> None:
    df = sec.to_pandas()
    assert df["symbol"].str.fullmatch(r"[A-Z]{1,3}").all()
    assert df["isin"].str.fullmatch(r"[A-Z]{2}\d{10}").all()
    assert (df["isin"].str[:2] == df["country"]).all()
    assert isin_is_valid("US0378331005")  # Apple: checks the checker
    assert all(isin_is_valid(s) for s in df["isin"].iloc[:1_000])


def test_securities_attributes(sec: pa.Table) -> None:
    df = sec.to_pandas()
    assert df["sector"].nunique() == 11
    currency = {"US": "USD", "CA": "CAD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "NL": "EUR",
                "CH": "CHF", "JP": "JPY", "HK": "HKD", "AU": "AUD"}  # fmt: skip
    assert (df["country"].map(currency) == df["currency"]).all()
    assert np.allclose(df["market_cap"], df["reference_price"] * df["shares_outstanding"])
    assert (df["lot_size"] > 0).all() and (df["tick_size"] > 0).all()
    assert 0.94 < df["is_active"].mean() < 0.995
    assert 0.06 < df["pe_ratio"].isna().mean() < 0.10
    listing = pd.to_datetime(df["listing_date"])
    assert listing.min() >= pd.Timestamp("1980-01-01")
    assert (df["founded_year"] <= listing.dt.year).all()


def test_securities_small_sizes() -> None:
    assert securities(0).num_rows == 0
    assert securities(0).schema.equals(securities(3).schema)
    assert securities(1)["symbol"].to_pylist() == ["A"]
    with pytest.raises(ValueError):
        securities(-1)


# --- quotes ---------------------------------------------------------------------------------


def test_quotes_schema_and_ids(q: pa.Table) -> None:
    assert q.num_rows == N_QUOTES
    assert dict(zip(q.schema.names, q.schema.types, strict=True)) == QUOTES_TYPES
    np.testing.assert_array_equal(q["quote_id"].to_numpy(), np.arange(N_QUOTES))
    np.testing.assert_array_equal(q["sequence"].to_numpy(), 1_000_000_000 + np.arange(N_QUOTES))
    assert {n for n in q.column_names if q[n].null_count} == {"instrument_id"}


def test_quotes_batch_deterministic() -> None:
    a = quotes_batch(5, 2_000, seed=1)
    assert quotes_batch(5, 2_000, seed=1).equals(a)
    other_batch = quotes_batch(6, 2_000, seed=1)
    other_seed = quotes_batch(5, 2_000, seed=2)
    for other in (other_batch, other_seed):
        for name in ("bid", "trader_id", "payload_0", "note"):
            assert not other[name].equals(a[name])
    np.testing.assert_array_equal(a["quote_id"].to_numpy(), 10_000 + np.arange(2_000))
    np.testing.assert_array_equal(other_batch["quote_id"].to_numpy(), 12_000 + np.arange(2_000))


def test_quotes_equals_concatenated_batches() -> None:
    n, rows = 23_456, 5_000
    batches = [quotes_batch(b, rows, seed=3) for b in range(4)]
    batches.append(quotes_batch(4, n - 4 * rows, seed=3, start_id=4 * rows))
    expected = pa.Table.from_batches(batches)
    got = quotes(n, seed=3, batch_size=rows)
    assert got.equals(expected)
    assert [b.num_rows for b in quote_batches(n, seed=3, batch_size=rows)] == [5_000] * 4 + [3_456]
    assert quotes(n, seed=3, batch_size=rows).equals(got)


def test_quotes_null_instrument_fraction(q: pa.Table) -> None:
    null_fraction = q.to_pandas()["instrument_id"].isna().mean()
    assert 0.015 <= null_fraction <= 0.025
    # nulls come from the validity mask, not NaN in a float column
    assert q["instrument_id"].null_count == round(null_fraction * N_QUOTES)


def test_quotes_unknown_instrument_fraction_duckdb(q: pa.Table, sec: pa.Table) -> None:
    [(known, unknown, nulls)] = sql(
        """
        select count(s.instrument_id),
               count(*) filter (where q.instrument_id is not null and s.instrument_id is null),
               count(*) filter (where q.instrument_id is null)
        from q left join sec s on q.instrument_id = s.instrument_id
        """,
        q=q,
        sec=sec,
    )
    assert known + unknown + nulls == N_QUOTES
    assert 0.007 <= unknown / N_QUOTES <= 0.013
    # every known instrument id is one of the securities ids
    ids = q["instrument_id"].drop_null().to_numpy()
    assert np.isin(ids[(ids - 100_000) % 3 == 0], sec["instrument_id"].to_numpy()).all()


def test_quotes_prices_sizes_and_categories(q: pa.Table) -> None:
    df = q.to_pandas()
    assert (df["ask"] > df["bid"]).all()
    assert ((df["bid"] <= df["price"]) & (df["price"] <= df["ask"])).all()
    assert (df["bid"] > 0).all()
    for col in ("bid_size", "ask_size", "volume"):
        assert (df[col] > 0).all()
    assert set(df["side"].unique()) == {"B", "S"}
    assert 0.48 < (df["side"] == "B").mean() < 0.52
    assert 3 <= df["venue"].nunique() <= 10
    assert df["note"].str.len().between(1, 40).all()
    payload = df[[f"payload_{k}" for k in range(6)]].to_numpy()
    assert ((payload >= 0) & (payload < 1)).all()


def test_quotes_prices_track_reference(q: pa.Table, sec: pa.Table) -> None:
    [(median_ratio, rows)] = sql(
        "select median(q.price / s.reference_price), count(*) "
        "from q join sec s on q.instrument_id = s.instrument_id",
        q=q,
        sec=sec,
    )
    assert 0.99 < median_ratio < 1.01
    assert rows > 0.96 * N_QUOTES


def test_quotes_timestamps_trading_hours(q: pa.Table) -> None:
    ts = q["ts"].to_numpy()
    assert (np.diff(ts.astype(np.int64)) > 0).all()
    t = pd.Series(ts)
    assert t.iloc[0] >= pd.Timestamp("2024-01-02 09:30")
    assert (t.dt.day_of_week < 5).all()
    minutes = t.dt.hour * 60 + t.dt.minute
    assert ((minutes >= 9 * 60 + 30) & (minutes < 16 * 60)).all()
    # 500,000 quotes per trading day: the whole 1.2M default stream spans three days
    last = quotes_batch(11, 100_000)["ts"].to_numpy()[-1]
    assert pd.Timestamp(last).date() == pd.Timestamp("2024-01-04").date()


def test_quotes_edge_cases() -> None:
    assert quotes(0).num_rows == 0
    assert quotes_batch(0, 0).num_rows == 0
    with pytest.raises(ValueError):
        quotes_batch(-1, 10)
    with pytest.raises(ValueError):
        quotes(10, batch_size=0)
    with pytest.raises(ValueError):
        quotes_batch(0, 10, securities_n=0)
    small = quotes(5_000, securities_n=10)
    ids = small["instrument_id"].drop_null().to_numpy()
    assert set(((ids - 100_000) // 3).tolist()) <= set(range(10))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 2_000), batch_size=st.integers(100, 1_000), seed=st.integers(0, 2**32))
def test_quotes_row_ids_property(n: int, batch_size: int, seed: int) -> None:
    t = quotes(n, seed=seed, batch_size=batch_size)
    np.testing.assert_array_equal(t["quote_id"].to_numpy(), np.arange(n))
    assert (np.diff(t["ts"].to_numpy().astype(np.int64)) > 0).all()
