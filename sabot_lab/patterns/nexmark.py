"""Nexmark queries written with the public Stream API (data: :mod:`sabot_lab.datasets.nexmark`).

Each query is a function from the event streams to the result stream, and :data:`SQL` holds
the same query in DuckDB's SQL over tables named ``bid``, ``auction``, ``person`` (and
``side_input``), the oracle of the tests and the peer of ``benchmarks/nexmark.py``. So far:
q0, q1, q2, q5, q11, q13, q14, q21 and q22; the other queries need operators still to come
(stream-stream joins, distinct counts, deduplication, processing-time windows).

Examples
--------
>>> import sabot_lab as sl
>>> from sabot_lab.datasets.nexmark import nexmark
>>> _, _, bids = nexmark(20_000)
>>> q2(sl.Stream.from_table(bids)).to_table().column_names
['auction', 'price']
"""

from __future__ import annotations

import pyarrow as pa

from sabot_lab.expr import col, if_else
from sabot_lab.plan.windows import count as count_rows
from sabot_lab.plan.windows import hopping, session
from sabot_lab.reference import Table
from sabot_lab.stream import Stream

__all__ = ["SQL", "q0", "q1", "q2", "q5", "q11", "q13", "q14", "q21", "q22", "side_input"]

#: Dollars to euros, as Nexmark's q1 has it.
DOLLAR_TO_EURO = 0.908
#: q2 keeps the bids on auctions whose id is a multiple of this.
Q2_MODULUS = 123
#: q11's session gap, and the watermark bound its job uses on in-order data.
SESSION_GAP = "10s"
#: q13's side input: 10,000 keys, looked up by ``auction % 10000``.
SIDE_KEYS = 10_000


def q0(bids: Stream) -> Stream:
    """Pass-through: every bid, unchanged (what the plumbing costs)."""
    return bids.select("auction", "bidder", "price", "channel", "url", "date_time", "extra")


def q1(bids: Stream) -> Stream:
    """Currency conversion: every bid with its price in euros (a projection)."""
    return bids.select("auction", "bidder", "date_time", "extra",
                       price=col("price") * DOLLAR_TO_EURO)


def q2(bids: Stream) -> Stream:
    """Selection: the auction and price of the bids on auctions whose id is a multiple of
    123 (a filter)."""
    return bids.filter(col("auction") % Q2_MODULUS == 0).select("auction", "price")


def q5(bids: Stream, bound: str = "0s") -> Stream:
    """Hot items: in every 10 s window sliding by 2 s, the auction(s) with the most bids
    (all of them when several tie)."""
    return (bids.with_watermark("date_time", max_out_of_orderness=bound)
            .window(hopping("10s", "2s")).group_by("auction").agg(num=count_rows())
            .top_n(1, by="num", with_ties=True))


def q11(bids: Stream, bound: str = "0s") -> Stream:
    """User sessions: per bidder, the bids of each session of activity (bids less than 10 s
    apart), with the session's start and end (its last bid plus the gap)."""
    return (bids.with_watermark("date_time", max_out_of_orderness=bound)
            .window(session(SESSION_GAP)).group_by("bidder").agg(bid_count=count_rows()))


def side_input() -> pa.Table:
    """q13's bounded side input: ``key`` 0..9999 and a ``value`` string."""
    keys = pa.array(range(SIDE_KEYS), pa.int64())
    return pa.table({"key": keys, "value": pa.array([f"value-{k}" for k in range(SIDE_KEYS)])})


def q13(bids: Stream, side: pa.Table | None = None) -> Stream:
    """Bounded side input join: every bid with the ``value`` of the side input row whose key
    is its auction id modulo 10,000 (a lookup join)."""
    table = Table(side if side is not None else side_input(), key="key")
    return (bids.with_columns(key=col("auction") % SIDE_KEYS)
            .enrich(table, on="key", columns=["value"], dictionary_strings=False)
            .select("auction", "bidder", "price", "date_time", "value"))


def q14(bids: Stream) -> Stream:
    """Filter and functions: bids priced between 1M and 50M euros, with the price in euros,
    the time of day of the bid (day 8-18 h, night 20-6 h, else other) and how many ``c`` its
    ``extra`` holds."""
    euros = col("price") * DOLLAR_TO_EURO
    hour = col("date_time").hour()
    kind = if_else((hour >= 8) & (hour <= 18), "dayTime",
                   if_else((hour <= 6) | (hour >= 20), "nightTime", "otherTime"))
    return (bids.filter((euros > 1_000_000) & (euros < 50_000_000))
            .select("auction", "bidder", "date_time", "extra", price=euros,
                    bid_time_type=kind, c_counts=col("extra").count_substring("c")))


