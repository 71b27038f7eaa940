"""Nexmark queries written with the public Stream API (data: :mod:`sabot_lab.datasets.nexmark`).

Each query is a function from the event streams to the result stream, and :data:`SQL` holds
the same query in DuckDB's SQL over tables named ``bid``, ``auction``, ``person`` (and
``side_input``), the oracle of the tests and the peer of ``benchmarks/nexmark.py``. So far:
q0, q1, q2, q11 and q13; the other queries need operators still to come (stream-stream joins,
distinct counts, deduplication).

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

from sabot_lab.expr import col
from sabot_lab.plan.windows import count as count_rows
from sabot_lab.plan.windows import session
from sabot_lab.reference import Table
from sabot_lab.stream import Stream

__all__ = ["SQL", "q0", "q1", "q2", "q11", "q13", "side_input"]

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


#: The same queries in DuckDB's SQL (the oracle; sessions as gaps and islands).
SQL = {
    "q0": "SELECT auction, bidder, price, channel, url, date_time, extra FROM bid",
    "q1": ("SELECT auction, bidder, date_time, extra, CAST(price AS DOUBLE) * 0.908 AS price "
           "FROM bid"),
    "q2": f"SELECT auction, price FROM bid WHERE auction % {Q2_MODULUS} = 0",
    "q11": """
        WITH marked AS (
            SELECT bidder, date_time,
                   CASE WHEN lag(date_time) OVER w IS NULL
                          OR date_time - lag(date_time) OVER w >= INTERVAL 10 SECOND
                        THEN 1 ELSE 0 END AS starts
            FROM bid WINDOW w AS (PARTITION BY bidder ORDER BY date_time)),
        numbered AS (
            SELECT bidder, date_time,
                   sum(starts) OVER (PARTITION BY bidder ORDER BY date_time
                                     ROWS UNBOUNDED PRECEDING) AS session
            FROM marked)
        SELECT bidder, count(*) AS bid_count, min(date_time) AS window_start,
               max(date_time) + INTERVAL 10 SECOND AS window_end
        FROM numbered GROUP BY bidder, session""",
    "q13": f"""SELECT b.auction, b.bidder, b.price, b.date_time, s.value
               FROM bid b JOIN side_input s ON b.auction % {SIDE_KEYS} = s.key""",
}
