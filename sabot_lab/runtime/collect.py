"""A run's :class:`~sabot_lab.result.Result`, assembled in one place for every runner."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics
from sabot_lab.plan.graph import JobGraph
from sabot_lab.result import Result

__all__ = ["collect_result", "empty_metrics"]


def empty_metrics(graph: JobGraph) -> dict[str, OperatorMetrics]:
    """Zeroed metrics for every operator of ``graph``, by operator id."""
    ids = graph.node_ids()
    return {ids[id(n)]: OperatorMetrics(ids[id(n)], n.label) for n in graph.operators()}


def collect_result(graph: JobGraph, runner: str, started: float, table: pa.Table | None,
                   side_outputs: Mapping[str, Sequence[pa.Table]],
                   metrics: Mapping[str, OperatorMetrics], **details: object) -> Result:
    """The result of running ``graph`` on ``runner`` since ``started`` (a
    ``time.perf_counter()``): the output, each side output's parts concatenated in order,
    and the metrics of every operator (by operator id) in the plan's order; ``details`` are
    further :class:`~sabot_lab.result.Result` fields.

    >>> import sabot_lab as sl
    >>> graph = sl.Stream.from_table(pa.table({"a": [1]})).graph()
    >>> result = collect_result(graph, "local", time.perf_counter(), pa.table({"a": [1]}),
    ...                         {"late": []}, empty_metrics(graph))
    >>> [m.op_id for m in result.operator_metrics], result.side_outputs
    (['0:source', '1:sink'], {})
    """
    ids = graph.node_ids()
    return Result(
        table=table,
        side_outputs={name: pa.concat_tables(parts) for name, parts in sorted(
            side_outputs.items()) if parts},
        operator_metrics=[metrics[ids[id(n)]] for n in graph.operators()],
        execution_time_ms=(time.perf_counter() - started) * 1000,
        executed_plan=graph,
        runner=runner,
        **details,
    )
