"""Deterministic synthetic card transactions with labelled fraud, for the fraud-detection pattern.

Data model
----------
* :func:`accounts` is the reference table: one card account per row, with a home airport (real
  coordinates from :func:`~sabot_lab.datasets.airports`; the 218 airports of
  :func:`~sabot_lab.datasets.flights`, weighted by their number of flights), a segment, a
  lognormal amount scale and an activity rate.
* :func:`transactions` is the event stream. Legitimate traffic: every account is a Poisson
  process with its own rate, modulated by a daily cycle (busiest at 14:00, quietest at 02:00),
  so the time span grows with ``n / n_accounts`` (about 3.3 days with the defaults). Amounts
  are lognormal per account. Transactions happen near the account's current position: home,
  or, for the 10% of accounts that take one trip, a flight to another airport (great-circle
  path at under 700 km/h), a stay of 1-4 days, and the flight back. Purchases less than 10
  minutes apart happen at the same place, so legitimate traffic is physically possible.
* Injected fraud, labelled by ``is_fraud`` and ``fraud_kind``, one case per account (distinct
  accounts whenever there are enough active ones), each placed after a legitimate
  *anchor* transaction of its account:

  - ``"velocity"``: a burst of 6-12 transactions within 10-50 s at the anchor's place, all of
    them labelled (so the rule "more than 5 in 60 s" can catch the 6th and later ones);
  - ``"amount"``: one purchase of 10-50 times the account's median amount, after at least 10
    legitimate transactions of the account (when it has that many);
  - ``"geo"``: one transaction 2-30 minutes after the anchor in a foreign city (of
    :data:`FRAUD_CITIES`) more than 2,000 km from the anchor's place.

Rows are in event-time order (``disorder`` adds bounded arrival disorder) and ``txn_id``
numbers them in arrival order. :func:`transaction_batches` yields the same rows in batches.

Examples
--------
>>> from sabot_lab.datasets.transactions import accounts, transactions
>>> t = transactions(20_000, n_accounts=1_000)
>>> t.num_rows, t.column_names
(20000, ['txn_id', 'account_id', 'ts', 'amount', 'category', 'lat', 'lon', 'is_fraud',
 'fraud_kind'])
>>> t.group_by("fraud_kind").aggregate([("txn_id", "count")]).sort_by("fraud_kind").to_pylist()
[{'fraud_kind': 'amount', 'txn_id_count': 18}, {'fraud_kind': 'geo', 'txn_id_count': 18},
 {'fraud_kind': 'velocity', 'txn_id_count': ...}, {'fraud_kind': None, 'txn_id_count': ...}]
>>> accounts(1_000).num_rows
1000
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from sabot_lab.datasets.batching import batch_bounds
from sabot_lab.datasets.clicks import Duration, _start_ms, _whole_ms
from sabot_lab.datasets.public import airports, flights

__all__ = [
    "ACCOUNTS_SCHEMA",
    "CATEGORIES",
    "FRAUD_CITIES",
    "FRAUD_KINDS",
    "SEGMENTS",
    "TRANSACTIONS_SCHEMA",
    "accounts",
    "transaction_batches",
    "transactions",
]

#: Labels of the injected fraud kinds (codes 0, 1, 2 of ``fraud_kind``).
FRAUD_KINDS = ("velocity", "amount", "geo")
#: Merchant categories, the dictionary of the ``category`` column.
CATEGORIES = (
    "grocery", "restaurant", "gas", "retail", "online", "pharmacy", "entertainment", "travel",
    "electronics", "jewelry",
)  # fmt: skip
# share of legitimate transactions per category (same order as CATEGORIES)
_CATEGORY_CDF = np.cumsum([0.24, 0.18, 0.12, 0.14, 0.16, 0.05, 0.05, 0.03, 0.02, 0.01])
_ONLINE, _ELECTRONICS = CATEGORIES.index("online"), CATEGORIES.index("electronics")

#: Account segments: (name, share of accounts, typical median amount in $, transactions a day).
SEGMENTS = (
    ("student", 0.25, 15.0, 2.0),
    ("standard", 0.45, 40.0, 3.0),
    ("premium", 0.20, 90.0, 4.0),
    ("business", 0.10, 250.0, 5.0),
)
#: Places of ``"geo"`` fraud: (city, latitude, longitude).
FRAUD_CITIES = (
    ("London", 51.5074, -0.1278), ("Paris", 48.8566, 2.3522), ("Madrid", 40.4168, -3.7038),
    ("Berlin", 52.52, 13.405), ("Moscow", 55.7558, 37.6173), ("Istanbul", 41.0082, 28.9784),
    ("Kyiv", 50.4501, 30.5234), ("Bucharest", 44.4268, 26.1025), ("Lagos", 6.5244, 3.3792),
    ("Accra", 5.6037, -0.187), ("Nairobi", -1.2921, 36.8219),
    ("Johannesburg", -26.2041, 28.0473), ("Cairo", 30.0444, 31.2357),
    ("Dubai", 25.2048, 55.2708), ("Mumbai", 19.076, 72.8777), ("Bangkok", 13.7563, 100.5018),
    ("Ho Chi Minh City", 10.8231, 106.6297), ("Jakarta", -6.2088, 106.8456),
    ("Manila", 14.5995, 120.9842), ("Beijing", 39.9042, 116.4074), ("Seoul", 37.5665, 126.978),
    ("Sydney", -33.8688, 151.2093), ("Sao Paulo", -23.5505, -46.6333),
    ("Buenos Aires", -34.6037, -58.3816), ("Lima", -12.0464, -77.0428),
    ("Bogota", 4.711, -74.0721),
)  # fmt: skip

ACCOUNTS_SCHEMA = pa.schema(
    [
        pa.field("account_id", pa.int64(), nullable=False),
        pa.field("segment", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("home_iata", pa.string(), nullable=False),
        pa.field("home_lat", pa.float64(), nullable=False),
        pa.field("home_lon", pa.float64(), nullable=False),
        pa.field("amount_mu", pa.float64(), nullable=False),
        pa.field("amount_sigma", pa.float64(), nullable=False),
        pa.field("median_amount", pa.float64(), nullable=False),
        pa.field("txn_per_day", pa.float64(), nullable=False),
    ]
)
"""Schema of :func:`accounts` (9 columns)."""

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("txn_id", pa.int64(), nullable=False),
        pa.field("account_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms"), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("category", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("fraud_kind", pa.string()),
    ]
)
"""Schema of :func:`transactions` / :func:`transaction_batches` (9 columns)."""

_SEGMENT_DICTIONARY = pa.array([s[0] for s in SEGMENTS])
_CATEGORY_DICTIONARY = pa.array(CATEGORIES)
_KIND_DICTIONARY = pa.array(FRAUD_KINDS)

_DAY_MS = 86_400_000
_MINUTE_MS = 60_000
_EARTH_KM = 6371.0088
_DAILY_AMPLITUDE = 0.6  # activity varies from 0.4x (02:00) to 1.6x (14:00) the daily mean
_PEAK_HOUR = 14.0
_TRAVEL_FRACTION = 0.1
_FLIGHT_KMH = 700.0
_FLIGHT_OVERHEAD_MS = 3_600_000
_PLACE_SIGMA_DEG = 0.03  # spread of shops around the home or travel airport (about 3 km)
_SAME_PLACE_MS = 10 * _MINUTE_MS
_MIN_HISTORY = 10
_BURST_SIZES = (6, 12)
_MEAN_BURST = sum(_BURST_SIZES) / 2
_GEO_MIN_KM = 2_000.0


class _Accounts(NamedTuple):
    """Per-account arrays (index ``i`` is ``account_id - 1``)."""

    segment: np.ndarray
    airport: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    rate: np.ndarray


class _Airports(NamedTuple):
    """The airports accounts live at and travel to, with their flight counts as weights."""

    iata: pa.Array
    lat: np.ndarray
    lon: np.ndarray
    cdf: np.ndarray


def _airports() -> _Airports:
    """Airports of :func:`flights` (sorted by code), weighted by flights in or out."""
    trips = flights()
    codes = np.concatenate([trips[c].to_numpy() for c in ("origin", "destination")])
    iata, weight = np.unique(codes.astype(str), return_counts=True)
    table = airports()
    row = pd.Index(table["iata"].to_numpy().astype(str)).get_indexer(iata)
    lat = table["latitude"].to_numpy()[row]
    lon = table["longitude"].to_numpy()[row]
    return _Airports(pa.array(iata, pa.string()), lat, lon, np.cumsum(weight) / weight.sum())


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` codes with cumulative probabilities ``cdf`` (last value 1)."""
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * _EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 3) of points given in degrees."""
    p, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], axis=1)


def _slerp(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray, f: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Points a fraction ``f`` of the way along the great circle from point 1 to point 2."""
    a, b = _unit(lat1, lon1), _unit(lat2, lon2)
    omega = np.arccos(np.clip((a * b).sum(axis=1), -1.0, 1.0))[:, None]
    sin_omega = np.sin(omega)
    safe = np.where(sin_omega > 1e-12, sin_omega, 1.0)
    wa = np.where(sin_omega > 1e-12, np.sin((1 - f[:, None]) * omega) / safe, 1 - f[:, None])
    wb = np.where(sin_omega > 1e-12, np.sin(f[:, None] * omega) / safe, f[:, None])
    p = wa * a + wb * b
    lat = np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))
    return lat, np.degrees(np.arctan2(p[:, 1], p[:, 0]))


