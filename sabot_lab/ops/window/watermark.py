"""Watermarks: the event-time clock of a stream, decided row by row.

The watermark before a row is the largest event time of the accepted rows before it (in
arrival order) minus the bound on out-of-orderness. :class:`WatermarkOp` adds it to every row
as the ``_watermark`` column, so that everything downstream decides lateness per row, whatever
the batch sizes; rows whose event time is null, out of range, or (with ``max_future_skew``) a
bad clock far ahead go to the ``rejected`` side output with a reason.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> events = pa.table({"t": [10, 30, 20, None], "v": [1, 2, 3, 4]})
>>> result = (sl.Stream.from_table(events).with_watermark("t", unit="s",
...           max_out_of_orderness="5s")).run()
>>> result.table["_watermark"].to_pylist()[1:]
[5, 25]
>>> result.side_outputs["rejected"]["reason"].to_pylist()
['null event time']
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.snapshot import SnapshotError
from sabot_lab.plan.nodes import NO_WATERMARK, WATERMARK_COLUMN, Watermark
from sabot_lab.plan.windows import format_duration, to_unit

__all__ = ["LIMIT", "WatermarkOp", "event_times", "warm_up"]

#: Event times beyond +-2**62 (in the column's unit) are refused: windows and watermarks add
#: and subtract durations to them, which must not overflow int64.
LIMIT = 1 << 62


def event_times(array: pa.Array) -> np.ndarray:
    """Event times as int64 in the column's own unit (null slots hold 0)."""
    if pa.types.is_timestamp(array.type):
        array = array.view(pa.int64())  # the same buffer: no cast kernel per batch
    if array.null_count:
        array = array.fill_null(0)
    if array.type != pa.int64():
        array = array.cast(pa.int64())
    return array.to_numpy(zero_copy_only=False)


@numba.njit(nogil=True, cache=True)
def _assign(ts, valid, state, bound, skew, check_skew, watermark, accepted, reason
            ):  # pragma: no cover - numba
    """Per row: the watermark before it; reject null and too-far-future event times.

    ``state`` holds [running maximum of accepted rows, event time of the previous row]. A row
    is too far ahead when it is more than ``skew`` ahead of both: an isolated bad clock is
    rejected, while a genuine jump is confirmed by the next row (only its first row is
    rejected). reason: 0 accepted, 1 null event time, 2 too far ahead.
    """
    running_max = state[0]
    previous = state[1]
    for i in range(ts.shape[0]):
        watermark[i] = running_max - bound if running_max != NO_WATERMARK else NO_WATERMARK
        if not valid[i]:
            accepted[i] = False
            reason[i] = 1
            continue
        if ts[i] > LIMIT or ts[i] < -LIMIT:  # window arithmetic would overflow int64
            accepted[i] = False
            reason[i] = 3
            continue
        if (check_skew and running_max != NO_WATERMARK and ts[i] > running_max + skew
                and (previous == NO_WATERMARK or ts[i] > previous + skew)):
            accepted[i] = False
            reason[i] = 2
        else:
            accepted[i] = True
            reason[i] = 0
            if ts[i] > running_max:
                running_max = ts[i]
        previous = ts[i]
    state[0] = running_max
    state[1] = previous


@numba.njit(nogil=True, cache=True)
def _assign_all_valid(ts, state, bound, watermark):  # pragma: no cover - numba
    """:func:`_assign` for a batch without null event times and without a skew guard: the
    watermark before each row only. Returns False, leaving ``state`` as it was, when an
    event time is out of range (then :func:`_assign` decides row by row)."""
    running_max = state[0]
    n = ts.shape[0]
    i = 0
    low, high = np.int64(0), np.int64(0)
    while i < n and running_max == NO_WATERMARK:
        watermark[i] = NO_WATERMARK
        running_max = ts[i]
        low = min(low, running_max)
        high = max(high, running_max)
        i += 1
    while i < n:  # no branch but the maximum: the range is checked once, at the end
        watermark[i] = running_max - bound
        t = ts[i]
        running_max = max(running_max, t)
        low = min(low, t)
        i += 1
    high = max(high, running_max)
    if high > LIMIT or low < -LIMIT:
        return False
    state[0] = running_max
    if n:
        state[1] = ts[n - 1]
    return True


