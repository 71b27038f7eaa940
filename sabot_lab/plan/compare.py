"""Side-by-side plan pictures: what the optimizer moved and pruned, and which rules fired.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> stream = sl.Stream.from_table(pa.table({"a": [1, 2], "b": [3, 4]})).select("a").filter(
...     sl.col("a") > 1)
>>> comparison = compare_plans(stream)
>>> print(comparison)
before:
Sink[collect]
└─ Filter[(col('a') > 1)]
   └─ Project[a]
      └─ Source[table 2 rows]
after:
Sink[collect]
└─ Source[table 2 rows filter=(col('a') > 1) columns=['a']]
rules fired: push_filter_below_project, prune_unused_columns, ...
>>> comparison.highlights_after()
{'Source': 'pushed'}
"""

from __future__ import annotations

from html import escape

from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import Enrich, Filter, Fused, Source
from sabot_lab.plan.optimizer import PlanOptimizer, Rewrite
from sabot_lab.plan.picture import HIGHLIGHTS

__all__ = ["PlanComparison", "compare_plans"]


class PlanComparison:
    """Two plans and the rewrites between them; displays as two pictures side by side."""

    def __init__(self, before: JobGraph, after: JobGraph, rewrites: list[Rewrite]) -> None:
        self.before = before
        self.after = after
        self.rewrites = rewrites

    def _filter_keys(self, graph: JobGraph) -> set[tuple]:
        return {n.predicate.key() for n in graph.operators() if isinstance(n, Filter)}

    def _before_marks(self) -> dict[int, str]:
        kept = self._filter_keys(self.after)
        return {id(n): "moved" for n in self.before.operators()
                if isinstance(n, Filter) and n.predicate.key() not in kept}

    def _after_marks(self) -> dict[int, str]:
        before_filters = self._filter_keys(self.before)
        before_enrich = {n.on: n for n in self.before.operators() if isinstance(n, Enrich)}
        marks = {}
        fused_of = {id(s): n for n in self.after.nodes if isinstance(n, Fused) for s in n.stages}
        for n in self.after.operators():
            if isinstance(n, Source) and n.predicate is not None:
                marks[id(n)] = "pushed"
            elif isinstance(n, Source) and n.columns is not None:
                marks[id(n)] = "pruned"
            elif isinstance(n, Filter) and n.predicate.key() not in before_filters:
                marks[id(n)] = "pushed"
            elif isinstance(n, Enrich) and n.on in before_enrich:
                old = before_enrich[n.on]
                if n.reference is not old.reference:
                    marks[id(n)] = "pushed"
                elif len(n.columns) < len(old.columns):
                    marks[id(n)] = "pruned"
        for key in list(marks):  # a fused stage colours the fused box it lives in
            if key in fused_of:
                marks.setdefault(id(fused_of[key]), marks[key])
        return marks

    def highlights_after(self) -> dict[str, str]:
        """Highlighted nodes of the optimized plan, by node kind."""
        by_id = {id(n): type(n).__name__ for n in (*self.after.nodes, *self.after.operators())}
        return {by_id[k]: v for k, v in self._after_marks().items()}

    def rules_fired(self) -> list[str]:
        """Names of the rules that fired, in order of first firing."""
        return list(dict.fromkeys(r.rule for r in self.rewrites))

    def __repr__(self) -> str:
        return (f"before:\n{self.before.explain()}\nafter:\n{self.after.explain()}\n"
                f"rules fired: {', '.join(self.rules_fired()) or 'none'}")

    def _repr_html_(self) -> str:
        left = self.before.to_svg("before", self._before_marks())
        right = self.after.to_svg("after optimization", self._after_marks())
        legend = " ".join(
            f'<span style="background:{HIGHLIGHTS[k]};border:1px solid #999;padding:0 6px">'
            f"{k}</span>" for k in ("moved", "pushed", "pruned"))
        rewrites = "".join(f"<li><code>{escape(str(r))}</code></li>" for r in self.rewrites)
        return (
            '<div style="display:flex;gap:24px;align-items:flex-start;overflow-x:auto">'
            f"<div>{left}</div><div>{right}</div></div>"
            f"<p>{legend}</p><p><b>Rules fired</b></p><ol>{rewrites or '<li>none</li>'}</ol>"
        )


def compare_plans(before: object, after: JobGraph | None = None) -> PlanComparison:
    """Compare a plan with its optimized form (or with ``after``, if given).

    Parameters
    ----------
    before
        A :class:`~sabot_lab.stream.Stream` or a :class:`~sabot_lab.plan.graph.JobGraph`.
    after
        The plan to compare with; default: ``before`` optimized by the default optimizer,
        whose rewrites are then listed.
    """
    graph = before.graph() if hasattr(before, "graph") else before
    if after is not None:
        return PlanComparison(graph, after, [])
    optimizer = PlanOptimizer()
    optimized = optimizer.optimize(graph)
    return PlanComparison(graph, optimized, optimizer.get_stats().rewrites)
