"""Deterministic synthetic market data: a securities master and a stream of quotes.

Everything here is generated with seeded :class:`numpy.random.Generator` objects and fully
vectorized numpy, so the same arguments always give the same Arrow data, on any machine.

* :func:`securities` is a wide reference table (31 columns), one row per instrument, in
  shuffled order (not sorted by key).
* :func:`quotes_batch` makes one :class:`pyarrow.RecordBatch` of quotes; it depends only on
  ``(seed, batch_index, batch_size, start_id, securities_n)``, so a stream of any length can be
  produced batch by batch without materializing it. :func:`quote_batches` iterates them and
  :func:`quotes` concatenates them into a table.

Instrument keys follow one formula, shared by both tables: the instrument with index
``i`` (``0 <= i < securities_n``) has ``instrument_id = 100_000 + 3 * i``. About 1% of quotes carry
an id ``100_000 + 3 * i + 1``, which no security ever has (unmatched rows for joins), and about
2% have a NULL ``instrument_id`` (Arrow validity mask, not NaN).

Examples
--------
>>> from sabot_lab.datasets.market import quotes, securities
>>> securities(100).num_rows
100
>>> quotes(1_000, batch_size=300).num_rows
1000
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.datasets.batching import batch_bounds

__all__ = [
    "ID_BASE",
    "ID_STEP",
    "NULL_ID_FRACTION",
    "QUOTES_PER_DAY",
    "QUOTES_SCHEMA",
    "SECURITIES_SCHEMA",
    "UNKNOWN_ID_FRACTION",
    "quote_batches",
    "quotes",
    "quotes_batch",
    "securities",
    "security_versions",
]

#: ``instrument_id`` of the instrument with index ``i`` is ``ID_BASE + ID_STEP * i``.
ID_BASE = 100_000
ID_STEP = 3
#: Expected fraction of quotes whose ``instrument_id`` is NULL.
NULL_ID_FRACTION = 0.02
#: Expected fraction of quotes whose ``instrument_id`` is not in :func:`securities`.
UNKNOWN_ID_FRACTION = 0.01
#: Quotes per trading day: ``quote_id // QUOTES_PER_DAY`` is the business-day number.
QUOTES_PER_DAY = 500_000

_FIRST_DAY = np.datetime64("2024-01-02", "D")  # a Tuesday; days advance over Mon-Fri only
_SESSION_OPEN_US = (9 * 3600 + 30 * 60) * 1_000_000  # 09:30 local wall clock, no time zone
_SESSION_US = 6 * 3600 * 1_000_000 + 30 * 60 * 1_000_000  # 09:30-16:00
_SLOT_US = _SESSION_US // QUOTES_PER_DAY
_SEQUENCE_BASE = 1_000_000_000

_SIDE_DICTIONARY = pa.array(["B", "S"])
_VENUES = pa.array(["XNYS", "XNAS", "ARCX", "BATS", "EDGX", "IEXG", "MEMX"])
_VENUE_CDF = np.cumsum([0.24, 0.22, 0.14, 0.14, 0.12, 0.08, 0.06])
_NOTE_HEADS = [
    "auto", "manual", "algo", "iceberg", "pegged", "retail", "block", "sweep",
    "odd-lot", "late", "hedge", "rebalance", "closing", "opening", "midpoint", "dark",
]  # fmt: skip
_NOTE_TAILS = [
    "fill", "quote", "refresh", "cancel-replace", "update", "print", "cross", "touch",
    "improve", "widen", "tighten", "retry", "ack", "amend", "flash", "test",
]  # fmt: skip
_NOTES = pa.array([f"{h} {t}" for h in _NOTE_HEADS for t in _NOTE_TAILS])

QUOTES_SCHEMA = pa.schema(
    [
        pa.field("quote_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us"), nullable=False),
        pa.field("instrument_id", pa.int64()),
        pa.field("bid", pa.float64(), nullable=False),
        pa.field("ask", pa.float64(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("bid_size", pa.int64(), nullable=False),
        pa.field("ask_size", pa.int64(), nullable=False),
        pa.field("volume", pa.int64(), nullable=False),
        pa.field("side", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("venue", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("trader_id", pa.int32(), nullable=False),
        pa.field("sequence", pa.int64(), nullable=False),
        *[pa.field(f"payload_{k}", pa.float64(), nullable=False) for k in range(6)],
        pa.field("note", pa.string(), nullable=False),
    ]
)
"""Schema of :func:`quotes_batch` / :func:`quotes` (20 columns)."""

_SECTORS = [
    ("Energy", ["Oil & Gas Drilling", "Integrated Oil & Gas", "Oil & Gas Refining"]),
    ("Materials", ["Chemicals", "Metals & Mining", "Containers & Packaging"]),
    ("Industrials", ["Aerospace & Defense", "Machinery", "Air Freight & Logistics"]),
    ("Consumer Discretionary", ["Automobiles", "Hotels & Restaurants", "Broadline Retail"]),
    ("Consumer Staples", ["Beverages", "Food Products", "Household Products"]),
    ("Health Care", ["Pharmaceuticals", "Biotechnology", "Health Care Equipment"]),
    ("Financials", ["Banks", "Insurance", "Capital Markets"]),
    ("Information Technology", ["Software", "Semiconductors", "IT Services"]),
    ("Communication Services", ["Media", "Telecom Services", "Interactive Media"]),
    ("Utilities", ["Electric Utilities", "Gas Utilities", "Water Utilities"]),
    ("Real Estate", ["Office REITs", "Residential REITs", "Real Estate Services"]),
]
_SECTOR_NAMES = pa.array([s for s, _ in _SECTORS])
_INDUSTRY_NAMES = pa.array([i for _, inds in _SECTORS for i in inds])
_INDUSTRIES_PER_SECTOR = 3

# country, region, currency, main exchange (MIC), second exchange, weight, board lot
_COUNTRIES = [
    ("US", "Americas", "USD", "XNYS", "XNAS", 0.45, 1),
    ("CA", "Americas", "CAD", "XTSE", "XTSE", 0.06, 1),
    ("GB", "EMEA", "GBP", "XLON", "XLON", 0.08, 1),
    ("DE", "EMEA", "EUR", "XETR", "XFRA", 0.06, 1),
    ("FR", "EMEA", "EUR", "XPAR", "XPAR", 0.05, 1),
    ("NL", "EMEA", "EUR", "XAMS", "XAMS", 0.02, 1),
    ("CH", "EMEA", "CHF", "XSWX", "XSWX", 0.03, 1),
    ("JP", "APAC", "JPY", "XTKS", "XTKS", 0.12, 100),
    ("HK", "APAC", "HKD", "XHKG", "XHKG", 0.06, 500),
    ("AU", "APAC", "AUD", "XASX", "XASX", 0.07, 1),
]
_COUNTRY_CODES = pa.array([c[0] for c in _COUNTRIES])
_COUNTRY_ASCII = np.frombuffer("".join(c[0] for c in _COUNTRIES).encode(), np.uint8).reshape(-1, 2)
_REGIONS = pa.array([c[1] for c in _COUNTRIES])
_CURRENCIES = pa.array([c[2] for c in _COUNTRIES])
_EXCHANGES = pa.array([m for c in _COUNTRIES for m in (c[3], c[4])])
_COUNTRY_CDF = np.cumsum([c[5] for c in _COUNTRIES])
_BOARD_LOTS = np.array([c[6] for c in _COUNTRIES], dtype=np.int32)

_NAME_WORDS = pa.array(
    ["Apex", "Blue", "Cedar", "Delta", "Ember", "Fjord", "Granite", "Harbor", "Iron",
     "Juniper", "Keystone", "Lumen", "Meridian", "Nova", "Orchid", "Pioneer", "Quartz",
     "Summit", "Tidal", "Vertex"]
)  # fmt: skip
_NAME_SUFFIXES = pa.array(["Inc", "Corp", "Holdings", "Group", "plc", "AG", "SA", "Ltd"])
_ASSET_CLASSES = pa.array(["Common Stock", "ADR", "ETF", "REIT"])
_ASSET_CLASS_CDF = np.cumsum([0.88, 0.05, 0.05, 0.02])
_RATINGS = pa.array(
    ["AAA", "AA+", "AA", "AA-", "A+", "A", "A-", "BBB+", "BBB", "BBB-", "BB+", "BB", "BB-",
     "B+", "B", "B-", "CCC", "NR"]
)  # fmt: skip
_RATING_CDF = np.cumsum([1, 2, 3, 4, 6, 8, 9, 11, 11, 10, 7, 6, 5, 4, 3, 2, 1, 7]) / 100.0
_CAP_BUCKETS = pa.array(["micro", "small", "mid", "large", "mega"])
_CAP_EDGES = np.array([3e8, 2e9, 1e10, 2e11])
_EPOCH = np.datetime64("1970-01-01", "D")

SECURITIES_SCHEMA = pa.schema(
    [
        pa.field("instrument_id", pa.int64(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("isin", pa.string(), nullable=False),
        pa.field("asset_class", pa.string(), nullable=False),
        pa.field("sector", pa.string(), nullable=False),
        pa.field("industry", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("lot_size", pa.int32(), nullable=False),
        pa.field("tick_size", pa.float64(), nullable=False),
        pa.field("listing_date", pa.date32(), nullable=False),
        pa.field("is_active", pa.bool_(), nullable=False),
        pa.field("market_cap", pa.float64(), nullable=False),
        pa.field("cap_bucket", pa.string(), nullable=False),
        pa.field("reference_price", pa.float64(), nullable=False),
        pa.field("shares_outstanding", pa.int64(), nullable=False),
        pa.field("free_float", pa.float64(), nullable=False),
        pa.field("avg_daily_volume", pa.int64(), nullable=False),
        pa.field("beta", pa.float64(), nullable=False),
        pa.field("volatility_30d", pa.float64(), nullable=False),
        pa.field("dividend_yield", pa.float64(), nullable=False),
        pa.field("pe_ratio", pa.float64()),
        pa.field("rating", pa.string(), nullable=False),
        pa.field("esg_score", pa.float64(), nullable=False),
        pa.field("analyst_count", pa.int32(), nullable=False),
        pa.field("employees", pa.int64(), nullable=False),
        pa.field("founded_year", pa.int32(), nullable=False),
        pa.field("updated_at", pa.timestamp("us"), nullable=False),
    ]
)
"""Schema of :func:`securities` (31 columns)."""


def _instrument_ids(index: np.ndarray) -> np.ndarray:
    """Map instrument indexes ``0..n-1`` to ``instrument_id`` values (shared by both tables)."""
    return ID_BASE + ID_STEP * np.asarray(index, dtype=np.int64)


def _reference_price(index: np.ndarray) -> np.ndarray:
    """Seed-independent reference price per instrument index, in ``[5, 273)`` with cents."""
    frac = (np.asarray(index, dtype=np.float64) * 0.6180339887498949) % 1.0
    return np.round(5.0 * np.exp(4.0 * frac), 2)


def _draw_category(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` category codes with cumulative probabilities ``cdf`` (last value ~1)."""
    codes = np.searchsorted(cdf / cdf[-1], rng.random(n), side="right")
    return np.minimum(codes, len(cdf) - 1)


