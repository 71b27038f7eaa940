"""Tests of the NYC taxi sample, checked against pandas and duckdb reading the CSVs directly."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sabot_lab.datasets import data_dir, taxi_trips
from sabot_lab.datasets.taxi import TAXI_FILES, TAXI_SCHEMA

TAXI_TYPES = {
    "vendor_id": pa.int8(),
    "pickup_datetime": pa.timestamp("s"),
    "dropoff_datetime": pa.timestamp("s"),
    "passenger_count": pa.int8(),
    "fare_amount": pa.float64(),
}


@pytest.fixture(scope="module")
def trips() -> pa.Table:
    return taxi_trips()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Both files read by pandas, in file order."""
    paths = [data_dir() / "nyc_taxi" / f for f in TAXI_FILES]
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    for col in ("pickup_datetime", "dropoff_datetime"):
        df[col] = pd.to_datetime(df[col], format="%Y-%m-%d %H:%M:%S")
    return df


def test_rows_and_types(trips: pa.Table) -> None:
    assert trips.num_rows == 20_000
    assert dict(zip(trips.schema.names, trips.schema.types, strict=True)) == TAXI_TYPES
    assert trips.schema.equals(TAXI_SCHEMA)
    assert trips.schema.field("passenger_count").nullable
    assert trips["vendor_id"].num_chunks == 2
    assert [trips[c].null_count for c in trips.column_names] == [0] * 5


def test_values_and_order_match_pandas(trips: pa.Table, frame: pd.DataFrame) -> None:
    got = trips.to_pandas()
    for col in ("vendor_id", "passenger_count", "fare_amount"):
        np.testing.assert_array_equal(got[col].to_numpy(), frame[col].to_numpy())
    for col in ("pickup_datetime", "dropoff_datetime"):
        np.testing.assert_array_equal(
            got[col].to_numpy().astype("datetime64[s]"),
            frame[col].to_numpy().astype("datetime64[s]"),
        )


def test_aggregates_match_duckdb(trips: pa.Table) -> None:
    con = duckdb.connect()
    con.register("trips", trips)
    files = [str(data_dir() / "nyc_taxi" / f) for f in TAXI_FILES]
    query = """
        select count(*), sum(fare_amount), min(pickup_datetime), max(pickup_datetime),
               max(dropoff_datetime), count(*) filter (where passenger_count = 0),
               count(*) filter (where fare_amount < 0), count(*) filter (where vendor_id = 4),
               count(*) filter (where dropoff_datetime < pickup_datetime)
        from {}
    """
    ours = con.sql(query.format("trips")).fetchall()
    theirs = con.sql(query.format(f"read_csv({files})")).fetchall()
    assert ours[0][0] == 20_000
    assert ours[0][1] == pytest.approx(theirs[0][1])
    assert ours[0][2:] == theirs[0][2:]
    assert ours[0][5:] == (1_579, 22, 182, 0)


def test_documented_disorder(trips: pa.Table) -> None:
    pickup = trips["pickup_datetime"].to_numpy().astype(np.int64)
    step_back = pickup[:-1] - pickup[1:]
    lag = np.maximum.accumulate(pickup)[:-1] - pickup[1:]
    assert int((step_back > 0).sum()) == 9_946
    assert int((lag > 0).sum()) == 19_977
    assert int(step_back.max()) == 2_653_255
    assert int(lag.max()) == 2_678_301
    # the files follow each other in time: January before February
    assert pickup[:10_000].max() < pickup[10_000:].min()
    months = pd.Series(trips["pickup_datetime"].to_numpy()).dt.month
    assert months.iloc[:10_000].eq(1).all() and months.iloc[10_000:].eq(2).all()
