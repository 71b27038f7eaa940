"""The keyed process operator: per-key state in a state backend, a function per batch.

Rows whose key is null go to the ``null_key`` side output, rows the function rejects
(:meth:`~sabot_lab.process.ProcessFunction.validate`) to ``invalid``, both with a reason; the
rest reach the function with their keys' state, in arrival order. Input rows are absorbed
(``rows_aggregated``) and the function's rows are the output, so the accounting is that of an
aggregation: rows in = absorbed + side output.

A function with event-time timers fires a row's due timer itself (before the row); after each
batch this operator fires every timer the batch's last watermark has passed, and at the end
of the input every timer still set (the final watermark is past them all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.snapshot import SnapshotError
from sabot_lab.plan.nodes import WATERMARK_COLUMN, KeyedProcess
from sabot_lab.process import NO_TIMER, PTIMER_FIELD, TIMER_FIELD, with_timers
from sabot_lab.state import KeyedState, MemoryState, StateBlock, StateSpec

__all__ = ["KeyedProcessOp", "make_state"]

log = logging.getLogger(__name__)


def make_state(kind: str, spec: StateSpec, path: str | None = None) -> KeyedState:
    """An empty state backend by name: ``"memory"`` or ``"rocksdict"`` (at ``path``; a
    store an earlier run left there is deleted, see
    :meth:`~sabot_lab.state.RocksDictState.fresh`). A resumed run fills it from its
    checkpoint (:meth:`KeyedProcessOp.restore`)."""
    if kind == "memory":
        return MemoryState(spec)
    from sabot_lab.state import RocksDictState

    return RocksDictState.fresh(spec, path)


class KeyedProcessOp(Operator):
    """Runs a :class:`~sabot_lab.process.ProcessFunction` with per-key state."""

    node: KeyedProcess
    parallel_safe = False
    stateful = True

    def __init__(self, node: KeyedProcess, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        super().__init__(node, metrics, side_outputs)
        self.function = self.node.function
        self.key = self.node.keys[0]
        spec = self.function.state_spec()
        self.timers = bool(getattr(self.function, "timers", False))
        self.processing = bool(getattr(self.function, "processing_timers", False))
        fields = (TIMER_FIELD,) * self.timers + (PTIMER_FIELD,) * self.processing
        self.state = make_state(self.node.state,
                                with_timers(spec, fields) if fields else spec,
                                self.node.state_path)
        self.metrics.aggregates = True
        reason = pa.field("reason", pa.string())
        for name in ("null_key", "invalid"):
            self.side_outputs.declare(name, self.node.child.schema.append(reason))

    def _side_output(self, name: str, batch: pa.RecordBatch, mask: np.ndarray,
                     reasons: np.ndarray | str) -> pa.RecordBatch:
        rows = batch.filter(pa.array(mask))
        why = pa.array(np.broadcast_to(np.asarray(reasons, dtype=object), (rows.num_rows,)),
                       pa.string())
        self.side_outputs.emit(name, rows.append_column("reason", why))
        self.metrics.add(rows_side_output=rows.num_rows)
        return batch.filter(pa.array(~mask))

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        # Taken before any row is set aside: the clock moves with every row that arrived.
        watermark = (pc.max(batch.column(WATERMARK_COLUMN)).as_py()
                     if self.timers and batch.num_rows else None)
        keys = batch.column(self.key)
        if keys.null_count:
            null = pc.is_null(keys).to_numpy(zero_copy_only=False)
            batch = self._side_output("null_key", batch, null,
                                      f"null key in column {self.key!r}")
            self.metrics.add(null_keys=int(null.sum()))
        rejected = self.function.validate(batch)
        if rejected is not None and rejected[0].any():
            mask, reasons = rejected
            batch = self._side_output("invalid", batch, mask, reasons)
        self.metrics.add(rows_aggregated=batch.num_rows)
        if not batch.num_rows:
            fired = self._fire(watermark) if watermark is not None else []
            return fired + self._fire_processing()
        keys = batch.column(self.key)
        first = last = None
        if self.function.time_col is not None and self.state.spec.ttl is not None:
            times = batch.column(self.function.time_col)
            bounds = pc.min_max(times.cast(pa.int64()) if pa.types.is_timestamp(times.type)
                                else times)
            first, last = bounds["min"].as_py(), bounds["max"].as_py()
        # Keys idle since before the batch's first event (minus ttl) are gone for every row
        # of it; finer, row by row, is the function's job (it sees each row's time).
        block = self.state.acquire(keys, first)
        out = self.function.process(batch, keys, block)
        self.state.release(block, last)
        if isinstance(out, tuple):  # (output, rows the function refused, their reasons)
            out, refused, reasons = out
            if refused.any():
                self._side_output("invalid", batch, refused, reasons)
                self.metrics.add(rows_aggregated=-int(refused.sum()))
        if first is not None:
            self.state.expire(first)
        fired = [] if watermark is None else self._fire(watermark)
        return [out, *fired, *self._fire_processing()]

    def _fire_round(self, field: str, upto: int,
                    fire: Callable[[pa.Array, np.ndarray, StateBlock], pa.RecordBatch]
                    ) -> tuple[pa.RecordBatch, pa.Array, np.ndarray] | None:
        """The timers of ``field`` at or before ``upto`` fire through ``fire``, in time
        order, each cleared first (firing may set it again). Returns the output, and the keys
        whose timer firing set again at or before the time that fired (``None``: no timer
        was due)."""
        keys, times = self.state.due(field, upto)
        if not len(keys):
            return None
        order = np.argsort(times, kind="stable")
        keys, times = keys.take(pa.array(order)), times[order]
        block = self.state.acquire(keys)
        timers = block.arrays[field]
        timers[block.slots] = NO_TIMER
        out = fire(keys, times, block)
        again = timers[block.slots] <= times
        self.state.release(block)
        return out, keys, again

    def _fire_processing(self) -> list[pa.RecordBatch]:
        """Fire the processing-time timers the function's clock has reached, once (a timer
        set again to a time already reached waits for the next batch)."""
        if not self.processing:
            return []
        fired = self._fire_round(PTIMER_FIELD, self.function.clock(),
                                 self.function.on_processing_timer)
        return [] if fired is None else [fired[0]]

    def _fire(self, upto: int, rounds: int | None = None) -> list[pa.RecordBatch]:
        """Fire every timer at or before ``upto``, in time order; again for timers that
        firing set and that are due too (at most ``rounds`` times; ``None``: until none
        is due)."""
        out = []
        while rounds is None or rounds > 0:
            rounds = None if rounds is None else rounds - 1
            fired = self._fire_round(TIMER_FIELD, upto, self.function.on_timer)
            if fired is None:
                return out
            batch, keys, again = fired
            out.append(batch)
            if again.any():
                key = keys[int(np.flatnonzero(again)[0])].as_py()
                raise ValueError(f"{self.function.name}: on_timer set the timer of key {key!r} "
                                 f"to a time not later than the one that fired; set it later, "
                                 f"or to NO_TIMER to clear it")
        return out

    def finish(self) -> list[pa.RecordBatch]:
        """Fire the timers still set, once (the input is over: the watermark passes them
        all; a timer set again while they fire, e.g. a periodic one, would fire forever, so
        it is dropped), and report the state held at the end (keys and bytes)."""
        out = []
        if self.timers:
            out = self._fire(NO_TIMER - 1, rounds=1)
            left, _ = self.state.due(TIMER_FIELD, NO_TIMER - 1)
            if len(left):
                log.info("%s: %d timer(s) set while the last ones fired are dropped at the "
                         "end of the input", self.function.name, len(left))
        self.metrics.state_bytes = self.state.nbytes
        self.metrics.state_keys = len(self.state)
        return out

    def state_size(self) -> tuple[int, int]:
        """Keys and bytes held now (what :meth:`finish` reports at the end)."""
        return len(self.state), self.state.nbytes

    def snapshot(self) -> bytes:
        """The keyed state, as the backend's Arrow IPC snapshot."""
        return self.state.snapshot()

    def restore(self, state: bytes) -> None:
        """Replace all keyed state by a :meth:`snapshot` (the store's earlier content too)."""
        try:
            self.state.restore(state)
        except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise SnapshotError(f"keyed state is damaged: {exc}") from None