def _strings_from_ascii(chars: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Build a string array from a left-aligned ``(n, width)`` uint8 matrix and row lengths."""
    n, width = chars.shape
    lengths = np.asarray(lengths, dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = np.ascontiguousarray(chars[np.arange(width) < lengths[:, None]], dtype=np.uint8)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _symbols(index: np.ndarray) -> pa.Array:
    """Unique tickers: bijective base-26 letters of ``index + 1`` (A..Z, AA..ZZ, AAA..)."""
    k = np.asarray(index, dtype=np.int64) + 1
    rev_columns = []  # least significant letter first
    lengths = np.zeros(k.size, dtype=np.int32)
    while k.any():  # loops over letter positions (a handful), not rows
        live = k > 0
        k = k - live
        rev_columns.append(ord("A") + k % 26)
        lengths += live
        k = k // 26
    if not rev_columns:  # n == 0
        rev_columns.append(np.zeros(0, dtype=np.int64))
    rev = np.stack(rev_columns, axis=1).astype(np.uint8)
    width = rev.shape[1]
    # reverse the used part of each row so the most significant letter comes first
    src = np.clip(lengths[:, None] - 1 - np.arange(width), 0, width - 1)
    return _strings_from_ascii(np.take_along_axis(rev, src, axis=1), lengths)


def _isins(country: np.ndarray, ids: np.ndarray) -> pa.Array:
    """Unique ISINs: country code + 9-digit NSIN (a bijection of the id) + Luhn check digit."""
    n = ids.size
    nsin = (ids.astype(np.int64) * 387_420_489) % 1_000_000_000  # 3**18: a bijection mod 1e9
    nsin_digits = (nsin[:, None] // 10 ** np.arange(8, -1, -1, dtype=np.int64)) % 10
    letters = _COUNTRY_ASCII[country].astype(np.int64) - ord("A") + 10  # A=10 .. Z=35
    letter_digits = np.stack([letters // 10, letters % 10], axis=2).reshape(n, 4)
    digits = np.concatenate([letter_digits, nsin_digits], axis=1)  # 13 digits
    doubled = np.arange(digits.shape[1])[::-1] % 2 == 0  # rightmost payload digit is doubled
    value = np.where(doubled, digits * 2, digits)
    total = (value // 10 + value % 10).sum(axis=1)
    check = (10 - total % 10) % 10
    chars = np.empty((n, 12), dtype=np.uint8)
    chars[:, :2] = _COUNTRY_ASCII[country]
    chars[:, 2:11] = ord("0") + nsin_digits
    chars[:, 11] = ord("0") + check
    return _strings_from_ascii(chars, np.full(n, 12))


def securities(n: int = 10_000, seed: int = 7) -> pa.Table:
    """Generate a deterministic securities master (reference) table.

    One row per instrument ``i`` in ``0..n-1`` with key ``instrument_id = 100_000 + 3 * i``
    (unique, not contiguous). Rows come in a seeded shuffled order, so the table is *not*
    sorted by key. ``symbol`` and ``isin`` are unique too; ``reference_price`` depends only on
    the instrument (not on ``seed``) and is the level around which :func:`quotes` prices move.

    Parameters
    ----------
    n : int, default 10_000
        Number of instruments (rows), ``n >= 0``.
    seed : int, default 7
        Seed of the :class:`numpy.random.Generator` drawing the attributes and the row order.

    Returns
    -------
    pyarrow.Table
        31 columns, schema :data:`SECURITIES_SCHEMA`: ``instrument_id`` int64, ``symbol``,
        ``name``, ``isin``, ``asset_class``, ``sector`` (11 GICS sectors), ``industry``,
        ``country`` (ISO 3166 alpha-2), ``region``, ``currency``, ``exchange`` (MIC) strings,
        ``lot_size`` int32, ``tick_size`` float64, ``listing_date`` date32, ``is_active`` bool,
        ``market_cap`` float64, ``cap_bucket`` string, ``reference_price`` float64,
        ``shares_outstanding`` int64, ``free_float``, ``beta``, ``volatility_30d``,
        ``dividend_yield`` float64, ``avg_daily_volume`` int64, ``pe_ratio`` float64 (about 8%
        NULL: loss makers), ``rating`` string, ``esg_score`` float64, ``analyst_count`` int32,
        ``employees`` int64, ``founded_year`` int32, ``updated_at`` timestamp[us].

    Examples
    --------
    >>> t = securities(1_000)
    >>> t.num_rows, t.num_columns
    (1000, 31)
    >>> sorted(t["instrument_id"].to_pylist())[:3]
    [100000, 100003, 100006]
    >>> securities(1_000).equals(t)
    True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    index = np.arange(n, dtype=np.int64)
    ids = _instrument_ids(index)
    symbol = _symbols(index)

    country = _draw_category(rng, _COUNTRY_CDF, n)
    exchange = 2 * country + rng.integers(0, 2, n)
    sector = rng.integers(0, len(_SECTORS), n)
    industry = sector * _INDUSTRIES_PER_SECTOR + rng.integers(0, _INDUSTRIES_PER_SECTOR, n)
    name = pc.binary_join_element_wise(
        symbol,
        _NAME_WORDS.take(rng.integers(0, len(_NAME_WORDS), n)),
        _NAME_SUFFIXES.take(rng.integers(0, len(_NAME_SUFFIXES), n)),
        " ",
    )

    price = _reference_price(index)
    shares = np.round(np.exp(rng.normal(18.5, 1.6, n))).astype(np.int64) + 100_000
    market_cap = price * shares
    cap_bucket = np.searchsorted(_CAP_EDGES, market_cap, side="right")
    tick = np.where(price < 1.0, 0.0001, 0.01)
    tick = np.where(rng.random(n) < 0.1, 0.005, tick)

    first, last = np.datetime64("1980-01-01", "D"), np.datetime64("2023-12-29", "D")
    listing = first + rng.integers(0, (last - first).astype(np.int64) + 1, n).astype("m8[D]")
    listing_year = listing.astype("datetime64[Y]").astype(np.int64) + 1970
    founded = np.maximum(listing_year - rng.integers(0, 120, n), 1800).astype(np.int32)
    updated_at = np.datetime64("2024-01-02T06:00:00", "us") - rng.integers(
        0, 30 * 86_400_000_000, n
    ).astype("m8[us]")

    pe = np.round(np.exp(rng.normal(2.9, 0.5, n)), 2)
    columns = {
        "instrument_id": pa.array(ids),
        "symbol": symbol,
        "name": name,
        "isin": _isins(country, ids),
        "asset_class": _ASSET_CLASSES.take(_draw_category(rng, _ASSET_CLASS_CDF, n)),
        "sector": _SECTOR_NAMES.take(sector),
        "industry": _INDUSTRY_NAMES.take(industry),
        "country": _COUNTRY_CODES.take(country),
        "region": _REGIONS.take(country),
        "currency": _CURRENCIES.take(country),
        "exchange": _EXCHANGES.take(exchange),
        "lot_size": pa.array(_BOARD_LOTS[country]),
        "tick_size": pa.array(tick),
        "listing_date": pa.array((listing - _EPOCH).astype(np.int32), pa.date32()),
        "is_active": pa.array(rng.random(n) < 0.97),
        "market_cap": pa.array(market_cap),
        "cap_bucket": _CAP_BUCKETS.take(cap_bucket),
        "reference_price": pa.array(price),
        "shares_outstanding": pa.array(shares),
        "free_float": pa.array(np.round(rng.uniform(0.3, 1.0, n), 4)),
        "avg_daily_volume": pa.array((shares * rng.uniform(0.001, 0.02, n)).astype(np.int64)),
        "beta": pa.array(np.round(rng.normal(1.0, 0.35, n), 3)),
        "volatility_30d": pa.array(np.round(rng.gamma(4.0, 0.07, n), 4)),
        "dividend_yield": pa.array(np.round(np.maximum(rng.normal(0.02, 0.018, n), 0.0), 4)),
        "pe_ratio": pa.array(pe, mask=rng.random(n) < 0.08),
        "rating": _RATINGS.take(_draw_category(rng, _RATING_CDF, n)),
        "esg_score": pa.array(np.round(rng.uniform(0.0, 100.0, n), 1)),
        "analyst_count": pa.array(rng.poisson(9.0, n).astype(np.int32)),
        "employees": pa.array(np.round(np.exp(rng.normal(8.0, 1.8, n))).astype(np.int64) + 5),
        "founded_year": pa.array(founded),
        "updated_at": pa.array(updated_at),
    }
    table = pa.Table.from_arrays(list(columns.values()), schema=SECURITIES_SCHEMA)
    return table.take(rng.permutation(n))


def quotes_batch(
    batch_index: int,
    batch_size: int,
    *,
    seed: int = 42,
    securities_n: int = 10_000,
    start_id: int | None = None,
) -> pa.RecordBatch:
    """Generate one deterministic batch of synthetic quotes.

    The batch is a pure function of its arguments: random draws come from
    ``np.random.default_rng([seed, batch_index])`` and everything else from ``quote_id``.
    Batches can therefore be made in any order, in parallel, or lazily.

    Parameters
    ----------
    batch_index : int
        Position of the batch in the stream, ``>= 0``; selects the random stream.
    batch_size : int
        Number of rows, ``>= 0``.
    seed : int, default 42
        Seed of the stream.
    securities_n : int, default 10_000
        Number of instruments in the matching :func:`securities` table; known ids are drawn
        (skewed toward small instrument indexes: a few hot instruments) from
        ``100_000 + 3 * i`` with ``0 <= i < securities_n``.
    start_id : int, optional
        First ``quote_id``; default ``batch_index * batch_size``. Pass it for a final, shorter
        batch, as :func:`quote_batches` does.

    Returns
    -------
    pyarrow.RecordBatch
        Schema :data:`QUOTES_SCHEMA`. ``quote_id = start_id + arange(batch_size)``; ``ts`` is a
        local wall-clock timestamp[us] (no time zone), strictly increasing with ``quote_id``:
        :data:`QUOTES_PER_DAY` quotes per weekday session 09:30-16:00 from 2024-01-02 (holidays
        ignored), each at a random time within its own slot. ``instrument_id`` is NULL for about
        2% of rows and about 1% are ids absent from :func:`securities`. ``bid < ask`` (whole
        cents), ``bid <= price <= ask``. ``sequence = 1_000_000_000 + quote_id`` (gap free).
        ``payload_0`` .. ``payload_5`` (uniform [0, 1)) and ``note`` only add width.

    Examples
    --------
    >>> b = quotes_batch(3, 1_000)
    >>> b.num_rows, b.num_columns
    (1000, 20)
    >>> b["quote_id"][0].as_py()
    3000
    >>> quotes_batch(3, 1_000).equals(b)
    True
    >>> quotes_batch(4, 1_000)["bid"].equals(b["bid"])
    False
    """
    if batch_index < 0 or batch_size < 0:
        raise ValueError(
            f"batch_index and batch_size must be >= 0, got {batch_index} and {batch_size}"
        )
    if securities_n < 1:
        raise ValueError(f"securities_n must be >= 1, got {securities_n}")
    n = batch_size
    start = batch_index * batch_size if start_id is None else start_id
    rng = np.random.default_rng([seed, batch_index])
    quote_id = np.arange(start, start + n, dtype=np.int64)

    # event time: business day from quote_id, one slot per quote, random offset in the slot
    day, slot = np.divmod(quote_id, QUOTES_PER_DAY)
    if n:
        days = np.arange(day[0], day[-1] + 1)
        day_start = np.busday_offset(_FIRST_DAY, days, roll="forward").astype("datetime64[us]")
        day_us = day_start.astype(np.int64)[day - day[0]]
    else:
        day_us = np.zeros(0, dtype=np.int64)
    ts = day_us + _SESSION_OPEN_US + slot * _SLOT_US + rng.integers(0, _SLOT_US, n)

    # instrument: skewed popularity, ~2% NULL, ~1% ids that match no security
    u = rng.random(n)
    index = (securities_n * rng.random(n) ** 2).astype(np.int64)
    unknown = (u >= NULL_ID_FRACTION) & (u < NULL_ID_FRACTION + UNKNOWN_ID_FRACTION)
    instrument_id = _instrument_ids(index) + unknown  # +1 is never a multiple-of-3 offset

    # prices in whole cents around the instrument's reference price
    mid = _reference_price(index) * (1.0 + 0.002 * rng.standard_normal(n))
    bid_cents = np.maximum(np.floor(mid * 100.0).astype(np.int64), 1)
    spread = rng.integers(1, 6, n)
    price_cents = bid_cents + rng.integers(0, spread + 1)

    payload = rng.random((6, n))
    columns = [
        pa.array(quote_id),
        pa.array(ts.astype("datetime64[us]")),
        pa.array(instrument_id, mask=u < NULL_ID_FRACTION),
        pa.array(bid_cents / 100.0),
        pa.array((bid_cents + spread) / 100.0),
        pa.array(price_cents / 100.0),
        pa.array(rng.integers(1, 51, n) * 100),
        pa.array(rng.integers(1, 51, n) * 100),
        pa.array(rng.geometric(0.004, n).astype(np.int64)),
        pa.DictionaryArray.from_arrays(rng.integers(0, 2, n, dtype=np.int8), _SIDE_DICTIONARY),
        pa.DictionaryArray.from_arrays(
            pa.array(_draw_category(rng, _VENUE_CDF, n), pa.int8()), _VENUES
        ),
        pa.array(rng.integers(1, 5_001, n, dtype=np.int32)),
        pa.array(quote_id + _SEQUENCE_BASE),
        *[pa.array(payload[k]) for k in range(6)],
        _NOTES.take(rng.integers(0, len(_NOTES), n)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=QUOTES_SCHEMA)


def quote_batches(
    n: int = 1_200_000,
    *,
    seed: int = 42,
    batch_size: int = 100_000,
    securities_n: int = 10_000,
) -> Iterator[pa.RecordBatch]:
    """Lazily yield the batches of :func:`quotes` (the last batch may be shorter).

    Batch ``b`` is ``quotes_batch(b, batch_size, seed=seed, securities_n=securities_n,
    start_id=b * batch_size)`` truncated to the rows left, so only one batch is in memory.

    Parameters
    ----------
    n : int, default 1_200_000
        Total number of quotes, ``>= 0``.
    seed : int, default 42
        Seed of the stream.
    batch_size : int, default 100_000
        Rows per batch, ``>= 1``.
    securities_n : int, default 10_000
        Number of instruments in the matching :func:`securities` table.

    Yields
    ------
    pyarrow.RecordBatch
        Batches with schema :data:`QUOTES_SCHEMA`.

    Examples
    --------
    >>> [b.num_rows for b in quote_batches(250, batch_size=100)]
    [100, 100, 50]
    """
    for b, start, rows in batch_bounds(n, batch_size):
        yield quotes_batch(b, rows, seed=seed, securities_n=securities_n, start_id=start)


def quotes(
    n: int = 1_200_000,
    *,
    seed: int = 42,
    batch_size: int = 100_000,
    securities_n: int = 10_000,
) -> pa.Table:
    """Generate ``n`` synthetic quotes as one table (the concatenation of :func:`quote_batches`).

    Parameters
    ----------
    n : int, default 1_200_000
        Number of quotes, ``>= 0``.
    seed : int, default 42
        Seed of the stream.
    batch_size : int, default 100_000
        Rows per generated batch (and per table chunk). Changing it changes the data.
    securities_n : int, default 10_000
        Number of instruments in the matching :func:`securities` table.

    Returns
    -------
    pyarrow.Table
        Schema :data:`QUOTES_SCHEMA`, one chunk per batch; see :func:`quotes_batch`.

    Examples
    --------
    >>> t = quotes(2_500, batch_size=1_000)
    >>> t.num_rows, t["quote_id"].num_chunks
    (2500, 3)
    >>> t.slice(2_000).combine_chunks().to_batches()[0].equals(
    ...     quotes_batch(2, 500, start_id=2_000))
    True
    """
    return pa.Table.from_batches(
        list(quote_batches(n, seed=seed, batch_size=batch_size, securities_n=securities_n)),
        schema=QUOTES_SCHEMA,
    )


def security_versions(n: int = 10_000, versions: int = 10, *, days: int = 25,
                      seed: int = 7) -> pa.Table:
    """Generate versioned reference data: each instrument's rating and risk weight over time.

    ``versions`` rows per instrument ``i`` in ``0..n-1`` (key ``instrument_id`` as in
    :func:`securities`), each valid from a seeded time (``valid_from``, timestamp[us])
    spread over the ``days`` business days from the first day of :func:`quotes`, and one
    day before: most quotes fall after their instrument's first version, some before it. An
    instrument's versions have distinct times; rows come shuffled, not sorted by time or key.
    ``version`` numbers an instrument's versions from 1 in time order (the ground truth of
    which version was valid when).

    >>> v = security_versions(3, 4)
    >>> v.num_rows, v.column_names
    (12, ['instrument_id', 'valid_from', 'version', 'rating', 'risk_weight'])
    """
    if n < 0 or versions < 1 or days < 1:
        raise ValueError(f"need n >= 0, versions >= 1 and days >= 1, got {n}, {versions}, {days}")
    rng = np.random.default_rng([seed, 17])
    first = np.datetime64(_FIRST_DAY, "us").astype(np.int64) - 86_400_000_000
    last = np.datetime64(np.busday_offset(_FIRST_DAY, days, roll="forward"), "us").astype(
        np.int64)
    times = np.sort(rng.integers(first, last, size=(n, versions)), axis=1)
    # Sorted times plus 0, 1, 2... are strictly increasing: no two versions at one time.
    times = (times + np.arange(versions)).ravel()
    index = np.repeat(np.arange(n, dtype=np.int64), versions)
    order = rng.permutation(n * versions)
    rating = _RATINGS.take(_draw_category(rng, _RATING_CDF, n * versions))
    return pa.table({
        "instrument_id": _instrument_ids(index)[order],
        "valid_from": pa.array(times[order], pa.timestamp("us")),
        "version": pa.array(np.tile(np.arange(1, versions + 1, dtype=np.int32), n)[order]),
        "rating": rating.take(order),
        "risk_weight": np.round(rng.uniform(0.2, 1.5, n * versions), 3)[order],
    })