def warm_up() -> None:
    """Load (or compile) the watermark kernel before the first batch, so its one-off cost is
    not counted as an operator's work."""
    for ts in (np.zeros(1, dtype=np.int64), event_times(pa.array([0], pa.int64()))):
        state = np.full(2, NO_WATERMARK, dtype=np.int64)
        _assign(ts, np.ones(1, dtype=np.bool_), state, 0, 0, False,
                np.empty(1, dtype=np.int64), np.empty(1, dtype=np.bool_),
                np.empty(1, dtype=np.int8))
        _assign_all_valid(ts, np.full(2, NO_WATERMARK, dtype=np.int64), 0,
                          np.empty(1, dtype=np.int64))


class WatermarkOp(Operator):
    """Adds the per-row watermark column; rejects rows with unusable event times."""

    node: Watermark
    parallel_safe = False
    stateful = True

    def __init__(self, node: Watermark, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        super().__init__(node, metrics, side_outputs)
        unit = self.node.time_unit
        self.bound = to_unit(self.node.out_of_orderness_ns, unit)
        skew = self.node.max_future_skew_ns
        self.skew = to_unit(skew, unit) if skew is not None else 0
        self.skew_ns = skew or 0
        self.state = np.full(2, NO_WATERMARK, dtype=np.int64)  # running max, previous row
        self.side_outputs.declare("rejected", self.node.child.schema.append(
            pa.field("reason", pa.string())))
        warm_up()

    def snapshot(self) -> bytes:
        """The running maximum and the previous row's event time."""
        return self.state.tobytes()

    def restore(self, state: bytes) -> None:
        if len(state) != self.state.nbytes:
            raise SnapshotError(f"watermark state is damaged: {len(state)} bytes, expected "
                                f"{self.state.nbytes}")
        self.state[:] = np.frombuffer(state, dtype=np.int64)
        self.metrics.watermark = self.watermark

    @property
    def watermark(self) -> int:
        """The current watermark (after every row seen so far)."""
        running_max = int(self.state[0])
        return running_max - self.bound if running_max != NO_WATERMARK else NO_WATERMARK

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        column = batch.column(self.node.time_col)
        ts = event_times(column)
        n = batch.num_rows
        watermark = np.empty(n, dtype=np.int64)
        if (not column.null_count and self.node.max_future_skew_ns is None
                and _assign_all_valid(ts, self.state, self.bound, watermark)):
            # The usual batch: every row accepted, only the watermark column to add.
            self.metrics.watermark = self.watermark
            return [batch.append_column(WATERMARK_COLUMN, pa.array(watermark))]
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False) if column.null_count \
            else np.ones(len(column), dtype=np.bool_)
        accepted = np.empty(n, dtype=np.bool_)
        reason = np.empty(n, dtype=np.int8)
        _assign(ts, valid, self.state, self.bound, self.skew,
                self.node.max_future_skew_ns is not None, watermark, accepted, reason)
        self.metrics.watermark = self.watermark
        rejected = n - int(accepted.sum())
        if rejected:
            why = np.array(["", "null event time",
                            f"more than {format_duration(self.skew_ns)} ahead of every "
                            f"earlier row and of the row before it",
                            "event time out of range (beyond +-2**62 in its unit)"],
                           dtype=object)[reason[~accepted]]
            self.side_outputs.emit("rejected", batch.filter(pa.array(~accepted)).append_column(
                "reason", pa.array(why, pa.string())))
            self.metrics.add(rows_side_output=rejected)
            batch = batch.filter(pa.array(accepted))
            watermark = watermark[accepted]
        return [batch.append_column(WATERMARK_COLUMN, pa.array(watermark))]
