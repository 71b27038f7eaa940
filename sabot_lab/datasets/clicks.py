"""Deterministic synthetic clickstream (web request log) with bounded disorder and late events.

The stream is made for event-time windows and watermarks. Each event has a true time that
grows with its position in the event sequence (``events_per_second`` events per second), and a
random arrival delay of ``0 .. max_delay``; rows are emitted in arrival order, so they are out of
order by at most ``max_delay``. A small seeded fraction of rows are *late*: they arrive
``late_by`` (far more than ``max_delay``) after their event time.

Like :func:`sabot_lab.datasets.market.quotes_batch`, :func:`clicks_batch` is a pure function of
``(seed, batch_index, batch_size, start_id, ...)``: batches can be made in any order, in
parallel, or lazily (:func:`click_batches`), and :func:`clicks` concatenates them.

Examples
--------
>>> from sabot_lab.datasets.clicks import clicks
>>> t = clicks(10_000, batch_size=4_096)
>>> t.num_rows, t.column_names
(10000, ['event_time', 'user_id', 'path', 'status', 'bytes', 'latency_ms'])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from sabot_lab.datasets.batching import batch_bounds

__all__ = [
    "CLICKS_SCHEMA",
    "PATHS",
    "click_batches",
    "clicks",
    "clicks_batch",
]

CLICKS_SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("ms"), nullable=False),
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("path", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("status", pa.int16(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
    ]
)
"""Schema of :func:`clicks_batch` / :func:`clicks` (6 columns)."""

_PAGES = [
    "/", "/search", "/cart", "/login", "/checkout", "/account", "/help", "/logout", "/about",
    "/contact",
]  # fmt: skip
_CATEGORIES = [
    "books", "music", "movies", "games", "garden", "kitchen", "toys", "sports", "shoes",
    "jackets", "phones", "laptops", "cameras", "audio", "tools", "beauty", "pets", "baby",
    "office", "travel",
]  # fmt: skip
_API = [
    "items", "users", "orders", "cart", "search", "recommendations", "reviews", "prices",
    "stock", "session", "events", "coupons", "wishlist", "shipping", "payments", "ratings",
    "images", "suggest", "health", "config",
]  # fmt: skip
_STATIC = [f"/static/js/app.{k}.js" for k in range(5)]
_STATIC += [f"/static/css/site.{k}.css" for k in range(5)]
# a fixed (seed-independent) popularity order: the main pages first, then the rest shuffled
_rest = np.array(
    [f"/products/{k}" for k in range(1, 101)]
    + [f"/category/{c}" for c in _CATEGORIES]
    + [f"/api/v1/{a}" for a in _API]
    + _STATIC
    + [f"/blog/post-{k}" for k in range(1, 41)]
)
PATHS: list[str] = _PAGES + _rest[np.random.default_rng(0).permutation(len(_rest))].tolist()
"""The 200 request paths of the clickstream, most popular first."""

_PATH_DICTIONARY = pa.array(PATHS, pa.string())
_PATH_CDF = np.cumsum(1.0 / np.arange(1, len(PATHS) + 1) ** 1.1)
_PATH_CDF /= _PATH_CDF[-1]
# typical response size of each path (bytes), fixed like the dictionary
_PATH_BYTES = np.round(np.exp(np.random.default_rng(1).normal(9.0, 1.0, len(PATHS))))
_STATUS_CODES = np.array([200, 404, 500], dtype=np.int16)
_STATUS_CDF = np.cumsum([0.955, 0.035, 0.01])

Duration = str | dt.timedelta | np.timedelta64 | pd.Timedelta
"""A duration: a pandas-style string (``"10s"``, ``"5min"``) or a timedelta object."""


def _whole_ms(value: Duration, name: str) -> int:
    """``value`` as a whole, non-negative number of milliseconds."""
    ms, rest = divmod(pd.Timedelta(value), pd.Timedelta(1, "ms"))
    if rest or ms < 0:
        raise ValueError(f"{name} must be a whole number of milliseconds >= 0, got {value!r}")
    return int(ms)


def _start_ms(start: str | dt.datetime | np.datetime64 | pd.Timestamp) -> int:
    """Milliseconds since the epoch of a naive start time (aware times converted to UTC)."""
    ts = pd.Timestamp(start)
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.to_datetime64().astype("datetime64[ms]").astype(np.int64))


def clicks_batch(
    batch_index: int,
    batch_size: int,
    *,
    seed: int = 7,
    users: int = 1_000,
    start: str | dt.datetime | np.datetime64 | pd.Timestamp = "2024-01-01",
    events_per_second: float = 2_000,
    max_delay: Duration = "10s",
    late_fraction: float = 0.001,
    late_by: Duration = "5min",
    start_id: int | None = None,
) -> pa.RecordBatch:
    """Generate one deterministic batch of the clickstream, rows in arrival order.

    The batch holds the events with sequence numbers ``g = start_id + arange(batch_size)``.
    Event ``g`` happens at its *true time* ``start + floor((g + u) * 1000 / events_per_second)``
    ms (``u`` uniform in [0, 1), so true times never decrease with ``g``) and arrives ``d`` ms
    later, ``d`` a uniform integer in ``[0, max_delay]``. The rows are sorted by arrival time
    (ties by ``g``). A row is *late* with probability ``late_fraction``: it keeps its arrival
    slot but its ``event_time`` is ``arrival - late_by`` instead of the true time, i.e. it
    reports an event that happened ``late_by`` before it arrived. All other rows have
    ``event_time`` = true time.

    Random draws come from ``np.random.default_rng([seed, batch_index])`` in a fixed order that
    does not depend on the other parameters, so e.g. changing ``late_fraction`` changes only
    which rows are late (their ``event_time``), nothing else.

    **Ordering guarantee.** For every row that is not late, ``event_time >= (max event_time of
    all earlier rows of the stream) - max_delay``, including rows of earlier batches. Disorder
    never crosses a batch boundary: rows are reordered only within their batch, and every true
    time of batch ``b`` is <= every true time of batch ``b + 1``. (So near the end of a batch,
    rows are slightly *less* disordered than in a globally arrival-sorted stream.) Late rows
    break the bound on purpose; when ``late_by`` is well above ``max_delay`` they lag the
    running maximum by about ``late_by - max_delay`` to ``late_by``, except late rows near
    the very start of the stream (nothing earlier to lag behind), whose ``event_time`` can
    even precede ``start``.

    Parameters
    ----------
    batch_index : int
        Position of the batch in the stream, ``>= 0``; selects the random stream.
    batch_size : int
        Number of rows, ``>= 0``.
    seed : int, default 7
        Seed of the stream.
    users : int, default 1_000
        Number of users; ``user_id`` is in ``1 .. users`` with a Zipf-like skew: user ``k``
        has probability ``ln((k + 1) / k) / ln(users + 1)`` (user 1 is the busiest, 10% of
        rows with the default 1,000 users).
    start : str or datetime-like, default "2024-01-01"
        True time of event 0 (naive wall-clock time; an aware time is converted to UTC).
    events_per_second : float, default 2_000
        Rate of true event times, ``> 0``.
    max_delay : str or timedelta, default "10s"
        Largest arrival delay of a row that is not late; whole milliseconds, ``>= 0``.
    late_fraction : float, default 0.001
        Probability that a row is late, in ``[0, 1]``.
    late_by : str or timedelta, default "5min"
        How long after its ``event_time`` a late row arrives; whole milliseconds, and
        greater than ``max_delay`` when ``late_fraction > 0``.
    start_id : int, optional
        Sequence number of the batch's first event; default ``batch_index * batch_size``. Pass
        it for a final, shorter batch, as :func:`click_batches` does.

    Returns
    -------
    pyarrow.RecordBatch
        Schema :data:`CLICKS_SCHEMA`: ``event_time`` timestamp[ms] (naive), ``user_id`` int32,
        ``path`` dictionary<int32, string> (the 200 :data:`PATHS` in popularity order,
        Zipf-like skew, ``"/"`` about 21%), ``status`` int16 (about 95.5% 200, 3.5% 404, 1%
        500), ``bytes`` int64 (log-normal around a per-path size for 200, small for errors),
        ``latency_ms`` float64 (log-normal, median about 35 ms, 500s about 4x slower). No NULLs.

    Raises
    ------
    ValueError
        If a count is negative, ``users < 1``, ``events_per_second <= 0``, ``late_fraction``
        is outside [0, 1], a duration is negative or not whole milliseconds, or
        ``late_by <= max_delay`` while ``late_fraction > 0``.

    Examples
    --------
    >>> b = clicks_batch(3, 1_000)
    >>> b.num_rows, b.num_columns
    (1000, 6)
    >>> clicks_batch(3, 1_000).equals(b)
    True
    >>> import numpy as np
    >>> t = clicks_batch(0, 1_000, late_fraction=0.0)["event_time"].to_numpy().astype(np.int64)
    >>> bool((np.maximum.accumulate(t) - t).max() <= 10_000)  # never more than 10 s behind
    True
    """
    if batch_index < 0 or batch_size < 0:
        raise ValueError(
            f"batch_index and batch_size must be >= 0, got {batch_index} and {batch_size}"
        )
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    if not events_per_second > 0:
        raise ValueError(f"events_per_second must be > 0, got {events_per_second}")
    if not 0.0 <= late_fraction <= 1.0:
        raise ValueError(f"late_fraction must be in [0, 1], got {late_fraction}")
    delay_ms = _whole_ms(max_delay, "max_delay")
    late_ms = _whole_ms(late_by, "late_by")
    if late_fraction > 0 and late_ms <= delay_ms:
        raise ValueError(f"late_by ({late_by!r}) must exceed max_delay ({max_delay!r})")
    n = batch_size
    first = batch_index * batch_size if start_id is None else start_id
    rng = np.random.default_rng([seed, batch_index])

    # true times in event order, arrival = true time + delay; late rows are back-dated
    g = np.arange(first, first + n, dtype=np.float64)
    true_ms = _start_ms(start) + np.floor((g + rng.random(n)) * (1000.0 / events_per_second))
    true_ms = true_ms.astype(np.int64)
    arrival_ms = true_ms + rng.integers(0, delay_ms + 1, n)
    late = rng.random(n) < late_fraction
    event_ms = np.where(late, arrival_ms - late_ms, true_ms)

    # per-event attributes
    user_rank = np.floor(np.exp(rng.random(n) * np.log1p(users))).astype(np.int64) - 1
    user_id = np.minimum(user_rank, users - 1) + 1
    path = np.searchsorted(_PATH_CDF, rng.random(n), side="right").astype(np.int32)
    path = np.minimum(path, len(PATHS) - 1)
    status_index = np.minimum(np.searchsorted(_STATUS_CDF, rng.random(n), side="right"), 2)
    status = _STATUS_CODES[status_index]
    size_noise = np.exp(rng.normal(0.0, 0.3, n))
    error_bytes = np.where(status == 404, 512.0, 256.0)
    nbytes = np.round(np.where(status == 200, _PATH_BYTES[path], error_bytes) * size_noise)
    latency = np.exp(rng.normal(np.log(35.0), 0.7, n)) * np.where(status == 500, 4.0, 1.0)

    order = np.argsort(arrival_ms, kind="stable")
    columns = [
        pa.array(event_ms[order].astype("datetime64[ms]")),
        pa.array(user_id[order].astype(np.int32)),
        pa.DictionaryArray.from_arrays(pa.array(path[order]), _PATH_DICTIONARY),
        pa.array(status[order]),
        pa.array(nbytes[order].astype(np.int64)),
        pa.array(np.round(latency[order], 3)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=CLICKS_SCHEMA)


def click_batches(
    n: int = 1_000_000,
    *,
    batch_size: int = 65_536,
    seed: int = 7,
    **options: object,
) -> Iterator[pa.RecordBatch]:
    """Lazily yield the batches of :func:`clicks` (the last batch may be shorter).

    Batch ``b`` is ``clicks_batch(b, rows, seed=seed, start_id=b * batch_size, **options)``
    with ``rows = min(batch_size, n - b * batch_size)``, so only one batch is in memory.

    Parameters
    ----------
    n : int, default 1_000_000
        Total number of rows, ``>= 0``.
    batch_size : int, default 65_536
        Rows per batch, ``>= 1``.
    seed : int, default 7
        Seed of the stream.
    **options
        ``users``, ``start``, ``events_per_second``, ``max_delay``, ``late_fraction``,
        ``late_by``: passed on to :func:`clicks_batch`.

    Yields
    ------
    pyarrow.RecordBatch
        Batches with schema :data:`CLICKS_SCHEMA`.

    Examples
    --------
    >>> [b.num_rows for b in click_batches(250, batch_size=100)]
    [100, 100, 50]
    """
    for b, first, rows in batch_bounds(n, batch_size):
        yield clicks_batch(b, rows, seed=seed, start_id=first, **options)


def clicks(
    n: int = 1_000_000,
    *,
    batch_size: int = 65_536,
    seed: int = 7,
    users: int = 1_000,
    start: str | dt.datetime | np.datetime64 | pd.Timestamp = "2024-01-01",
    events_per_second: float = 2_000,
    max_delay: Duration = "10s",
    late_fraction: float = 0.001,
    late_by: Duration = "5min",
) -> pa.Table:
    """Generate ``n`` clickstream rows as one table (the concatenation of :func:`click_batches`).

    The rows are in arrival order; see :func:`clicks_batch` for the columns, the disorder
    model and the exact ordering guarantee (non-late rows are never more than ``max_delay``
    behind the largest ``event_time`` before them). With the defaults, 1,000,000 rows cover
    about 500 s of event time, and about 1,000 rows are late by 5 minutes.

    Parameters
    ----------
    n : int, default 1_000_000
        Number of rows, ``>= 0``.
    batch_size : int, default 65_536
        Rows per generated batch (and per table chunk). Changing it changes the data.
    seed, users, start, events_per_second, max_delay, late_fraction, late_by
        As in :func:`clicks_batch`.

    Returns
    -------
    pyarrow.Table
        Schema :data:`CLICKS_SCHEMA`, one chunk per batch.

    Examples
    --------
    >>> t = clicks(2_500, batch_size=1_000)
    >>> t.num_rows, t["event_time"].num_chunks
    (2500, 3)
    >>> t.slice(2_000).combine_chunks().to_batches()[0].equals(
    ...     clicks_batch(2, 500, start_id=2_000))
    True
    """
    batches = click_batches(
        n,
        batch_size=batch_size,
        seed=seed,
        users=users,
        start=start,
        events_per_second=events_per_second,
        max_delay=max_delay,
        late_fraction=late_fraction,
        late_by=late_by,
    )
    return pa.Table.from_batches(list(batches), schema=CLICKS_SCHEMA)
