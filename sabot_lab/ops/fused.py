"""A fused stage: several stateless operators run on each batch in one pass.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> stream = sl.Stream.from_table(pa.table({"a": [1, 2, 3]})).map_batches(lambda b: b).filter(
...     sl.col("a") > 1).with_columns(b=sl.col("a") * 10)
>>> result = stream.run()
>>> print(result.explain())
Sink[collect]  (in=2 out=2 ... ms)
└─ Fused[MapBatches → Filter → Project]  (in=3 out=2 ... ms)
   │  · Project[a, b=(col('a') * 10)]  (in=2 out=2 ... ms)
   │  · Filter[(col('a') > 1)]  (in=3 out=2 ... ms)
   │  · MapBatches[<lambda>]  (in=3 out=3 ... ms)
   └─ Source[table 3 rows]  (in=3 out=3 ... ms)
"""

from __future__ import annotations

import pyarrow as pa

from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs, finish_counted, run_chain
from sabot_lab.plan.nodes import Fused

__all__ = ["FusedOp"]


class FusedOp(Operator):
    """Runs the operators of a :class:`~sabot_lab.plan.nodes.Fused` node back to back.

    Each inner operator keeps its own metrics; this operator's own counters are not reported.
    """

    def __init__(self, node: Fused, stages: list[Operator], side_outputs: SideOutputs) -> None:
        super().__init__(node, OperatorMetrics("", node.label), side_outputs)
        self.stages = stages
        self.parallel_safe = all(op.parallel_safe for op in stages)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        return run_chain(self.stages, [batch])

    def finish(self) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        for i, op in enumerate(self.stages):
            out.extend(run_chain(self.stages[i + 1:], finish_counted(op)))
        return out
