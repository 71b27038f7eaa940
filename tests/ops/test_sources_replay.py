"""The replay source paces batches by event time (or rate) with an injected clock."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.ops.sources import ReplayScan


class FakeClock:
    """A clock that only moves when the source sleeps: the test takes no time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_batches_are_due_when_their_latest_event_time_is_reached():
    table = pa.table({"t": pa.array([0, 10, 5, 30, 31, 60], pa.timestamp("s"))})
    clock = FakeClock()
    scan = ReplayScan(table, "t", speed=10, batch_size=2, clock=clock, sleep=clock.sleep)
    sizes = [b.num_rows for b in scan.batches()]
    assert sizes == [2, 2, 2]
    # Latest event times per batch: 10 s, 30 s, 60 s after 0, at 10x: 1, 3 and 6 s.
    assert clock.sleeps == pytest.approx([1.0, 2.0, 3.0])


def test_fixed_rate_and_errors():
    table = pa.table({"x": list(range(10))})
    clock = FakeClock()
    scan = ReplayScan(table, rows_per_second=5, batch_size=5, clock=clock, sleep=clock.sleep)
    assert [b.num_rows for b in scan.batches()] == [5, 5]
    assert clock.sleeps == pytest.approx([1.0])
    with pytest.raises(ValueError, match="one of the two"):
        ReplayScan(table)
    with pytest.raises(NotImplementedError, match="LocalRunner"):
        scan.partitions(2)


def test_replayed_stream_gives_the_table():
    table = pa.table({"x": list(range(10))})
    out = sl.Stream.replay(table, rows_per_second=1e9, batch_size=3).to_table()
    assert out.equals(table)


def test_a_table_of_several_chunks_is_replayed_whole():
    table = pa.concat_tables([pa.table({"x": list(range(i, i + 7))}) for i in (0, 7, 14)])
    clock = FakeClock()
    scan = ReplayScan(table, rows_per_second=10, batch_size=5, clock=clock, sleep=clock.sleep)
    assert [b.num_rows for b in scan.batches()] == [5, 5, 5, 5, 1]
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.5, 0.5])
