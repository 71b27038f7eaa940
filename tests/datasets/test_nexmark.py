"""The Nexmark generator: the model's proportions and id spaces, hot auctions and bidders,
the same events whatever the batch size, and out-of-order times only within a group."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from sabot_lab.datasets.nexmark import nexmark, nexmark_stream


def test_proportions_ids_and_times():
    persons, auctions, bids = nexmark(100_000)
    assert (persons.num_rows, auctions.num_rows, bids.num_rows) == (2_000, 6_000, 92_000)
    assert persons["id"].to_pylist() == list(range(1000, 3000))
    assert auctions["id"].to_pylist() == list(range(1000, 7000))
    # a bid names an auction that exists by then (or one of the next few: the model's lead)
    assert pc.max(bids["auction"]).as_py() <= 7000 + 10
    assert pc.min(bids["price"]).as_py() >= 100
    times = bids["date_time"].cast("int64").to_numpy()
    assert (np.diff(times) >= 0).all()  # in order without out_of_order
    assert set(pc.unique(auctions["category"]).to_pylist()) == set(range(10, 15))


def test_hot_auctions_and_bidders():
    _, _, bids = nexmark(200_000)
    auction = bids["auction"].to_numpy() - 1000
    bidder = bids["bidder"].to_numpy() - 1000
    assert 0.45 < np.mean(auction % 100 == 0) < 0.6  # half go to the hot auction
    assert 0.7 < np.mean(bidder % 100 == 1) < 0.8  # three in four from a hot bidder


def test_the_same_events_whatever_the_batch_size():
    whole = nexmark(30_000, events_per_batch=30_000)
    cut = nexmark(30_000, events_per_batch=700)
    assert all(a.equals(b) for a, b in zip(whole, cut, strict=True))
    assert nexmark_stream("bid", 30_000, 3_000).to_table().equals(whole[2])
    other = nexmark(30_000, seed=2)
    assert not other[2]["price"].equals(whole[2]["price"])


def test_out_of_order_shuffles_within_groups_only():
    def all_times(tables):
        return np.concatenate([t["date_time"].cast("int64").to_numpy() for t in tables])

    ordered = nexmark(20_000)
    shuffled = nexmark(20_000, out_of_order=50, events_per_batch=1_000)
    bids = shuffled[2]["date_time"].cast("int64").to_numpy()
    assert (np.diff(bids) < 0).any()
    # the same times, moved among the events of a group: 50 events at 10,000/s span 5 ms
    assert (np.sort(all_times(shuffled)) == np.sort(all_times(ordered))).all()
    assert np.max(np.maximum.accumulate(bids) - bids) <= 5