def _account_arrays(n_accounts: int, seed: int, places: _Airports) -> _Accounts:
    """Draw the accounts' attributes (shared by :func:`accounts` and :func:`transactions`)."""
    if n_accounts < 1:
        raise ValueError(f"n_accounts must be >= 1, got {n_accounts}")
    rng = np.random.default_rng([seed, 0])
    segment = _draw(rng, np.cumsum([s[1] for s in SEGMENTS]), n_accounts).astype(np.int8)
    airport = _draw(rng, places.cdf, n_accounts)
    median = np.array([s[2] for s in SEGMENTS])[segment] * np.exp(rng.normal(0, 0.4, n_accounts))
    sigma = rng.uniform(0.2, 0.4, n_accounts)
    rate = np.array([s[3] for s in SEGMENTS])[segment] * rng.gamma(2.0, 0.5, n_accounts)
    return _Accounts(
        segment,
        airport,
        places.lat[airport],
        places.lon[airport],
        np.log(median),
        sigma,
        np.maximum(rate, 0.05),
    )


def accounts(n_accounts: int = 100_000, seed: int = 0) -> pa.Table:
    """Generate the card accounts behind :func:`transactions` (the same ``n_accounts``, ``seed``).

    Parameters
    ----------
    n_accounts : int, default 100_000
        Number of accounts, ``>= 1``.
    seed : int, default 0
        Seed; :func:`transactions` with the same seed uses exactly these accounts.

    Returns
    -------
    pyarrow.Table
        Schema :data:`ACCOUNTS_SCHEMA`, one row per account, sorted by ``account_id``
        (``1 .. n_accounts``). ``segment`` is one of :data:`SEGMENTS` (25% student, 45%
        standard, 20% premium, 10% business). ``home_iata`` is an airport of
        :func:`~sabot_lab.datasets.flights` drawn in proportion to its flights (ORD, DFW, ATL
        are the most common) and ``home_lat``/``home_lon`` are its coordinates. Legitimate
        amounts of the account are ``exp(Normal(amount_mu, amount_sigma))``: ``median_amount =
        exp(amount_mu)`` is the segment's typical amount times a lognormal factor (sigma 0.4)
        and ``amount_sigma`` is uniform in [0.2, 0.4]. ``txn_per_day`` is the account's mean
        activity: the segment's rate times a gamma factor (shape 2, mean 1), at least 0.05.

    Examples
    --------
    >>> a = accounts(1_000)
    >>> a.num_rows, a["account_id"][0].as_py(), a["account_id"][-1].as_py()
    (1000, 1, 1000)
    >>> accounts(1_000).equals(a)
    True
    """
    places = _airports()
    acc = _account_arrays(n_accounts, seed, places)
    columns = [
        pa.array(np.arange(1, n_accounts + 1, dtype=np.int64)),
        pa.DictionaryArray.from_arrays(pa.array(acc.segment), _SEGMENT_DICTIONARY),
        places.iata.take(pa.array(acc.airport)),
        pa.array(acc.lat),
        pa.array(acc.lon),
        pa.array(acc.mu),
        pa.array(acc.sigma),
        pa.array(np.round(np.exp(acc.mu), 2)),
        pa.array(acc.rate),
    ]
    return pa.Table.from_arrays(columns, schema=ACCOUNTS_SCHEMA)


