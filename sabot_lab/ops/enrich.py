"""The enrichment operator: a lookup join of each batch against a reference table.

Per batch: compute the reference row of every stream row with :class:`Lookup` (built once per
job), then ``take`` the reference columns. Inner joins drop (or side-output) rows without a
match; left joins keep them with nulls. A one-to-many reference repeats the stream row once
per match.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab import Table
>>> from sabot_lab.ops.base import OperatorMetrics, SideOutputs
>>> from sabot_lab.ops.sources import TableScan
>>> from sabot_lab.plan.nodes import Enrich, Source
>>> stream = pa.table({"id": [1, 2, 3, None]})
>>> ref = Table(pa.table({"id": [1, 2], "name": ["a", "b"]}), key="id")
>>> node = Enrich(Source(TableScan(stream)), ref, (("id", "id"),), "inner", ("name",))
>>> op = EnrichOp(node, OperatorMetrics("1:enrich", node.label), SideOutputs())
>>> op.process(stream.to_batches()[0])[0].to_pydict()
{'id': [1, 2], 'name': ['a', 'b']}
>>> op.metrics.unmatched, op.metrics.null_keys, op.metrics.rows_filtered
(2, 1, 2)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.lookup import Lookup
from sabot_lab.plan.nodes import Enrich

__all__ = ["EnrichOp", "build_lookup"]


def build_lookup(node: Enrich) -> Lookup:
    """The lookup index for ``node`` (build once per job and share across threads)."""
    ref_keys = [r for _, r in node.on]
    return Lookup.build(node.reference.data, ref_keys, unique=node.reference.unique)


class EnrichOp(Operator):
    """Executes an :class:`~sabot_lab.plan.nodes.Enrich` node."""

    node: Enrich

    def __init__(
        self,
        node: Enrich,
        metrics: OperatorMetrics,
        side_outputs: SideOutputs,
        lookup: Lookup | None = None,
    ) -> None:
        super().__init__(node, metrics, side_outputs)
        self.lookup = lookup if lookup is not None else build_lookup(node)
        self.schema = node.schema
        ref = node.reference.data.select(list(node.columns))
        self.ref_fields = list(self.schema)[len(node.child.schema):]
        # Per reference column: the array to take from. Text columns the output wants
        # dictionary-encoded are encoded once here (a unique dictionary, as Arrow kernels and
        # pandas expect); per batch only their int32 codes are taken.
        self.ref_columns = []
        for i, field in enumerate(self.ref_fields):
            array = ref.column(i).combine_chunks()
            if pa.types.is_dictionary(field.type) and not pa.types.is_dictionary(array.type):
                array = array.dictionary_encode()
            self.ref_columns.append(array)
        self.keys = [s for s, _ in node.on]

    def _assemble(self, batch: pa.RecordBatch, ref_rows: np.ndarray,
                  missing: np.ndarray | None = None) -> pa.RecordBatch:
        """Stream columns plus reference columns at ``ref_rows`` (null where ``missing``)."""
        columns = list(batch.columns)
        if self.ref_columns:
            indices = pa.array(ref_rows.astype(np.int32), mask=missing)
            columns += [array.take(indices) for array in self.ref_columns]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _side_output_unmatched(self, batch: pa.RecordBatch, matched: np.ndarray) -> None:
        missing = batch.filter(pa.array(~matched))
        null_key = np.zeros(missing.num_rows, dtype=np.bool_)
        for k in self.keys:
            null_key |= missing.column(k).is_null().to_numpy(zero_copy_only=False)
        reason = np.where(null_key, "null key", "no matching reference key")
        self.side_outputs.emit("unmatched", missing.append_column("reason", pa.array(reason)))

    def _leave(self, batch: pa.RecordBatch, matched: np.ndarray) -> None:
        """Account for inner-join rows without a match (and side-output them if asked)."""
        lost = batch.num_rows - int(matched.sum())
        if not lost:
            return
        if self.node.unmatched_side_output:
            self._side_output_unmatched(batch, matched)
            self.metrics.add(rows_side_output=lost)
        else:
            self.metrics.add(rows_filtered=lost)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        found, nulls = self.lookup.rows([batch.column(k) for k in self.keys])
        matched = found >= 0
        self.metrics.add(null_keys=nulls, unmatched=batch.num_rows - int(matched.sum()))
        if not self.lookup.unique:
            return [self._expand(batch, found, matched)]
        if self.node.how == "left":
            return [self._assemble(batch, np.where(matched, found, 0), ~matched)]
        self._leave(batch, matched)
        if matched.all():
            return [self._assemble(batch, found)]
        return [self._assemble(batch.filter(pa.array(matched)), found[matched])]

    def _expand(self, batch: pa.RecordBatch, groups: np.ndarray, matched: np.ndarray
                ) -> pa.RecordBatch:
        """One-to-many: repeat each stream row once per matching reference row."""
        safe = np.where(matched, groups, 0)
        counts = np.where(matched, self.lookup.group_count[safe], 0)
        if self.node.how == "left":
            counts = np.maximum(counts, 1)
        else:
            self._leave(batch, matched)
        stream_rows = np.repeat(np.arange(batch.num_rows), counts)
        first = np.repeat(self.lookup.group_start[safe], counts)
        offset = np.arange(len(stream_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        has_ref = np.repeat(matched, counts)
        ref_rows = np.zeros(len(stream_rows), dtype=np.int64)
        ref_rows[has_ref] = self.lookup.group_rows[(first + offset)[has_ref]]
        kept = int(np.count_nonzero(counts))
        self.metrics.add(rows_expanded=len(stream_rows) - kept)
        return self._assemble(batch.take(stream_rows), ref_rows, ~has_ref)
