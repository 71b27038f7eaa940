"""Processing-time timers in keyed process functions, against a plain-Python simulation
with the same clock (a fake one: processing time is whatever the clock says)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl

IDLE = 100


class Clock:
    """Processing time in nanoseconds that a test moves: by ``step`` at every batch that
    passes the ``tick`` stage."""

    __name__ = "tick"

    def __init__(self, step: int) -> None:
        self.now, self.step = 0, step

    def __call__(self, batch: pa.RecordBatch | None = None) -> int | pa.RecordBatch:
        if batch is None:
            return self.now
        self.now += self.step
        return batch


def idle_alerts(clock: Clock) -> sl.PythonProcessFunction:
    """An alert when a key has had no row for IDLE nanoseconds of processing time."""
    def seen(key, row, state):
        state["_ptimer"] = clock() + IDLE
        return []

    def idle(key, time, state):
        return [{"key": key, "at": time}]

    return sl.PythonProcessFunction(seen, {"n": "int64"}, ["v"],
                                    pa.schema([("key", pa.int64()), ("at", pa.int64())]),
                                    on_processing_timer=idle, clock=clock, name="idle")


def simulate(batches: list[list[int]], step: int) -> list[tuple[int, int]]:
    """Batch by batch: the clock moves, the rows set their keys' deadlines, then every
    deadline the clock has reached fires (none at the end of the input)."""
    now, deadlines, alerts = 0, {}, []
    for keys in batches:
        now += step
        for key in keys:
            deadlines[key] = now + IDLE
        for key, due in sorted(deadlines.items(), key=lambda kv: (kv[1], kv[0])):
            if due <= now:
                alerts.append((key, due))
                del deadlines[key]
    return alerts


@pytest.mark.parametrize(("batch_size", "step"), [(1, 30), (3, 45), (10, 120)])
def test_processing_timers_fire_when_the_clock_reaches_them(batch_size, step):
    rng = np.random.default_rng(batch_size)
    keys = rng.integers(0, 6, 120)
    table = pa.table({"key": keys, "v": np.arange(120)})
    clock = Clock(step)
    job = (sl.Stream.from_table(table, batch_size=batch_size)
           .map_batches(clock, table.schema).key_by("key").process(idle_alerts(clock)))
    got = [(r["key"], r["at"]) for r in job.run(sl.LocalRunner(threads=1)).table.to_pylist()]
    batches = [keys[i:i + batch_size].tolist() for i in range(0, len(keys), batch_size)]
    expected = simulate(batches, step)
    assert sorted(got) == sorted(expected)
    assert len(expected) > 0


def test_processing_timers_do_not_fire_at_the_end_of_the_input():
    clock = Clock(1)
    table = pa.table({"key": [1, 2], "v": [0, 1]})
    job = (sl.Stream.from_table(table).map_batches(clock, table.schema)
           .key_by("key").process(idle_alerts(clock)))
    assert job.run().table.num_rows == 0
