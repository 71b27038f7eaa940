"""Alerts from the absence of events: a key silent for longer than a gap.

"No heartbeat from a device for 5 minutes", "a card unused for 30 days": a rule that fires on
what did *not* happen cannot be checked when a row arrives, because no row arrives. It needs
an event-time timer per key (see :mod:`sabot_lab.process`): every row of a key sets its timer
to the key's latest event time plus the gap; when the watermark passes the timer, the key has
been silent for the whole gap, and the timer raises the alert. A row that arrives after its
key's timer time, before the watermark got there, shows the same silence and raises it.

Rows of one key are expected in event-time order (heartbeats of one device are); rows of
different keys may interleave in any order within the watermark's bound. A row no newer than
its key's latest one (a repeat, or late) neither moves the timer nor arms it again.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> beats = pa.table({"device": [1, 2, 1, 2, 1], "t": [0, 1, 4, 30, 31]})
>>> job = (sl.Stream.from_table(beats).with_watermark("t", unit="s").key_by("device")
...        .process(Silence("device", "t", gap=10)))
>>> job.to_table().sort_by("alert_at").to_pydict()
{'device': [2, 1, 2, 1], 'silent_since': [1, 4, 30, 31], 'alert_at': [11, 14, 40, 41]}
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from sabot_lab.ops.window.watermark import event_times
from sabot_lab.plan.nodes import WATERMARK_COLUMN
from sabot_lab.process import NO_TIMER, TIMER_FIELD, ProcessFunction, PythonProcessFunction
from sabot_lab.state import StateBlock, StateSpec

__all__ = ["Silence", "python_silence"]

_NEVER = np.iinfo(np.int64).min


@numba.njit(nogil=True, cache=True)
def _silences(slots, ts, marks, last, timer, gap, rows, since, at):  # pragma: no cover
    """Per row, in arrival order: raise its key's silence if the timer is due (by the
    watermark before the row, or by the row's own time), then move the timer to the key's
    latest time plus ``gap``. Returns the number of alerts written to rows/since/at."""
    found = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        t = ts[i]
        due = timer[s]
        if due != NO_TIMER and (due <= marks[i] or due <= t):
            rows[found] = i
            since[found] = last[s]
            at[found] = due
            found += 1
            timer[s] = NO_TIMER
        if t > last[s]:  # an older or repeated time neither moves nor re-arms the timer
            last[s] = t
            timer[s] = t + gap
    return found


class Silence(ProcessFunction):
    """Alert once per silence: a key with no event for ``gap`` after its latest one.

    Parameters
    ----------
    key
        The key column (alerts carry it, with its type).
    time_col
        The event-time column (the one the watermark is on): a timestamp or an integer time.
    gap
        How long a key may stay silent, in the time column's unit (an int).

    The output has ``key``, ``silent_since`` (the key's latest event time before the
    silence) and ``alert_at`` (``silent_since + gap``, when the silence became certain), both
    of the time column's type.
    """

    timers = True

    def __init__(self, key: str, time_col: str, gap: int, name: str = "silence") -> None:
        if gap <= 0:
            raise ValueError(f"gap must be positive, got {gap}")
        self.key, self.time_column, self.gap, self.name = key, time_col, int(gap), name
        self.columns = (key, time_col)

    def state_spec(self) -> StateSpec:
        return StateSpec({"last_seen": "int64"}, defaults={"last_seen": _NEVER})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        time_type = input_schema.field(self.time_column).type
        if not (pa.types.is_timestamp(time_type) or pa.types.is_integer(time_type)):
            raise TypeError(f"{self.time_column!r} must be a timestamp or an integer time, "
                            f"it is {time_type}")
        self._time_type = time_type
        return pa.schema([(self.key, input_schema.field(self.key).type),
                          ("silent_since", time_type), ("alert_at", time_type)])

    def validate(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray] | None:
        times = batch.column(self.time_column)
        if not times.null_count:
            return None
        return times.is_null().to_numpy(zero_copy_only=False), np.array("null event time")

    def _alerts(self, keys: pa.Array, since: np.ndarray, at: np.ndarray) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [keys, pa.array(since).cast(self._time_type), pa.array(at).cast(self._time_type)],
            names=[self.key, "silent_since", "alert_at"])

    def process(self, batch: pa.RecordBatch, keys: pa.Array, block: StateBlock
                ) -> pa.RecordBatch:
        n = batch.num_rows
        rows, since, at = (np.empty(n, dtype=np.int64) for _ in range(3))
        found = _silences(block.slots, event_times(batch.column(self.time_column)),
                          batch.column(WATERMARK_COLUMN).to_numpy(), block.arrays["last_seen"],
                          block.arrays[TIMER_FIELD], self.gap, rows, since, at)
        return self._alerts(keys.take(pa.array(rows[:found])), since[:found], at[:found])

    def on_timer(self, keys: pa.Array, times: np.ndarray, block: StateBlock
                 ) -> pa.RecordBatch:
        return self._alerts(keys, block.arrays["last_seen"][block.slots], times)


def python_silence(key: str, time_col: str, gap: int) -> PythonProcessFunction:
    """The same rule row by row in plain Python (the teaching path), for integer times: a
    row moves its key's timer; a timer that fires, or a row after it, is a silence.

    >>> import sabot_lab as sl
    >>> beats = pa.table({"device": [1, 1], "t": [0, 30]})
    >>> (sl.Stream.from_table(beats).with_watermark("t", unit="s").key_by("device")
    ...  .process(python_silence("device", "t", 10)).to_table().to_pydict())
    {'device': [1, 1], 'silent_since': [0, 30], 'alert_at': [10, 40]}
    """
    def seen(device: object, row: dict, state: dict) -> list[dict]:
        out = []
        if state[TIMER_FIELD] <= row[time_col]:
            out.append({key: device, "silent_since": state["last"],
                        "alert_at": state[TIMER_FIELD]})
            state[TIMER_FIELD] = NO_TIMER
        if row[time_col] > state["last"]:  # a repeated or older time changes nothing
            state["last"] = row[time_col]
            state[TIMER_FIELD] = row[time_col] + gap
        return out

    def silent(device: object, time: int, state: dict) -> list[dict]:
        return [{key: device, "silent_since": state["last"], "alert_at": time}]

    return PythonProcessFunction(
        seen, {"last": "int64"}, [time_col],
        pa.schema([(key, pa.int64()), ("silent_since", pa.int64()), ("alert_at", pa.int64())]),
        defaults={"last": _NEVER}, on_timer=silent, name=f"{key}_silence_py")
