"""Tests of the real public data loaders against plain json/csv parsing of the same files."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from sabot_lab.datasets import airports, data_dir, flights, sp500_constituents

REPO_DATA = Path(__file__).resolve().parents[2] / "datasets"


def sql(query: str, **tables: pa.Table) -> list[tuple]:
    """Run ``query`` in a fresh duckdb connection with ``tables`` registered by name."""
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    return con.sql(query).fetchall()


@pytest.fixture(autouse=True)
def _default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the loaders read the repository files that the tests parse independently."""
    monkeypatch.delenv("SABOT_LAB_DATA", raising=False)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def types_of(table: pa.Table) -> dict[str, pa.DataType]:
    return dict(zip(table.schema.names, table.schema.types, strict=True))


# --- data_dir -------------------------------------------------------------------------------


def test_data_dir_default_and_files_present() -> None:
    assert data_dir() == REPO_DATA
    for rel in ("vega/flights-10k.json", "vega/airports.csv", "vega/LICENSE-NOTE.txt",
                "sp500/constituents.csv", "sp500/LICENSE-NOTE.txt", "README.md"):  # fmt: skip
        assert (REPO_DATA / rel).is_file(), rel


def test_data_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SABOT_LAB_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    for loader, missing in ((flights, "flights-10k.json"), (airports, "airports.csv"),
                            (sp500_constituents, "constituents.csv")):  # fmt: skip
        with pytest.raises(FileNotFoundError, match="SABOT_LAB_DATA") as info:
            loader()
        assert str(tmp_path) in str(info.value) and missing in str(info.value)


def test_data_dir_env_override_reads_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "sp500").mkdir()
    lines = (REPO_DATA / "sp500" / "constituents.csv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "sp500" / "constituents.csv").write_text("\n".join(lines[:4]) + "\n")
    monkeypatch.setenv("SABOT_LAB_DATA", str(tmp_path))
    assert sp500_constituents()["symbol"].to_pylist() == ["MMM", "AOS", "ABT"]


# --- flights --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_flights() -> list[dict]:
    with (REPO_DATA / "vega" / "flights-10k.json").open(encoding="utf-8") as f:
        return json.load(f)


def test_flights_schema_and_rows(raw_flights: list[dict]) -> None:
    t = flights()
    assert types_of(t) == {
        "date": pa.timestamp("s"),
        "delay": pa.int64(),
        "distance": pa.int64(),
        "origin": pa.string(),
        "destination": pa.string(),
    }
    assert t.num_rows == len(raw_flights) == 10_000
    assert all(t[name].null_count == 0 for name in t.column_names)


def test_flights_first_row_matches_raw_json(raw_flights: list[dict]) -> None:
    first = raw_flights[0]
    assert flights().slice(0, 1).to_pylist()[0] == {
        "date": dt.datetime.strptime(first["date"], "%Y/%m/%d %H:%M"),
        "delay": first["delay"],
        "distance": first["distance"],
        "origin": first["origin"],
        "destination": first["destination"],
    }


def test_flights_all_rows_match_raw_json(raw_flights: list[dict]) -> None:
    t = flights()
    expected_dates = [dt.datetime.strptime(r["date"], "%Y/%m/%d %H:%M") for r in raw_flights]
    assert t["date"].to_pylist() == expected_dates
    for name in ("delay", "distance", "origin", "destination"):
        assert t[name].to_pylist() == [r[name] for r in raw_flights]
    assert expected_dates == sorted(expected_dates)  # file order is time order


def test_flight_airports_all_known() -> None:
    [(unmatched,)] = sql(
        "select count(*) from f where origin not in (select iata from a) "
        "or destination not in (select iata from a)",
        f=flights(),
        a=airports(),
    )
    assert unmatched == 0


# --- airports -------------------------------------------------------------------------------


def test_airports_schema_and_row_count() -> None:
    rows = read_csv_rows(REPO_DATA / "vega" / "airports.csv")
    t = airports()
    assert t.num_rows == len(rows) == 3_376
    assert types_of(t) == {
        "iata": pa.string(),
        "name": pa.string(),
        "city": pa.string(),
        "state": pa.string(),
        "country": pa.string(),
        "latitude": pa.float64(),
        "longitude": pa.float64(),
    }


def test_airports_iata_unique_not_null() -> None:
    a = airports()
    [(total, distinct, nulls)] = sql(
        "select count(*), count(distinct iata), count(*) - count(iata) from a", a=a
    )
    assert total == distinct == 3_376 and nulls == 0
    lengths = sql("select length(iata) n, count(*) from a group by n order by n", a=a)
    assert lengths == [(3, 3_334), (4, 42)]  # 42 four-character FAA identifiers


def test_airports_values_match_raw_csv() -> None:
    rows = read_csv_rows(REPO_DATA / "vega" / "airports.csv")
    t = airports()
    assert t["iata"].to_pylist() == [r["iata"] for r in rows]
    assert t["name"].to_pylist() == [r["name"] for r in rows]
    assert t["latitude"].to_pylist() == [float(r["latitude"]) for r in rows]
    assert t["longitude"].to_pylist() == [float(r["longitude"]) for r in rows]
    # "NA" placeholders in city/state become NULL; nothing else is NULL
    for name in ("city", "state", "country"):
        raw = [None if r[name] == "NA" else r[name] for r in rows]
        assert t[name].to_pylist() == raw
    assert sum(r["city"] == "NA" for r in rows) == t["city"].null_count == 12
    assert t["state"].null_count == 12 and t["country"].null_count == 0
    assert sum(r["country"] != "USA" for r in rows) == 4


# --- S&P 500 --------------------------------------------------------------------------------


def test_sp500_schema_and_values() -> None:
    rows = read_csv_rows(REPO_DATA / "sp500" / "constituents.csv")
    t = sp500_constituents()
    assert t.num_rows == len(rows) == 503
    assert types_of(t) == {
        "symbol": pa.string(),
        "security": pa.string(),
        "gics_sector": pa.string(),
        "gics_sub_industry": pa.string(),
        "headquarters": pa.string(),
        "date_added": pa.date32(),
        "cik": pa.int64(),
        "founded": pa.string(),
    }
    assert t["symbol"].to_pylist() == [r["Symbol"] for r in rows]
    assert t["headquarters"].to_pylist() == [r["Headquarters Location"] for r in rows]
    assert t["date_added"].to_pylist() == [dt.date.fromisoformat(r["Date added"]) for r in rows]
    assert t["cik"].to_pylist() == [int(r["CIK"]) for r in rows]
    assert t["founded"].to_pylist() == [r["Founded"] for r in rows]
    assert "2013 (1888)" in t["founded"].to_pylist()
    assert all(t[name].null_count == 0 for name in t.column_names)


def test_sp500_keys() -> None:
    [(symbols, ciks, sectors)] = sql(
        "select count(distinct symbol), count(distinct cik), count(distinct gics_sector) from s",
        s=sp500_constituents(),
    )
    assert (symbols, ciks, sectors) == (503, 500, 11)  # 3 companies have two share classes