def _event_days(rng: np.random.Generator, n: int, total_rate: float, start_ms: int) -> np.ndarray:
    """Sorted times (days after start) of ``n`` events of a Poisson process with a daily cycle.

    Events of a homogeneous process of ``total_rate`` a day are mapped through the inverse of
    the cumulative intensity ``t + A / (2 pi) * (sin(2 pi (t - peak)) + sin(2 pi peak))``.
    """
    u = np.cumsum(rng.exponential(1.0 / total_rate, n))
    if n == 0:
        return u
    peak = (_PEAK_HOUR / 24 - (start_ms % _DAY_MS) / _DAY_MS) % 1.0
    grid = np.arange(0.0, u[-1] + 2.0, 1.0 / 1440)
    a = _DAILY_AMPLITUDE / (2 * np.pi)
    cumulative = grid + a * (np.sin(2 * np.pi * (grid - peak)) + np.sin(2 * np.pi * peak))
    return np.interp(u, cumulative, grid)


def _lognormal_amounts(rng: np.random.Generator, acc: _Accounts, who: np.ndarray) -> np.ndarray:
    """Legitimate-looking amounts (whole cents, at least 0.01) for accounts ``who``."""
    raw = np.exp(acc.mu[who] + acc.sigma[who] * rng.standard_normal(who.size))
    return np.maximum(np.round(raw, 2), 0.01)


