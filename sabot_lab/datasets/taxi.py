"""NYC yellow-cab trips: a real, deliberately unsorted event stream (20,000 trips, 2019).

The two monthly samples in ``datasets/nyc_taxi/`` (10,000 trips each from the NYC TLC trip
records, trimmed to 5 columns) are read in file order, January then February. The rows are
*not* sorted by time, which makes them a test of event-time handling: watermarks, late data
and windowed aggregates over a stream whose order is not its time order.

Examples
--------
>>> from sabot_lab.datasets.taxi import taxi_trips
>>> taxi_trips().num_rows
20000
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pv

from sabot_lab.datasets.public import _data_file

__all__ = ["TAXI_FILES", "TAXI_SCHEMA", "taxi_trips"]

TAXI_SCHEMA = pa.schema(
    [
        pa.field("vendor_id", pa.int8(), nullable=False),
        pa.field("pickup_datetime", pa.timestamp("s"), nullable=False),
        pa.field("dropoff_datetime", pa.timestamp("s"), nullable=False),
        pa.field("passenger_count", pa.int8()),
        pa.field("fare_amount", pa.float64(), nullable=False),
    ]
)
"""Schema of :func:`taxi_trips` (5 columns, the files' own names and order)."""

#: The bundled files, in the order :func:`taxi_trips` reads them.
TAXI_FILES = (
    "yellow_tripdata_sample_2019-01.csv",
    "yellow_tripdata_sample_2019-02.csv",
)


def taxi_trips() -> pa.Table:
    """Load 20,000 NYC yellow-cab trips of January and February 2019, in file order.

    Rows are the January file's 10,000 trips then the February file's 10,000, each in its
    file's order, which is **not** time order. Measured on ``pickup_datetime`` (checked in
    ``tests/datasets/test_taxi.py``):

    * 9,946 rows (49.7%) have an earlier pickup than the row before them, and 19,977 have an
      earlier pickup than the latest one before them: within a month the rows are in
      effectively random order.
    * The largest step back between consecutive rows is 30 d 17:00:55 (2,653,255 s); the
      largest lag behind the running maximum is 30 d 23:58:21 (2,678,301 s), so a
      bounded-out-of-orderness watermark would need a whole month. Between the two files
      there is no step back (every February pickup is after every January one).
    * January pickups span 2019-01-01 00:00:50 .. 2019-01-31 23:59:11, February
      2019-02-01 00:12:32 .. 2019-02-28 23:56:53; some dropoffs fall in the next month.
      ``dropoff_datetime >= pickup_datetime`` on every row.

    Other data notes: ``vendor_id`` is 1, 2 or 4 (182 rows are 4); ``passenger_count`` is never
    NULL in these files but is 0 for 1,579 February trips (not recorded by the driver);
    ``fare_amount`` is negative for 22 trips (refunds and disputes) and reaches 3,004.

    Returns
    -------
    pyarrow.Table
        Schema :data:`TAXI_SCHEMA`: ``vendor_id`` int8, ``pickup_datetime`` and
        ``dropoff_datetime`` timestamp[s] (New York local wall-clock time, no time zone),
        ``passenger_count`` int8 (nullable: an empty field is NULL), ``fare_amount`` float64
        (US dollars). One chunk per file.

    Raises
    ------
    FileNotFoundError
        If a file of :data:`TAXI_FILES` is not under ``nyc_taxi/`` in
        :func:`~sabot_lab.datasets.data_dir`.

    Examples
    --------
    >>> t = taxi_trips()
    >>> t.num_rows, t.num_columns
    (20000, 5)
    >>> t.slice(0, 1).to_pylist()
    [{'vendor_id': 2, 'pickup_datetime': datetime.datetime(2019, 1, 5, 6, 36, 51),
      'dropoff_datetime': datetime.datetime(2019, 1, 5, 6, 50, 42), 'passenger_count': 1,
      'fare_amount': 14.0}]
    """
    convert = pv.ConvertOptions(
        column_types=TAXI_SCHEMA,
        include_columns=TAXI_SCHEMA.names,
        timestamp_parsers=["%Y-%m-%d %H:%M:%S"],
        null_values=[""],
        strings_can_be_null=True,
    )
    tables = [pv.read_csv(_data_file("nyc_taxi", f), convert_options=convert) for f in TAXI_FILES]
    return pa.concat_tables(tables).cast(TAXI_SCHEMA)
