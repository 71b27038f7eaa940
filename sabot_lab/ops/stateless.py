"""Stateless operators: filter, project, user batch functions.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab.expr import col
>>> from sabot_lab.ops.base import OperatorMetrics, SideOutputs
>>> from sabot_lab.ops.sources import TableScan
>>> from sabot_lab.plan.nodes import Filter, Source
>>> node = Filter(Source(TableScan(pa.table({"a": [1, 2, None]}))), col("a") > 1)
>>> op = FilterOp(node, OperatorMetrics("1:filter", node.label), SideOutputs())
>>> op.process(pa.record_batch({"a": [1, 2, None]}))[0].to_pydict()
{'a': [2]}
>>> op.metrics.rows_filtered
2
"""

from __future__ import annotations

import pyarrow as pa

from sabot_lab.errors import SchemaMismatchError
from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.batches import describe_schema_difference, table_batches
from sabot_lab.plan.nodes import Filter, MapBatches, Project

__all__ = ["FilterOp", "MapBatchesOp", "ProjectOp"]


class FilterOp(Operator):
    """Keeps rows where the predicate is true; null and false rows are counted as filtered."""

    node: Filter

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        mask = self.node.predicate.evaluate(batch)
        if isinstance(mask, pa.Scalar):
            out = batch if mask.as_py() else batch.slice(0, 0)
        else:
            out = batch.filter(mask, null_selection_behavior="drop")
        self.metrics.add(rows_filtered=batch.num_rows - out.num_rows)
        return [out]


class ProjectOp(Operator):
    """Computes the output columns; constants are broadcast to the batch length."""

    node: Project

    def __init__(self, node: Project, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        super().__init__(node, metrics, side_outputs)
        self.schema = self.node.schema

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        arrays = []
        for (_, expr), field in zip(self.node.exprs, self.schema, strict=True):
            value = expr.evaluate(batch)
            if isinstance(value, pa.Scalar):
                value = pa.repeat(value, batch.num_rows)
            if isinstance(value, pa.ChunkedArray):
                value = value.combine_chunks()
            arrays.append(value.cast(field.type) if value.type != field.type else value)
        return [pa.RecordBatch.from_arrays(arrays, schema=self.schema)]


class MapBatchesOp(Operator):
    """Calls a vectorized user function per batch and checks the declared output schema."""

    node: MapBatches

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        out = self.node.fn(batch)
        if not isinstance(out, pa.RecordBatch | pa.Table):
            raise TypeError(
                f"{self.node.label}: the function must return a pyarrow RecordBatch or Table, "
                f"got {type(out).__name__}"
            )
        if not out.schema.equals(self.node.output_schema):
            difference = describe_schema_difference(self.node.output_schema, out.schema)
            raise SchemaMismatchError(
                f"{self.node.label}: the function returned a batch that does not match the "
                f"declared schema: {difference}. Fix the function or the schema= argument."
            )
        delta = batch.num_rows - out.num_rows
        if delta > 0:
            self.metrics.add(rows_filtered=delta)
        else:
            self.metrics.add(rows_expanded=-delta)
        # A table may span several chunks (each column chunked its own way): all of them.
        return table_batches(out) if isinstance(out, pa.Table) else [out]
