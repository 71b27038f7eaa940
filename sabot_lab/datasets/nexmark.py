"""Nexmark: the online-auction event streams of the standard streaming benchmark.

Follows the model of the Nexmark generator of Apache Beam and Flink: one event stream in which
every 50 consecutive events hold 1 new person, 3 new auctions and 46 bids; ids grow with the
event number (persons and auctions from 1000, categories from 10); a bid goes to the latest
"hot" auction with probability 1/2 (else to one of the 100 most recent auctions), its bidder
is a hot person with probability 3/4 (else one of the 1,000 most recent people), and an
auction's seller likewise; prices are ``round(10 ** (6 u) * 100)`` cents. Event ``i`` happens
at ``start + i / rate``. With ``out_of_order=k`` the times are shuffled within consecutive
groups of ``k`` events (the delay option of the original generator).

Every random draw is a hash of the seed and the event number, so an event does not depend on
how the stream is cut into batches: batch ``b`` is generated directly, in memory proportional
to the batch, which is what makes 100M events possible in bounded memory.

Examples
--------
>>> persons, auctions, bids = nexmark(5_000)
>>> persons.num_rows, auctions.num_rows, bids.num_rows
(100, 300, 4600)
>>> bids.column_names
['auction', 'bidder', 'price', 'channel', 'url', 'date_time', 'extra']
>>> bool(pa.compute.all(pa.compute.greater_equal(bids["auction"], 1000)).as_py())
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from sabot_lab.stream import Stream

__all__ = ["AUCTION_SCHEMA", "BID_SCHEMA", "PERSON_SCHEMA", "nexmark", "nexmark_batch",
           "nexmark_batches", "nexmark_stream"]

PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
DENOMINATOR = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
FIRST_PERSON_ID, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, NUM_CATEGORIES = 1000, 1000, 10, 5
HOT_AUCTION_RATIO, HOT_BIDDER_RATIO, HOT_SELLER_RATIO = 2, 4, 4  # 1 in n draws is not hot
HOT_GROUP = 100  # the hot auction (person) is the first of the last 100
IN_FLIGHT_AUCTIONS, AUCTION_ID_LEAD, ACTIVE_PEOPLE, PERSON_ID_LEAD = 100, 10, 1000, 10
START_MS = 1_699_938_800_000  # 2023-11-14 05:13:20 UTC

PERSON_SCHEMA = pa.schema([
    ("id", pa.int64()), ("name", pa.string()), ("email_address", pa.string()),
    ("credit_card", pa.string()), ("city", pa.string()), ("state", pa.string()),
    ("date_time", pa.timestamp("ms")), ("extra", pa.string())])
AUCTION_SCHEMA = pa.schema([
    ("id", pa.int64()), ("item_name", pa.string()), ("description", pa.string()),
    ("initial_bid", pa.int64()), ("reserve", pa.int64()), ("date_time", pa.timestamp("ms")),
    ("expires", pa.timestamp("ms")), ("seller", pa.int64()), ("category", pa.int64()),
    ("extra", pa.string())])
BID_SCHEMA = pa.schema([
    ("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
    ("channel", pa.string()), ("url", pa.string()), ("date_time", pa.timestamp("ms")),
    ("extra", pa.string())])

_FIRST_NAMES = np.array(["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie",
                         "Sarah", "Deiter", "Walter"])
_LAST_NAMES = np.array(["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith",
                        "Jones", "Noris"])
_CITIES = np.array(["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend",
                    "Redmond", "Seattle", "Kent", "Cheyenne"])
_STATES = np.array(["AZ", "CA", "ID", "OR", "WA", "WY"])
_CHANNELS = np.array(["Google", "Facebook", "Baidu", "Apple"])
#: Path segments of a bid's url (the original draws random 5-letter ones).
_SEGMENTS = np.array([a + b + c + d + e for a, b, c, d, e in zip(
    "qwertyuiopasdfghjklzxcvbnmqwertyuiopasdf", "mnbvcxzlkjhgfdsapoiuytrewqmnbvcxzlkjhgf",
    "plokijuhygtfrdeswaqzxcvbnmplokijuhygtfr", "zaqxswcdevfrbgtnhymjukilopzaqxswcdevfrb",
    "abcdefghijklmnopqrstuvwxyzabcdefghijklmn", strict=False)])


def _uniform(seed: int, events: np.ndarray, salt: int) -> np.ndarray:
    """A uniform float in [0, 1) per event: splitmix64 of (seed, event number, salt)."""
    with np.errstate(over="ignore"):
        z = (events.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64((seed * 1_000_003 + salt * 7_919) & 0xFFFFFFFFFFFFFFFF))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _below(seed: int, events: np.ndarray, salt: int, n: np.ndarray | int) -> np.ndarray:
    """A uniform integer in ``[0, n)`` per event."""
    return np.floor(_uniform(seed, events, salt) * n).astype(np.int64)


def _last_person(events: np.ndarray) -> np.ndarray:
    """The base-0 id of the latest person at or before each event."""
    return events // DENOMINATOR


def _last_auction(events: np.ndarray) -> np.ndarray:
    """The base-0 id of the latest auction at or before each event."""
    epoch, offset = np.divmod(events, DENOMINATOR)
    before = offset < PERSON_PROPORTION
    offset = np.where(offset >= PERSON_PROPORTION + AUCTION_PROPORTION,
                      AUCTION_PROPORTION - 1, offset - PERSON_PROPORTION)
    return np.where(before, (epoch - 1) * AUCTION_PROPORTION + AUCTION_PROPORTION - 1,
                    epoch * AUCTION_PROPORTION + offset)


def _some_person(seed: int, events: np.ndarray, salt: int) -> np.ndarray:
    """One of the recently active people (base 0)."""
    people = _last_person(events) + 1
    active = np.minimum(people, ACTIVE_PEOPLE)
    return people - active + _below(seed, events, salt, active + PERSON_ID_LEAD)


def _hot_or(seed: int, events: np.ndarray, salt: int, ratio: int, hot: np.ndarray,
            other: np.ndarray) -> np.ndarray:
    return np.where(_below(seed, events, salt, ratio) > 0, hot, other)


def _price(seed: int, events: np.ndarray, salt: int) -> np.ndarray:
    return np.round(10.0 ** (_uniform(seed, events, salt) * 6.0) * 100.0).astype(np.int64)


def _times(events: np.ndarray, rate: int, out_of_order: int, seed: int) -> np.ndarray:
    """Milliseconds of each event; shuffled within groups of ``out_of_order`` events."""
    ms = START_MS + events * 1000 // rate
    if out_of_order > 1:
        group = events // out_of_order
        order = np.lexsort((_uniform(seed, events, 99), group))
        ms = ms[order]
    return ms


def _strings(parts: list[np.ndarray]) -> pa.Array:
    joined = parts[0].astype(object)
    for part in parts[1:]:
        joined = joined + part.astype(str).astype(object)
    return pa.array(joined, pa.string())


def nexmark_batch(index: int, events_per_batch: int, total: int, *, seed: int = 1,
                  rate: int = 10_000, out_of_order: int = 0
                  ) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]:
    """The persons, auctions and bids among events ``[index * events_per_batch, ...)`` (at
    most ``total`` events in all)."""
    if out_of_order > 1 and events_per_batch % out_of_order:
        raise ValueError(f"events_per_batch ({events_per_batch}) must be a multiple of "
                         f"out_of_order ({out_of_order}): a group is shuffled whole")
    first = index * events_per_batch
    events = np.arange(first, min(first + events_per_batch, total), dtype=np.int64)
    times = _times(events, rate, out_of_order, seed)
    offset = events % DENOMINATOR
    kind = np.where(offset < PERSON_PROPORTION, 0,
                    np.where(offset < PERSON_PROPORTION + AUCTION_PROPORTION, 1, 2))
    return (_persons(seed, events[kind == 0], times[kind == 0]),
            _auctions(seed, events[kind == 1], times[kind == 1]),
            _bids(seed, events[kind == 2], times[kind == 2]))


def _persons(seed: int, events: np.ndarray, times: np.ndarray) -> pa.RecordBatch:
    ids = _last_person(events) + FIRST_PERSON_ID
    first = _FIRST_NAMES[_below(seed, events, 1, len(_FIRST_NAMES))]
    last = _LAST_NAMES[_below(seed, events, 2, len(_LAST_NAMES))]
    card = _below(seed, events, 3, 10**16)
    return pa.RecordBatch.from_arrays([
        pa.array(ids), _strings([first, np.full(len(events), " "), last]),
        _strings([np.char.lower(last), np.full(len(events), "@"), first,
                  np.full(len(events), ".com")]),
        _strings([np.full(len(events), ""), card]),
        pa.array(_CITIES[_below(seed, events, 4, len(_CITIES))]),
        pa.array(_STATES[_below(seed, events, 5, len(_STATES))]),
        pa.array(times, pa.timestamp("ms")),
        _strings([np.full(len(events), "p"), events])], schema=PERSON_SCHEMA)


def _auctions(seed: int, events: np.ndarray, times: np.ndarray) -> pa.RecordBatch:
    ids = _last_auction(events) + FIRST_AUCTION_ID
    hot_seller = (_last_person(events) // HOT_GROUP) * HOT_GROUP
    seller = _hot_or(seed, events, 11, HOT_SELLER_RATIO, hot_seller,
                     _some_person(seed, events, 12)) + FIRST_PERSON_ID
    initial = _price(seed, events, 13)
    length_ms = 1_000 * (10 + _below(seed, events, 14, 590))
    return pa.RecordBatch.from_arrays([
        pa.array(ids), _strings([np.full(len(events), "item-"), ids]),
        _strings([np.full(len(events), "description of "), ids]),
        pa.array(initial), pa.array(initial + _price(seed, events, 15)),
        pa.array(times, pa.timestamp("ms")), pa.array(times + length_ms, pa.timestamp("ms")),
        pa.array(seller),
        pa.array(FIRST_CATEGORY_ID + _below(seed, events, 16, NUM_CATEGORIES)),
        _strings([np.full(len(events), "a"), events])], schema=AUCTION_SCHEMA)


def _bids(seed: int, events: np.ndarray, times: np.ndarray) -> pa.RecordBatch:
    last = _last_auction(events)
    hot = (last // HOT_GROUP) * HOT_GROUP
    low = np.maximum(last - IN_FLIGHT_AUCTIONS, 0)
    recent = low + _below(seed, events, 21, last - low + 1 + AUCTION_ID_LEAD)
    auction = _hot_or(seed, events, 22, HOT_AUCTION_RATIO, hot, recent) + FIRST_AUCTION_ID
    hot_bidder = (_last_person(events) // HOT_GROUP) * HOT_GROUP + 1
    bidder = _hot_or(seed, events, 23, HOT_BIDDER_RATIO, hot_bidder,
                     _some_person(seed, events, 24)) + FIRST_PERSON_ID
    channel_id = _below(seed, events, 25, 10_000)
    known = channel_id < len(_CHANNELS)
    channel = np.where(known, _CHANNELS[np.minimum(channel_id, len(_CHANNELS) - 1)],
                       np.char.add("channel-", channel_id.astype(str)))
    return pa.RecordBatch.from_arrays([
        pa.array(auction), pa.array(bidder), pa.array(_price(seed, events, 26)),
        pa.array(channel, pa.string()),
        _strings([np.full(len(events), "https://www.nexmark.com/"),
                  _SEGMENTS[_below(seed, events, 31, len(_SEGMENTS))], np.full(len(events), "/"),
                  _SEGMENTS[_below(seed, events, 32, len(_SEGMENTS))], np.full(len(events), "/"),
                  _SEGMENTS[_below(seed, events, 33, len(_SEGMENTS))],
                  np.full(len(events), "/item.htm?query=1&channel_id="), channel_id]),
        pa.array(times, pa.timestamp("ms")),
        _strings([np.full(len(events), "b"), events])], schema=BID_SCHEMA)


def nexmark_batches(events: int, events_per_batch: int = 100_000, **options: int
                    ) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]]:
    """The streams batch by batch: (persons, auctions, bids) per ``events_per_batch``
    events; ``options`` as :func:`nexmark_batch`."""
    for index in range(-(-events // events_per_batch)):
        yield nexmark_batch(index, events_per_batch, events, **options)


def nexmark(events: int, *, seed: int = 1, rate: int = 10_000, out_of_order: int = 0,
            events_per_batch: int = 100_000) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``events`` Nexmark events as three tables: persons, auctions and bids (in event
    order, each a chunk per batch of events).

    Parameters
    ----------
    events
        Events in all (1 in 50 a person, 3 in 50 an auction, the rest bids).
    seed
        Another seed, other data; the same seed, the same data whatever the batch size.
    rate
        Events per second of event time.
    out_of_order
        Shuffle the event times within consecutive groups of this many events (0: in order).
    """
    parts = list(nexmark_batches(events, events_per_batch, seed=seed, rate=rate,
                                 out_of_order=out_of_order))
    return tuple(pa.Table.from_batches([p[i] for p in parts], schema=schema)
                 for i, schema in enumerate((PERSON_SCHEMA, AUCTION_SCHEMA, BID_SCHEMA)))


def nexmark_stream(kind: str, events: int, events_per_batch: int = 100_000, *, seed: int = 1,
                   rate: int = 10_000, out_of_order: int = 0) -> Stream:
    """One of the streams (``"person"``, ``"auction"`` or ``"bid"``) as a
    :class:`~sabot_lab.stream.Stream` that generates each batch when the job asks for it, in
    memory proportional to a batch, whatever ``events`` (100M and more).

    >>> nexmark_stream("bid", 1_000, 250).to_table().num_rows
    920
    """
    from sabot_lab.stream import Stream

    index = ("person", "auction", "bid").index(kind)
    schema = (PERSON_SCHEMA, AUCTION_SCHEMA, BID_SCHEMA)[index]

    def make(i: int) -> pa.RecordBatch:
        return nexmark_batch(i, events_per_batch, events, seed=seed, rate=rate,
                             out_of_order=out_of_order)[index]

    return Stream.from_generator(make, -(-events // events_per_batch), schema,
                                 source_id=f"nexmark-{kind}-{events}-{events_per_batch}-{seed}-"
                                           f"{rate}-{out_of_order}")
