"""What every window operator shares: output and ``late`` schemas, keys, partial aggregates,
the watermark, late rows, and snapshots.

A window operator (:class:`~sabot_lab.ops.window.fixed.WindowAggregateOp` for tumbling and
hopping windows, :class:`~sabot_lab.ops.window.sessions.SessionWindowOp`) gives every group
key a dense id (:class:`~sabot_lab.ops.window.keys.KeyDictionary`) and keeps partial
aggregates per slot (:class:`~sabot_lab.ops.window.aggregates.PartialAggregates`); what a
slot stands for (a window and a key, or a session) is the subclass's business, as are its
extra state (:meth:`WindowOperator.own_state`) and the reason it gives late rows.
"""

from __future__ import annotations

import builtins

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.snapshot import SnapshotReader, pack
from sabot_lab.ops.window.aggregates import PartialAggregates
from sabot_lab.ops.window.aggregates import warm_up as warm_up_aggregates
from sabot_lab.ops.window.keys import KeyDictionary
from sabot_lab.ops.window.keys import warm_up as warm_up_keys
from sabot_lab.ops.window.watermark import warm_up as warm_up_watermark
from sabot_lab.plan.nodes import NO_WATERMARK, WATERMARK_COLUMN, WindowAggregate
from sabot_lab.plan.windows import to_unit

__all__ = ["WindowOperator", "sort_by_window_and_keys"]


def sort_by_window_and_keys(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Rows ordered by window start, then keys (nulls last); dictionary-encoded keys sort by
    their values.

    >>> k = pa.array(["b", "b", "a"]).dictionary_encode()
    >>> t = pa.table({"window_start": [1, 0, 0], "k": k})
    >>> sort_by_window_and_keys(t, ("k",))["k"].to_pylist()
    ['a', 'b', 'b']
    """
    names = ["window_start", *keys]
    columns = [table[n].cast(table.schema.field(n).type.value_type)
               if pa.types.is_dictionary(table.schema.field(n).type) else table[n]
               for n in names]
    order = pc.sort_indices(pa.table(dict(zip(names, columns, strict=True))),
                            [(n, "ascending", "at_end") for n in names])
    return table.take(order)


class WindowOperator(Operator):
    """Base class of window operators (see the module docstring).

    Parameters
    ----------
    node
        The window aggregation of the plan.
    metrics, side_outputs
        As for every :class:`~sabot_lab.ops.base.Operator`; ``late`` is declared here.
    """

    node: WindowAggregate
    parallel_safe = False
    stateful = True
    #: Names this operator's snapshots: state of one kind never restores into another.
    kind = "window"

    def __init__(self, node: WindowAggregate, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        super().__init__(node, metrics, side_outputs)
        unit = node.time_unit
        self.bound = to_unit(node.out_of_orderness_ns, unit)
        self.schema = node.schema
        self.time_type = self.schema.field("window_start").type
        self.late_type = pa.duration(unit) if pa.types.is_timestamp(self.time_type) \
            else pa.int64()
        child = node.child.schema
        side_outputs.declare("late", pa.schema(
            [f for f in child if f.name != WATERMARK_COLUMN]
            + [pa.field("window_start", self.time_type), pa.field("window_end", self.time_type),
               pa.field("late_by", self.late_type), pa.field("reason", pa.string())]))
        self.keys = KeyDictionary(pa.schema([child.field(k) for k in node.keys]))
        self.partials = PartialAggregates(node.aggs, child)
        self.watermark = NO_WATERMARK
        metrics.aggregates = True
        warm_up_watermark()
        warm_up_aggregates()
        warm_up_keys()

    def advance(self, ts: np.ndarray, wm: np.ndarray) -> int:
        """Move the watermark past a batch with event times ``ts`` and row watermarks ``wm``."""
        self.watermark = builtins.max(self.watermark, int(ts.max()) - self.bound,
                                      int(wm.max()))
        return self.watermark

    def side_output_late(self, batch: pa.RecordBatch, rows: np.ndarray, starts: np.ndarray,
                         ends: np.ndarray, wm: np.ndarray, reason: str) -> None:
        """Send ``rows`` of ``batch`` to ``late``, each with the window it missed (``starts``,
        ``ends``) and by how much the watermark had passed its end."""
        late = batch.take(pa.array(rows)).drop_columns([WATERMARK_COLUMN])
        late = late.append_column("window_start", pa.array(starts).cast(self.time_type))
        late = late.append_column("window_end", pa.array(ends).cast(self.time_type))
        late = late.append_column("late_by", pa.array(wm[rows] - ends).cast(self.late_type))
        late = late.append_column("reason", pc.cast(pa.array([reason] * len(rows)),
                                                    pa.string()))
        self.side_outputs.emit("late", late)
        self.metrics.add(rows_side_output=len(rows))

    # --- snapshots: numeric arrays and JSON (sabot_lab.ops.snapshot), never pickle --------

    def own_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) of what the subclass keeps besides keys, aggregates, watermark."""
        raise NotImplementedError

    def load_own_state(self, reader: SnapshotReader) -> None:
        """Restore :meth:`own_state`, checking it against the keys and slots just loaded."""
        raise NotImplementedError

    def snapshot(self) -> bytes:
        """Key ids, partial aggregates, the watermark and :meth:`own_state`."""
        meta, arrays = self.own_state()
        key_meta, key_arrays = self.keys.save("keys")
        agg_meta, agg_arrays = self.partials.save("aggs")
        return pack(self.kind, {**key_meta, **agg_meta, **meta,
                                "watermark": int(self.watermark)},
                    {**key_arrays, **agg_arrays, **arrays})

    def restore(self, state: bytes) -> None:
        reader = SnapshotReader(state, self.kind)
        self.keys.load(reader, "keys")
        self.partials.load(reader, "aggs")
        self.load_own_state(reader)
        self.watermark = reader.scalar("watermark", int)
