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

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pyarrow as pa

from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.fused import FusedOp
from sabot_lab.ops.lookup import Lookup
from sabot_lab.ops.sources import ScanFilterOp
from sabot_lab.plan.nodes import Enrich

__all__ = ["EnrichOp", "FilterEnrichOp", "build_lookup", "cached_index",
           "fuse_scan_filter_into_enrich"]

T = TypeVar("T")


_INDEXES: OrderedDict[tuple, tuple[pa.Table, object]] = OrderedDict()
_INDEXES_LOCK = threading.Lock()
_INDEXES_KEPT = 8


def cached_index(data: pa.Table, key: tuple, build: Callable[[], T]) -> T:
    """``build()``, or the index built for ``data`` and ``key`` before in this process.

    Indexes are kept for the last few reference tables (keyed by the table object, which the
    cache keeps alive), so repeated runs, and every partition a Dask worker runs, reuse one
    index instead of rebuilding it.
    """
    key = (id(data), *key)
    with _INDEXES_LOCK:
        if key in _INDEXES:
            _INDEXES.move_to_end(key)
            return _INDEXES[key][1]
    index = build()
    with _INDEXES_LOCK:
        _INDEXES[key] = (data, index)
        while len(_INDEXES) > _INDEXES_KEPT:
            _INDEXES.popitem(last=False)
    return index


