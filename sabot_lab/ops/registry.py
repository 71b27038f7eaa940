"""Which physical operator runs each kind of plan node: the one table runners read.

A new operator is a node class (its parameters, schema and traits), an
:class:`~sabot_lab.ops.base.Operator` subclass, and one line here.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab.expr import col
>>> from sabot_lab.ops.base import OperatorMetrics, SideOutputs
>>> from sabot_lab.ops.sources import TableScan
>>> from sabot_lab.plan.nodes import Filter, Source
>>> node = Filter(Source(TableScan(pa.table({"a": [1, 2]}))), col("a") > 1)
>>> type(make_operator(node, OperatorMetrics("1:filter", node.label), SideOutputs())).__name__
'FilterOp'
"""

from __future__ import annotations

from collections.abc import Callable

from sabot_lab.ops.asof import AsOfEnrichOp, StreamAsOfEnrichOp
from sabot_lab.ops.base import Operator, OperatorMetrics, SideOutputs
from sabot_lab.ops.enrich import EnrichOp
from sabot_lab.ops.keyed import KeyedProcessOp
from sabot_lab.ops.stateless import FilterOp, MapBatchesOp, ProjectOp
from sabot_lab.ops.window import SessionWindowOp, TopNOp, WatermarkOp, WindowAggregateOp
from sabot_lab.plan.nodes import (
    AsOfEnrich,
    Enrich,
    Filter,
    KeyedProcess,
    MapBatches,
    Node,
    Project,
    TopN,
    Watermark,
    WindowAggregate,
)
from sabot_lab.reference import VersionFeed

__all__ = ["OPERATORS", "make_operator"]

Factory = Callable[[Node, OperatorMetrics, SideOutputs], Operator]


def _as_of(node: AsOfEnrich, metrics: OperatorMetrics, side_outputs: SideOutputs
           ) -> Operator:
    kind = StreamAsOfEnrichOp if isinstance(node.reference, VersionFeed) else AsOfEnrichOp
    return kind(node, metrics, side_outputs)


def _window(node: WindowAggregate, metrics: OperatorMetrics, side_outputs: SideOutputs
            ) -> Operator:
    kind = SessionWindowOp if node.window.is_session else WindowAggregateOp
    return kind(node, metrics, side_outputs)


#: Plan node class -> what builds its operator (a class, or a function choosing one).
OPERATORS: dict[type[Node], Factory] = {
    Filter: FilterOp,
    Project: ProjectOp,
    MapBatches: MapBatchesOp,
    Enrich: EnrichOp,
    AsOfEnrich: _as_of,
    Watermark: WatermarkOp,
    WindowAggregate: _window,
    TopN: TopNOp,
    KeyedProcess: KeyedProcessOp,
}


def make_operator(node: Node, metrics: OperatorMetrics, side_outputs: SideOutputs) -> Operator:
    """The physical operator of a (non-source, non-sink) plan node."""
    try:
        factory = OPERATORS[type(node)]
    except KeyError:
        raise NotImplementedError(f"no physical operator for {node.label}: add one to "
                                  f"sabot_lab.ops.registry.OPERATORS") from None
    return factory(node, metrics, side_outputs)