def _jitter(
    rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points moved by a Gaussian offset of about ``sigma`` degrees of latitude each way."""
    dlat = sigma * rng.standard_normal(lat.size)
    dlon = sigma * rng.standard_normal(lat.size) / np.maximum(np.cos(np.radians(lat)), 0.05)
    return np.clip(lat + dlat, -90.0, 90.0), (lon + dlon + 180.0) % 360.0 - 180.0


def _legit(
    rng: np.random.Generator, acc: _Accounts, places: _Airports, n: int, start_ms: int
) -> dict[str, np.ndarray]:
    """Legitimate transactions in time order: ts (ms after start), account, place, amount.

    Also returns ``phase`` (0 at home, 1 flying out, 2 away, 3 flying back), ``counts``
    (transactions per account) and ``by_account`` (row numbers sorted by account, then time).
    """
    k = acc.rate.size
    total_rate = float(acc.rate.sum())
    ts = np.floor(_event_days(rng, n, total_rate, start_ms) * _DAY_MS).astype(np.int64)
    # each event's account is drawn in proportion to its rate: multinomial counts, shuffled
    counts = rng.multinomial(n, acc.rate / total_rate)
    account_major = np.repeat(np.arange(k), counts)
    position = rng.permutation(n)
    who = np.empty(n, dtype=np.int64)
    who[position] = account_major
    by_account = np.sort(account_major * n + position) % n if n else position
    amount = _lognormal_amounts(rng, acc, who)
    category = _draw(rng, _CATEGORY_CDF / _CATEGORY_CDF[-1], n).astype(np.int8)
    lat, lon = _jitter(rng, acc.lat[who], acc.lon[who], _PLACE_SIGMA_DEG)

    # one trip for some accounts: fly out, stay 1-4 days, fly back (phases 1, 2, 3)
    dest = _draw(rng, places.cdf, k)
    travels = (rng.random(k) < _TRAVEL_FRACTION) & (dest != acc.airport)
    depart = (rng.random(k) * (n / total_rate * _DAY_MS)).astype(np.int64)
    stay = (rng.uniform(1.0, 4.0, k) * _DAY_MS).astype(np.int64)
    dest_lat, dest_lon = places.lat[dest], places.lon[dest]
    km = _haversine_km(acc.lat, acc.lon, dest_lat, dest_lon)
    fly = (_FLIGHT_OVERHEAD_MS + km / _FLIGHT_KMH * 3_600_000).astype(np.int64)
    trip = np.flatnonzero(travels[who])
    a = who[trip]
    since = ts[trip] - depart[a]
    trip_phase = (since >= 0).astype(np.int8) + (since >= fly[a]) + (since >= fly[a] + stay[a])
    trip_phase += since >= 2 * fly[a] + stay[a]
    trip_phase[trip_phase == 4] = 0
    phase = np.zeros(n, dtype=np.int8)
    phase[trip] = trip_phase
    there = trip[trip_phase == 2]
    lat[there], lon[there] = _jitter(
        rng, dest_lat[who[there]], dest_lon[who[there]], _PLACE_SIGMA_DEG
    )
    flying = trip_phase % 2 == 1
    if flying.any():
        a, since, out = a[flying], since[flying], trip_phase[flying] == 1
        f = np.where(out, since, since - fly[a] - stay[a]) / fly[a]
        from_lat = np.where(out, acc.lat[a], dest_lat[a])
        from_lon = np.where(out, acc.lon[a], dest_lon[a])
        to_lat = np.where(out, dest_lat[a], acc.lat[a])
        to_lon = np.where(out, dest_lon[a], acc.lon[a])
        rows = trip[flying]
        lat[rows], lon[rows] = _slerp(from_lat, from_lon, to_lat, to_lon, f)

    # purchases of an account less than 10 minutes apart, on the ground, share one place
    sorted_who, sorted_ts, sorted_phase = who[by_account], ts[by_account], phase[by_account]
    new_place = np.ones(n, dtype=bool)
    new_place[1:] = (
        (sorted_who[1:] != sorted_who[:-1])
        | (sorted_ts[1:] - sorted_ts[:-1] >= _SAME_PLACE_MS)
        | (sorted_phase[1:] != sorted_phase[:-1])
        | (sorted_phase[1:] % 2 == 1)
    )
    place = by_account[np.maximum.accumulate(np.where(new_place, np.arange(n), 0))]
    lat[by_account], lon[by_account] = lat[place], lon[place]
    return {
        "ts": ts,
        "who": who,
        "amount": amount,
        "category": category,
        "lat": lat,
        "lon": lon,
        "phase": phase,
        "counts": counts,
        "by_account": by_account,
    }


def _fraud_accounts(
    rng: np.random.Generator, counts: np.ndarray, cases: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accounts of the amount cases and of the other ``2 * cases`` cases.

    Accounts with at least :data:`_MIN_HISTORY` transactions come first (in random order, the
    amount cases take them first), then the others by activity. Accounts repeat only when
    there are fewer than ``3 * cases`` active accounts.
    """
    active = np.flatnonzero(counts)
    if cases == 0:
        return active[:0], active[:0]
    history = np.minimum(counts[active], _MIN_HISTORY)
    ranked = active[np.lexsort((rng.random(active.size), -history))]
    chosen = ranked[np.arange(3 * cases) % active.size]
    others = chosen[cases:]
    return chosen[:cases], others[rng.permutation(others.size)]


def _anchors(
    rng: np.random.Generator, legit: dict, who: np.ndarray, min_rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random legitimate transaction of each account ``who``, at per-account rank >= min_rank.

    The anchor is drawn among the account's transactions on the ground (not during a flight)
    at rank ``min_rank`` or later; if there is none, among all of them, and the rank is
    clipped to the account's last transaction when it has fewer. Returns the anchors' row
    numbers and the time to the account's next legitimate transaction, capped at 30 minutes
    (30 minutes when there is none).
    """
    counts, ts, by_account = legit["counts"], legit["ts"], legit["by_account"]
    first = (np.cumsum(counts) - counts)[who]
    end = first + counts[who]
    lo = first + np.minimum(min_rank, counts[who] - 1)
    u = rng.random(who.size)
    # ground rows numbered in by_account order: the j-th one is where `ground` reaches j
    ground = np.cumsum(legit["phase"][by_account] % 2 == 0)
    before = np.where(lo > 0, ground[lo - 1], 0)
    available = ground[end - 1] - before
    chosen_ground = np.searchsorted(ground, before + 1 + np.floor(u * available))
    position = np.where(available > 0, chosen_ground, lo + np.floor(u * (end - lo)))
    position = position.astype(np.int64)
    anchor = by_account[position]
    has_next = position + 1 < end
    after = by_account[np.where(has_next, position + 1, 0)]
    gap = np.where(has_next, ts[after] - ts[anchor], 30 * _MINUTE_MS)
    return anchor, np.minimum(gap, 30 * _MINUTE_MS)


def _fraud(
    rng: np.random.Generator, acc: _Accounts, legit: dict, size: np.ndarray
) -> dict[str, np.ndarray]:
    """The injected fraud rows (sorted by ts): ``size.size`` cases of each kind.

    ``size`` holds the number of transactions of each velocity burst.
    """
    cases = size.size
    amount_who, others = _fraud_accounts(rng, legit["counts"], cases)
    velocity_who, geo_who = others[:cases], others[cases:]
    ts, lat, lon = legit["ts"], legit["lat"], legit["lon"]

    # amount: one purchase of 10-50x the median, in the first half of the gap to the next one
    anchor, gap = _anchors(rng, legit, amount_who, _MIN_HISTORY - 1)
    amount = {
        "ts": ts[anchor] + (rng.uniform(0.1, 0.5, cases) * gap).astype(np.int64),
        "who": amount_who,
        "amount": np.round(np.exp(acc.mu[amount_who]) * rng.uniform(10, 50, cases), 2),
        "category": _ELECTRONICS + rng.integers(0, 2, cases, dtype=np.int8),
        "lat": lat[anchor],
        "lon": lon[anchor],
    }

    # velocity: 6-12 purchases within 10-50 s at the anchor's place
    anchor, gap = _anchors(rng, legit, velocity_who, 0)
    begin = ts[anchor] + (rng.uniform(0.1, 0.5, cases) * gap).astype(np.int64)
    burst = np.repeat(np.arange(cases), size)
    length = rng.uniform(10_000, 50_000, cases)[burst]
    offset = np.floor(rng.random(burst.size) * length).astype(np.int64)
    offset = np.sort(offset + burst * (1 << 40)) - burst * (1 << 40)  # sorted within a burst
    velocity_rows = velocity_who[burst]
    velocity = {
        "ts": begin[burst] + offset,
        "who": velocity_rows,
        "amount": _lognormal_amounts(rng, acc, velocity_rows),
        "category": np.full(burst.size, _ONLINE, dtype=np.int8),
        "lat": lat[anchor][burst],
        "lon": lon[anchor][burst],
    }

    # geo: 2-30 minutes after the anchor, in a foreign city > 2,000 km from the anchor's place
    anchor, _ = _anchors(rng, legit, geo_who, 0)
    city_lat = np.array([c[1] for c in FRAUD_CITIES])
    city_lon = np.array([c[2] for c in FRAUD_CITIES])
    far = _haversine_km(lat[anchor][:, None], lon[anchor][:, None], city_lat, city_lon)
    city = np.argmax(np.where(far > _GEO_MIN_KM, rng.random(far.shape), -1.0), axis=1)
    geo_lat, geo_lon = _jitter(rng, city_lat[city], city_lon[city], _PLACE_SIGMA_DEG)
    geo = {
        "ts": ts[anchor] + rng.integers(2 * _MINUTE_MS, 30 * _MINUTE_MS + 1, cases),
        "who": geo_who,
        "amount": _lognormal_amounts(rng, acc, geo_who),
        "category": _draw(rng, _CATEGORY_CDF / _CATEGORY_CDF[-1], cases).astype(np.int8),
        "lat": geo_lat,
        "lon": geo_lon,
    }

    parts = (velocity, amount, geo)
    rows = {key: np.concatenate([p[key] for p in parts]) for key in amount}
    rows["kind"] = np.repeat(np.arange(3, dtype=np.int8), [p["who"].size for p in parts])
    order = np.argsort(rows["ts"], kind="stable")
    return {key: value[order] for key, value in rows.items()}


def _generate(
    n: int,
    n_accounts: int,
    seed: int,
    start: str | dt.datetime | np.datetime64 | pd.Timestamp,
    fraud_rate: float,
    disorder: Duration,
) -> dict[str, np.ndarray]:
    """All columns of :func:`transactions` as numpy arrays, in arrival order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fraud_rate <= 0.5:
        raise ValueError(f"fraud_rate must be in [0, 0.5], got {fraud_rate}")
    disorder_ms = _whole_ms(disorder, "disorder")
    start_ms = _start_ms(start)
    places = _airports()
    acc = _account_arrays(n_accounts, seed, places)
    cases = int(fraud_rate * n / (2 + _MEAN_BURST))
    fraud_rng = np.random.default_rng([seed, 2])
    size = fraud_rng.integers(_BURST_SIZES[0], _BURST_SIZES[1] + 1, cases)
    n_legit = n - 2 * cases - int(size.sum())
    legit = _legit(np.random.default_rng([seed, 1]), acc, places, n_legit, start_ms)
    fraud = _fraud(fraud_rng, acc, legit, size)
    legit["kind"] = np.full(n_legit, -1, dtype=np.int8)
    legit["ts"] += start_ms
    fraud["ts"] += start_ms
    if not disorder_ms:  # merge the two sorted parts, legitimate rows first on ties
        at = np.searchsorted(legit["ts"], fraud["ts"], side="right")
        return {key: np.insert(legit[key], at, fraud[key]) for key in fraud}
    columns = {key: np.concatenate([legit[key], fraud[key]]) for key in fraud}
    arrival = columns["ts"] + np.random.default_rng([seed, 3]).integers(0, disorder_ms + 1, n)
    order = np.argsort(arrival, kind="stable")
    return {key: value[order] for key, value in columns.items()}


def _batch(columns: dict[str, np.ndarray], lo: int, hi: int) -> pa.RecordBatch:
    """Rows ``lo:hi`` of the generated columns as a compact record batch."""
    kind = columns["kind"][lo:hi]
    arrays = [
        pa.array(np.arange(lo, hi, dtype=np.int64)),
        pa.array(columns["who"][lo:hi] + 1),
        pa.array(columns["ts"][lo:hi].astype("datetime64[ms]")),
        pa.array(columns["amount"][lo:hi]),
        pa.DictionaryArray.from_arrays(pa.array(columns["category"][lo:hi]), _CATEGORY_DICTIONARY),
        pa.array(columns["lat"][lo:hi]),
        pa.array(columns["lon"][lo:hi]),
        pa.array(kind >= 0),
        _KIND_DICTIONARY.take(pa.array(kind, mask=kind < 0)),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=TRANSACTIONS_SCHEMA)


def transaction_batches(
    n: int = 1_000_000,
    batch_size: int = 10_000,
    *,
    n_accounts: int = 100_000,
    seed: int = 0,
    start: str | dt.datetime | np.datetime64 | pd.Timestamp = "2024-03-01",
    fraud_rate: float = 0.01,
    disorder: Duration = 0,
) -> Iterator[pa.RecordBatch]:
    """Yield the rows of :func:`transactions` in order, ``batch_size`` at a time.

    The whole stream is generated on the first ``next()`` (it is not a per-batch function
    like :func:`~sabot_lab.datasets.clicks_batch`, because fraud is placed relative to each
    account's history); each batch is then built from its own slice, so batches do not share
    buffers. The concatenated batches equal ``transactions(n, ...)`` with the same arguments.

    Parameters
    ----------
    n : int, default 1_000_000
        Total number of rows, ``>= 0``.
    batch_size : int, default 10_000
        Rows per batch, ``>= 1``; the last batch may be shorter. It does not change the data.
    n_accounts, seed, start, fraud_rate, disorder
        As in :func:`transactions`.

    Yields
    ------
    pyarrow.RecordBatch
        Batches with schema :data:`TRANSACTIONS_SCHEMA`.

    Examples
    --------
    >>> [b.num_rows for b in transaction_batches(2_500, 1_000, n_accounts=100)]
    [1000, 1000, 500]
    """
    bounds = list(batch_bounds(n, batch_size))
    columns = _generate(n, n_accounts, seed, start, fraud_rate, disorder)
    for _, first, rows in bounds:
        yield _batch(columns, first, first + rows)


def transactions(
    n: int = 1_000_000,
    n_accounts: int = 100_000,
    seed: int = 0,
    *,
    start: str | dt.datetime | np.datetime64 | pd.Timestamp = "2024-03-01",
    fraud_rate: float = 0.01,
    disorder: Duration = 0,
) -> pa.Table:
    """Generate ``n`` card transactions with labelled, injected fraud.

    Legitimate traffic: the accounts of ``accounts(n_accounts, seed)`` buy as independent
    Poisson processes with rates ``txn_per_day`` and a daily cycle (0.4x the mean rate at
    02:00, 1.6x at 14:00); the stream covers about ``n / sum(txn_per_day)`` days (3.3 days for
    the defaults, 8 days for 50,000 rows of 2,000 accounts). Amounts are lognormal per account.
    A transaction's place is its account's home airport plus a Gaussian offset of about 3 km;
    10% of accounts make one trip during the stream to another airport (drawn like homes),
    flying at under 700 km/h (one hour plus distance / 700 km/h) along the great circle, stay
    1-4 days and fly back; purchases during a flight are on its path, and purchases at most 10
    minutes after the account's previous one on the ground happen at the same place. So the
    speed between consecutive legitimate transactions of an account stays under 700 km/h
    except at the rare moments a trip starts or ends a few seconds after a purchase.

    Fraud: ``int(fraud_rate * n / 11)`` cases of each kind in :data:`FRAUD_KINDS` (11 is the
    mean number of rows of one case of each), so about ``fraud_rate`` of the rows are fraud.
    Every case belongs to a different account (while there are at least three times as many
    active accounts as cases) and follows a random legitimate *anchor* transaction of it, one
    made on the ground (not during a flight) if the account has any. "Gap" below is the time
    from the anchor to the account's next legitimate transaction, or 30 minutes if that is
    shorter or there is none:

    * ``"velocity"``: 6-12 transactions (uniform) at uniform times within 10-50 s, starting
      10-50% of the way through the gap, at the anchor's place, category ``"online"``,
      ordinary amounts of the account. *Every* transaction of the burst is labelled, although
      a rule counting "more than 5 in 60 s" can only flag the 6th and later ones.
    * ``"amount"``: one transaction of 10-50 times the account's median amount at the
      anchor's place, 10-50% of the way through the gap, category ``"electronics"`` or
      ``"jewelry"``. The anchor is the account's 10th or later transaction, so at least 10
      transactions come before (accounts with 10 or more transactions are used first).
    * ``"geo"``: one transaction 2-30 minutes after the anchor (uniform), within about 3 km of
      a city of :data:`FRAUD_CITIES` more than 2,000 km from the anchor's place (so at over
      4,000 km/h), an ordinary amount and category. The account's next legitimate transaction
      is back home, which is an impossible trip from the fraud as well if it follows within
      (distance / 900 km/h); only the foreign transaction is labelled.

    Parameters
    ----------
    n : int, default 1_000_000
        Number of rows, ``>= 0``.
    n_accounts : int, default 100_000
        Number of accounts, ``>= 1`` (see :func:`accounts`).
    seed : int, default 0
        Seed; the same arguments always give the same table.
    start : str or datetime-like, default "2024-03-01"
        Start of the stream (naive wall-clock time; an aware time is converted to UTC). The
        daily cycle is in this clock.
    fraud_rate : float, default 0.01
        Target fraction of fraudulent rows, in ``[0, 0.5]``.
    disorder : str or timedelta, default 0
        Largest arrival delay (whole milliseconds): rows are sorted by ``ts`` plus a uniform
        delay in ``[0, disorder]``, so a row's ``ts`` is never more than ``disorder`` behind an
        earlier row's. Only the order (and hence ``txn_id``) changes.

    Returns
    -------
    pyarrow.Table
        Schema :data:`TRANSACTIONS_SCHEMA`, one chunk, in arrival order: ``txn_id`` int64
        (``0 .. n - 1``), ``account_id`` int64 (``1 .. n_accounts``), ``ts`` timestamp[ms]
        (event time; sorted when ``disorder`` is 0), ``amount`` float64 (dollars with cents,
        >= 0.01), ``category`` dictionary of :data:`CATEGORIES`, ``lat``/``lon`` float64
        (degrees), ``is_fraud`` bool, ``fraud_kind`` string (NULL exactly when ``is_fraud`` is
        false).

    Raises
    ------
    ValueError
        If ``n < 0``, ``n_accounts < 1``, ``fraud_rate`` is outside [0, 0.5] or ``disorder``
        is negative or not whole milliseconds.

    Examples
    --------
    >>> t = transactions(10_000, n_accounts=500, seed=1)
    >>> t.num_rows, t["is_fraud"].to_pylist().count(True)
    (10000, 96)
    >>> t.slice(0, 1).to_pylist()
    [{'txn_id': 0, 'account_id': 474, 'ts': datetime.datetime(2024, 3, 1, 0, 1, 4, 190000),
      'amount': 131.9, 'category': 'gas', 'lat': 30.166, 'lon': -97.689, 'is_fraud': False,
      'fraud_kind': None}]
    >>> transactions(10_000, n_accounts=500, seed=1).equals(t)
    True
    """
    columns = _generate(n, n_accounts, seed, start, fraud_rate, disorder)
    return pa.Table.from_batches([_batch(columns, 0, n)], schema=TRANSACTIONS_SCHEMA)