#: q21's known channels and their ids.
CHANNEL_IDS = {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"}
CHANNEL_ID_PATTERN = "(&|^)channel_id=([^&]*)"


def q21(bids: Stream) -> Stream:
    """Regular expressions: each bid's channel id, from its channel's name for the four
    known channels, else extracted from its url; bids with neither are left out."""
    name = col("channel").lower()
    from_url = col("url").regex_extract(CHANNEL_ID_PATTERN, 2)
    channel_id = from_url
    for known, number in reversed(CHANNEL_IDS.items()):
        channel_id = if_else(name == known, number, channel_id)
    return (bids.filter(from_url.is_valid() | name.isin(CHANNEL_IDS))
            .select("auction", "bidder", "price", "channel", channel_id=channel_id))


def q22(bids: Stream) -> Stream:
    """String splits: the first three directories of each bid's url."""
    url = col("url")
    return bids.select("auction", "bidder", "price", "channel", dir1=url.split_index("/", 3),
                       dir2=url.split_index("/", 4), dir3=url.split_index("/", 5))


#: The same queries in DuckDB's SQL (the oracle; sessions as gaps and islands).
SQL = {
    "q0": "SELECT auction, bidder, price, channel, url, date_time, extra FROM bid",
    "q1": ("SELECT auction, bidder, date_time, extra, CAST(price AS DOUBLE) * 0.908 AS price "
           "FROM bid"),
    "q2": f"SELECT auction, price FROM bid WHERE auction % {Q2_MODULUS} = 0",
    "q5": """
        WITH windows AS (
            SELECT auction, unnest(generate_series(
                       time_bucket(INTERVAL 2 SECOND, date_time) - INTERVAL 8 SECOND,
                       time_bucket(INTERVAL 2 SECOND, date_time), INTERVAL 2 SECOND)) AS ws
            FROM bid),
        counts AS (SELECT ws, auction, count(*) AS num FROM windows GROUP BY ws, auction)
        SELECT ws AS window_start, ws + INTERVAL 10 SECOND AS window_end, auction, num
        FROM (SELECT *, rank() OVER (PARTITION BY ws ORDER BY num DESC) AS r FROM counts)
        WHERE r = 1""",
    "q11": """
        WITH marked AS (
            SELECT bidder, date_time, extra,
                   CASE WHEN lag(date_time) OVER w IS NULL
                          OR date_time - lag(date_time) OVER w >= INTERVAL 10 SECOND
                        THEN 1 ELSE 0 END AS starts
            FROM bid WINDOW w AS (PARTITION BY bidder ORDER BY date_time, extra)),
        numbered AS (  -- the same order as above, ties included (extra is unique)
            SELECT bidder, date_time,
                   sum(starts) OVER (PARTITION BY bidder ORDER BY date_time, extra
                                     ROWS UNBOUNDED PRECEDING) AS session
            FROM marked)
        SELECT bidder, count(*) AS bid_count, min(date_time) AS window_start,
               max(date_time) + INTERVAL 10 SECOND AS window_end
        FROM numbered GROUP BY bidder, session""",
    "q13": f"""SELECT b.auction, b.bidder, b.price, b.date_time, s.value
               FROM bid b JOIN side_input s ON b.auction % {SIDE_KEYS} = s.key""",
    "q14": """
        SELECT auction, bidder, date_time, extra, CAST(price AS DOUBLE) * 0.908 AS price,
               CASE WHEN hour(date_time) >= 8 AND hour(date_time) <= 18 THEN 'dayTime'
                    WHEN hour(date_time) <= 6 OR hour(date_time) >= 20 THEN 'nightTime'
                    ELSE 'otherTime' END AS bid_time_type,
               length(extra) - length(replace(extra, 'c', '')) AS c_counts
        FROM bid
        WHERE CAST(price AS DOUBLE) * 0.908 > 1000000
          AND CAST(price AS DOUBLE) * 0.908 < 50000000""",
    # DuckDB's regexp_extract gives '' for no match, Flink's (and ours) null: NULLIF.
    "q21": """
        SELECT auction, bidder, price, channel,
               CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1'
                    WHEN 'facebook' THEN '2' WHEN 'baidu' THEN '3'
                    ELSE NULLIF(regexp_extract(url, '(&|^)channel_id=([^&]*)', 2), '')
               END AS channel_id
        FROM bid
        WHERE NULLIF(regexp_extract(url, '(&|^)channel_id=([^&]*)', 2), '') IS NOT NULL
           OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """
        SELECT auction, bidder, price, channel,
               NULLIF(split_part(url, '/', 4), '') AS dir1,
               NULLIF(split_part(url, '/', 5), '') AS dir2,
               NULLIF(split_part(url, '/', 6), '') AS dir3
        FROM bid""",
}
