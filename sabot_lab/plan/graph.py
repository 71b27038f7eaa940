"""JobGraph: a validated logical plan (a DAG of nodes ending in one sink).

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab.expr import col
>>> from sabot_lab.ops.sinks import CollectSink
>>> from sabot_lab.ops.sources import TableScan
>>> from sabot_lab.plan.nodes import Filter, Sink, Source
>>> graph = JobGraph(Sink(Filter(Source(TableScan(pa.table({"a": [1, 2]}))), col("a") > 1),
...                       CollectSink()))
>>> print(graph.explain())
Sink[collect]
└─ Filter[(col('a') > 1)]
   └─ Source[table 2 rows]
>>> [type(n).__name__ for n in graph.nodes]
['Source', 'Filter', 'Sink']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from sabot_lab.plan.nodes import Fused, Node
from sabot_lab.plan.picture import plan_svg

__all__ = ["JobGraph"]


def _format_schema(schema: pa.Schema, limit: int = 8) -> str:
    parts = [f"{f.name}: {f.type}" for f in schema]
    if len(parts) > limit:
        parts = [*parts[:limit], f"… +{len(parts) - limit} more"]
    return ", ".join(parts)


class JobGraph:
    """A logical plan rooted at ``root``; validates every node's schema on construction.

    Parameters
    ----------
    root
        The final node (normally a :class:`~sabot_lab.plan.nodes.Sink`).
    """

    def __init__(
        self,
        root: Node,
        notes: Mapping[int, str] | None = None,
        edge_labels: Mapping[int, str] | None = None,
    ) -> None:
        self.root = root
        self.nodes: tuple[Node, ...] = tuple(self._topological())
        for node in self.nodes:
            node.schema  # noqa: B018 - inference raises PlanError on an invalid plan
        self.notes: Mapping[int, str] = notes or {}
        self.edge_labels: Mapping[int, str] = edge_labels or {}

    def annotated(self, notes: Mapping[int, str], edge_labels: Mapping[int, str]) -> JobGraph:
        """The same plan with a note per node and a label per edge (keyed by ``id(node)``),
        shown by :meth:`explain` and the picture; used for rows and times after a run."""
        return JobGraph(self.root, notes, edge_labels)

    def _topological(self) -> list[Node]:
        order: list[Node] = []
        seen: set[int] = set()

        def visit(node: Node) -> None:
            if id(node) in seen:
                return
            seen.add(id(node))
            for child in node.children:
                visit(child)
            order.append(node)

        visit(self.root)
        return order

    @property
    def schema(self) -> pa.Schema:
        """The output schema of the job."""
        return self.root.schema

    def operators(self) -> tuple[Node, ...]:
        """Every operator that reports metrics: the nodes, with fused stages expanded."""
        out: list[Node] = []
        for n in self.nodes:
            out.extend(n.stages if isinstance(n, Fused) else (n,))
        return tuple(out)

    def node_ids(self) -> dict[int, str]:
        """Stable operator ids (``"<position>:<kind>"``) keyed by ``id(node)``."""
        return {id(n): f"{i}:{type(n).__name__.lower()}" for i, n in enumerate(self.operators())}

    def fingerprint(self) -> dict[str, dict[str, Any]]:
        """Every operator's parameters and inputs by operator id: what a checkpoint of this
        job is bound to (see :mod:`sabot_lab.plan.fingerprint`).

        >>> import pyarrow as pa
        >>> import sabot_lab as sl
        >>> graph = sl.Stream.from_table(pa.table({"a": [1]}), batch_size=5).graph()
        >>> graph.fingerprint()["0:source"]["scan"]["batch_size"]
        5
        """
        ids = self.node_ids()
        for n in self.nodes:
            if isinstance(n, Fused):
                ids[id(n)] = ids[id(n.top)]
        return {ids[id(n)]: {**n.fingerprint(), "inputs": [ids[id(c)] for c in n.children]}
                for n in self.operators()}

    def explain(
        self,
        show_schema: bool = False,
        annotate: Callable[[Node], str] | None = None,
    ) -> str:
        """The plan as an indented tree, root first.

        Parameters
        ----------
        show_schema
            Also print each node's output schema (abbreviated when wide).
        annotate
            Optional function returning extra text for a node (e.g. row counts after a run).
        """
        lines: list[str] = []
        if annotate is None:
            def annotate(node: Node) -> str:
                return self.notes.get(id(node), "")

        def walk(node: Node, prefix: str, child_prefix: str) -> None:
            text = node.label
            extra = annotate(node)
            text += f"  ({extra})" if extra else ""
            lines.append(prefix + text)
            kids = node.children
            inner = child_prefix + ("│  " if kids else "   ")
            if isinstance(node, Fused):
                for stage in reversed(node.stages):
                    extra = annotate(stage)
                    lines.append(f"{inner}· {stage.label}" + (f"  ({extra})" if extra else ""))
            if show_schema:
                lines.append(inner + "schema: " + _format_schema(node.schema))
            for i, kid in enumerate(kids):
                last = i == len(kids) - 1
                walk(kid, child_prefix + ("└─ " if last else "├─ "),
                     child_prefix + ("   " if last else "│  "))

        walk(self.root, "", "")
        return "\n".join(lines)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobGraph) and self.root == other.root

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return self.explain()

    def to_svg(self, title: str | None = None, highlight: Mapping[int, str] | None = None
               ) -> str:
        """The plan as an SVG picture (see :mod:`sabot_lab.plan.picture`)."""
        return plan_svg(self.nodes, self.notes, self.edge_labels, highlight, title)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None
                          ) -> dict[str, str]:
        return {"text/plain": self.explain(), "image/svg+xml": self.to_svg()}