def build_lookup(node: Enrich) -> Lookup:
    """The lookup index for ``node``, built once per reference table and process."""
    ref_keys = tuple(r for _, r in node.on)
    data = node.reference.data
    return cached_index(data, ("lookup", ref_keys, node.reference.unique),
                        lambda: Lookup.build(data, list(ref_keys), unique=node.reference.unique))


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
        self.schema = node.schema
        self.ref_fields = list(self.schema)[len(node.child.schema):]
        if lookup is not None or hasattr(node.reference, "data"):
            self.lookup = lookup if lookup is not None else build_lookup(node)
            self.ref_columns = self._reference_columns(node.reference.data)
        self.keys = [s for s, _ in node.on]
        if node.unmatched_side_output:  # present, possibly empty, whenever it was asked for
            side_outputs.declare("unmatched", node.child.schema.append(
                pa.field("reason", pa.string())))

    def _reference_columns(self, data: pa.Table) -> list[pa.Array]:
        """Per reference column of the output, the array to take from. Text columns the
        output wants dictionary-encoded are encoded once here (a unique dictionary, as Arrow
        kernels and pandas expect); per batch only their int32 codes are taken."""
        ref = data.select(list(self.node.columns))
        columns = []
        for i, field in enumerate(self.ref_fields):
            array = ref.column(i).combine_chunks()
            if pa.types.is_dictionary(field.type) and not pa.types.is_dictionary(array.type):
                array = array.dictionary_encode()
            columns.append(array)
        return columns

    def _assemble(self, batch: pa.RecordBatch, ref_rows: np.ndarray,
                  missing: np.ndarray | None = None) -> pa.RecordBatch:
        """Stream columns plus reference columns at ``ref_rows`` (null where ``missing``)."""
        columns = list(batch.columns)
        if self.ref_columns:
            indices = pa.array(ref_rows.astype(np.int32), mask=missing)
            columns += [array.take(indices) for array in self.ref_columns]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _side_output_unmatched(self, batch: pa.RecordBatch, matched: np.ndarray,
                               reasons: np.ndarray | str) -> None:
        missing = batch.filter(pa.array(~matched))
        null_key = np.zeros(missing.num_rows, dtype=np.bool_)
        for k in self.keys:
            null_key |= missing.column(k).is_null().to_numpy(zero_copy_only=False)
        reason = np.where(null_key, "null key", reasons)
        self.side_outputs.emit("unmatched", missing.append_column("reason", pa.array(reason)))

    def _leave(self, batch: pa.RecordBatch, matched: np.ndarray,
               reasons: np.ndarray | str = "no matching reference key") -> None:
        """Account for inner-join rows without a match (and side-output them if asked, with
        ``reasons``: one for all, or one per unmatched row; a null key is its own)."""
        lost = batch.num_rows - int(matched.sum())
        if not lost:
            return
        if self.node.unmatched_side_output:
            self._side_output_unmatched(batch, matched, reasons)
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
        positions = np.flatnonzero(matched)
        return [self._assemble(batch.take(positions), found[positions])]

    def _expand(self, batch: pa.RecordBatch, groups: np.ndarray, matched: np.ndarray
                ) -> pa.RecordBatch:
        """One-to-many: repeat each stream row once per matching reference row."""
        safe = np.where(matched, groups, 0)
        if not len(self.lookup.group_count):  # no reference row has a key: nothing matches
            counts = np.zeros(batch.num_rows, dtype=np.int64)
        else:
            counts = np.where(matched, self.lookup.group_count[safe], 0)
        if self.node.how == "left":
            counts = np.maximum(counts, 1)
        else:
            self._leave(batch, matched)
        stream_rows = np.repeat(np.arange(batch.num_rows), counts)
        first = np.repeat(self.lookup.group_start[safe] if len(self.lookup.group_start)
                          else np.zeros(batch.num_rows, dtype=np.int64), counts)
        offset = np.arange(len(stream_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        has_ref = np.repeat(matched, counts)
        ref_rows = np.zeros(len(stream_rows), dtype=np.int64)
        ref_rows[has_ref] = self.lookup.group_rows[(first + offset)[has_ref]]
        kept = int(np.count_nonzero(counts))
        self.metrics.add(rows_expanded=len(stream_rows) - kept)
        return self._assemble(batch.take(stream_rows), ref_rows, ~has_ref)


class FilterEnrichOp(Operator):
    """A source's pushed-down filter and an inner enrich in one pass (late materialization).

    The predicate mask and the key lookup are computed on the scanned batch; the columns are
    filtered once, by ``predicate & matched``, instead of once per operator. The source and the
    enrich keep their own metrics, exactly as if they had run one after the other.
    """

    def __init__(self, scan_filter: Operator, enrich: EnrichOp) -> None:
        super().__init__(enrich.node, OperatorMetrics("", "scan filter + enrich"),
                         enrich.side_outputs)
        self.source = scan_filter.node
        self.source_metrics = scan_filter.metrics
        self.enrich = enrich
        needed = set(self.source.columns or self.source.schema.names)
        needed |= self.source.predicate.columns
        self.needed = [n for n in self.source.scan.schema.names if n in needed]

    @staticmethod
    def applies(scan_filter: Operator, op: Operator) -> bool:
        """Whether ``op`` is an enrich that this fusion can run right after ``scan_filter``."""
        return (type(op) is EnrichOp and op.node.how == "inner" and op.lookup.unique
                and not op.node.unmatched_side_output
                and scan_filter.node.predicate is not None)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        start = time.perf_counter()
        narrowed = batch.select(self.needed)
        mask = self.source.predicate.evaluate(narrowed)
        if isinstance(mask, pa.Scalar):  # a constant predicate
            mask = pa.array(np.full(batch.num_rows, bool(mask.as_py())))
        if mask.null_count:
            mask = mask.fill_null(False)
        passed = mask.true_count
        keys = [narrowed.column(k) for k in self.enrich.keys]
        positions, found, null_keys = self.enrich.lookup.select(keys, mask)
        middle = time.perf_counter()
        kept = len(positions)
        out = narrowed if kept == batch.num_rows else narrowed.take(positions)
        if self.source.columns is not None:
            out = out.select(list(self.source.columns))
        out = self.enrich._assemble(out, found)
        end = time.perf_counter()
        self.source_metrics.add(rows_in=batch.num_rows, rows_out=passed,
                                rows_filtered=batch.num_rows - passed, batches_in=1,
                                batches_out=1, seconds=middle - start)
        self.enrich.metrics.add(rows_in=passed, rows_out=kept, rows_filtered=passed - kept,
                                unmatched=passed - kept, null_keys=null_keys, batches_in=1,
                                batches_out=1, seconds=end - middle)
        return [out]


def fuse_scan_filter_into_enrich(chain: list[Operator]) -> list[Operator]:
    """Replace ``[scan filter, inner enrich, …]`` by ``[FilterEnrichOp, …]`` where it applies
    (also when the enrich is the first stage of a fused stage)."""
    if len(chain) < 2 or not isinstance(chain[0], ScanFilterOp):
        return chain
    first, second = chain[0], chain[1]
    if FilterEnrichOp.applies(first, second):
        return [FilterEnrichOp(first, second), *chain[2:]]
    if isinstance(second, FusedOp) and FilterEnrichOp.applies(first, second.stages[0]):
        combined = FusedOp(second.node, [FilterEnrichOp(first, second.stages[0]),
                                         *second.stages[1:]], second.side_outputs)
        return [combined, *chain[2:]]
    return chain
