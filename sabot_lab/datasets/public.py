"""Loaders for the small real public data sets bundled in the repository's ``datasets/`` folder.

Files and licences are listed in ``datasets/README.md``; each folder keeps its upstream
``LICENSE-NOTE.txt``. Every loader returns a :class:`pyarrow.Table` with snake_case column names
and explicit types, in file order.

Examples
--------
>>> from sabot_lab.datasets.public import airports, flights, sp500_constituents
>>> flights().num_rows, airports().num_rows, sp500_constituents().num_rows
(10000, 3376, 503)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

__all__ = [
    "AIRPORTS_SCHEMA",
    "DATA_ENV_VAR",
    "FLIGHTS_SCHEMA",
    "SP500_SCHEMA",
    "airports",
    "data_dir",
    "flights",
    "sp500_constituents",
]

#: Environment variable that overrides the data folder.
DATA_ENV_VAR = "SABOT_LAB_DATA"

FLIGHTS_SCHEMA = pa.schema(
    [
        pa.field("date", pa.timestamp("s")),
        pa.field("delay", pa.int64()),
        pa.field("distance", pa.int64()),
        pa.field("origin", pa.string()),
        pa.field("destination", pa.string()),
    ]
)
AIRPORTS_SCHEMA = pa.schema(
    [
        pa.field("iata", pa.string()),
        pa.field("name", pa.string()),
        pa.field("city", pa.string()),
        pa.field("state", pa.string()),
        pa.field("country", pa.string()),
        pa.field("latitude", pa.float64()),
        pa.field("longitude", pa.float64()),
    ]
)
SP500_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string()),
        pa.field("security", pa.string()),
        pa.field("gics_sector", pa.string()),
        pa.field("gics_sub_industry", pa.string()),
        pa.field("headquarters", pa.string()),
        pa.field("date_added", pa.date32()),
        pa.field("cik", pa.int64()),
        pa.field("founded", pa.string()),
    ]
)
# raw CSV header -> snake_case name
_SP500_COLUMNS = {
    "Symbol": "symbol",
    "Security": "security",
    "GICS Sector": "gics_sector",
    "GICS Sub-Industry": "gics_sub_industry",
    "Headquarters Location": "headquarters",
    "Date added": "date_added",
    "CIK": "cik",
    "Founded": "founded",
}


def data_dir() -> Path:
    """Return the folder holding the bundled data files.

    Returns
    -------
    pathlib.Path
        ``$SABOT_LAB_DATA`` if that environment variable is set and not empty, else the
        repository's top-level ``datasets/`` folder. The folder is not checked here; the
        loaders raise :class:`FileNotFoundError` for a missing file.

    Examples
    --------
    >>> (data_dir() / "vega" / "airports.csv").is_file()
    True
    """
    override = os.environ.get(DATA_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "datasets"


def _data_file(*parts: str) -> Path:
    """Path of a bundled file; raise FileNotFoundError naming the path if it is missing."""
    path = data_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"sabot_lab data file not found: {path}. Set the {DATA_ENV_VAR} environment "
            f"variable to the folder holding {'/'.join(parts)} (the repository's datasets/)."
        )
    return path


def flights() -> pa.Table:
    """Load 10,000 US domestic flights of January-March 2001 (BTS on-time data, via vega).

    The rows are in file order, which is time order. Every ``origin`` and ``destination``
    code is present in :func:`airports`.

    Returns
    -------
    pyarrow.Table
        ``date`` timestamp[s] (parsed from ``"YYYY/MM/DD HH:MM"``; local wall-clock time of
        the departure airport, no time zone), ``delay`` int64 (minutes, negative = early),
        ``distance`` int64 (miles), ``origin`` and ``destination`` strings (airport codes).

    Raises
    ------
    FileNotFoundError
        If ``vega/flights-10k.json`` is not under :func:`data_dir`.

    Examples
    --------
    >>> t = flights()
    >>> t.num_rows
    10000
    >>> t.slice(0, 1).to_pylist()
    [{'date': datetime.datetime(2001, 1, 1, 0, 47), 'delay': 66, 'distance': 1750,
      'origin': 'DTW', 'destination': 'LAS'}]
    """
    with _data_file("vega", "flights-10k.json").open(encoding="utf-8") as f:
        records = json.load(f)
    raw_schema = FLIGHTS_SCHEMA.set(0, pa.field("date", pa.string()))
    raw = pa.Table.from_pylist(records, schema=raw_schema)
    date = pc.strptime(raw["date"], format="%Y/%m/%d %H:%M", unit="s")
    return raw.set_column(0, FLIGHTS_SCHEMA.field("date"), date)


def airports() -> pa.Table:
    """Load 3,376 airports from the FAA (via vega): codes, names and coordinates.

    Data notes (checked in ``tests/datasets/test_public.py``):

    * ``iata`` is unique and never NULL, so it is a valid join key for :func:`flights`.
      Despite its name it holds FAA location identifiers: 3,334 are three characters and 42
      are four (e.g. ``"1ND3"``); some three-character codes are not IATA codes (``"00M"``).
    * ``city`` and ``state`` are NULL for 12 airports, where the file has the placeholder
      ``"NA"`` (military bases and a few non-US airports).
    * ``country`` is ``"USA"`` except for 4 airports (Thailand, Palau, N Mariana Islands,
      Federated States of Micronesia); ``state`` includes territories (PR, GU, VI, AS, CQ).

    Returns
    -------
    pyarrow.Table
        ``iata``, ``name``, ``city``, ``state``, ``country`` strings, ``latitude`` and
        ``longitude`` float64 (decimal degrees), in file order (sorted by ``iata``).

    Raises
    ------
    FileNotFoundError
        If ``vega/airports.csv`` is not under :func:`data_dir`.

    Examples
    --------
    >>> t = airports()
    >>> t.num_rows, t["iata"].null_count, t["city"].null_count
    (3376, 0, 12)
    >>> t.slice(0, 1).to_pylist()
    [{'iata': '00M', 'name': 'Thigpen', 'city': 'Bay Springs', 'state': 'MS',
      'country': 'USA', 'latitude': 31.95376472, 'longitude': -89.23450472}]
    """
    convert = pv.ConvertOptions(
        column_types=AIRPORTS_SCHEMA,
        include_columns=AIRPORTS_SCHEMA.names,
        null_values=["", "NA"],
        strings_can_be_null=True,
    )
    table = pv.read_csv(_data_file("vega", "airports.csv"), convert_options=convert)
    return table.cast(AIRPORTS_SCHEMA)


def sp500_constituents() -> pa.Table:
    """Load the 503 S&P 500 constituents (Wikipedia list via datasets/s-and-p-500-companies).

    Data notes: ``symbol`` is unique and uses dots for share classes (``"BRK.B"``,
    ``"BF.B"``); ``cik`` is *not* unique, because three companies list two share classes
    (GOOGL/GOOG, FOXA/FOX, NWSA/NWS), so 503 rows hold 500 CIKs. ``founded`` is free text
    such as ``"2013 (1888)"`` or ``"1904/1946/1959"``, so it stays a string.

    Returns
    -------
    pyarrow.Table
        ``symbol``, ``security``, ``gics_sector``, ``gics_sub_industry``, ``headquarters``
        strings, ``date_added`` date32, ``cik`` int64 (SEC Central Index Key), ``founded``
        string; in file order.

    Raises
    ------
    FileNotFoundError
        If ``sp500/constituents.csv`` is not under :func:`data_dir`.

    Examples
    --------
    >>> t = sp500_constituents()
    >>> t.num_rows
    503
    >>> t.slice(0, 1).to_pylist()
    [{'symbol': 'MMM', 'security': '3M', 'gics_sector': 'Industrials',
      'gics_sub_industry': 'Industrial Conglomerates', 'headquarters': 'Saint Paul, Minnesota',
      'date_added': datetime.date(1957, 3, 4), 'cik': 66740, 'founded': '1902'}]
    """
    raw_types = {raw: SP500_SCHEMA.field(name).type for raw, name in _SP500_COLUMNS.items()}
    convert = pv.ConvertOptions(column_types=raw_types, include_columns=list(_SP500_COLUMNS))
    table = pv.read_csv(_data_file("sp500", "constituents.csv"), convert_options=convert)
    return table.rename_columns(list(_SP500_COLUMNS.values())).cast(SP500_SCHEMA)
