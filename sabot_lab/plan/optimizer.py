"""PlanOptimizer: applies rewrite rules to a JobGraph until nothing changes.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> stream = (sl.Stream.from_table(pa.table({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}))
...           .select("a", "b", twice=sl.col("b") * 2)
...           .filter(sl.col("twice") > 9))
>>> optimizer = PlanOptimizer()
>>> print(optimizer.optimize(stream.graph()).explain())
Sink[collect]
└─ Project[a, b, twice=(col('b') * 2)]
   └─ Source[table 3 rows filter=((col('b') * 2) > 9) columns=['a', 'b']]
>>> stats = optimizer.get_stats()
>>> stats.total_optimizations()
3
>>> stats.counts()
{'push_filter_below_project': 1, 'prune_unused_columns': 1, 'push_filter_into_source': 1}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import Node
from sabot_lab.plan.rules import DEFAULT_RULES, PHYSICAL_RULES, Rule

__all__ = ["OptimizerStats", "PlanOptimizer", "Rewrite"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rewrite:
    """One rule firing: which rule, the operators it replaced and what replaced them."""

    rule: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.before}  =>  {self.after}"


@dataclass
class OptimizerStats:
    """What the last :meth:`PlanOptimizer.optimize` call did."""

    rewrites: list[Rewrite] = field(default_factory=list)
    passes: int = 0

    def counts(self) -> dict[str, int]:
        """How often each rule fired, in order of first firing."""
        out: dict[str, int] = {}
        for r in self.rewrites:
            out[r.rule] = out.get(r.rule, 0) + 1
        return out

    def total_optimizations(self) -> int:
        """How many rewrites were applied in all."""
        return len(self.rewrites)

    def __repr__(self) -> str:
        lines = [f"OptimizerStats({self.total_optimizations()} rewrites in {self.passes} passes)"]
        lines += [f"  {r}" for r in self.rewrites]
        return "\n".join(lines)


def _labels(node: Node) -> list[str]:
    out = [node.label]
    for stage in getattr(node, "stages", ()):
        out.append(stage.label)
    for child in node.children:
        out += _labels(child)
    return out


def _change(before: Node, after: Node) -> tuple[str, str]:
    """The operators a rewrite removed and the ones it produced (unchanged ones left out)."""
    old, new = _labels(before), _labels(after)
    removed = [label for label in old if label not in new]
    added = [label for label in new if label not in old]
    return "; ".join(removed) or "-", "; ".join(added) or "-"


class PlanOptimizer:
    """Rewrites a plan with ``rules`` to a fixpoint; never changes the rows it produces.

    Parameters
    ----------
    rules
        Functions ``rule(node) -> node | None`` (see :mod:`sabot_lab.plan.rules`), tried in
        order at every node, bottom-up, until a whole pass changes nothing.
    physical_rules
        Rules applied the same way afterwards, to map the plan onto physical stages
        (fusion). Pass ``()`` to see the logical plan only.
    max_passes
        A safety bound; reaching it means two rules undo each other (a bug), and raises.
    """

    def __init__(
        self,
        rules: Sequence[Rule] = DEFAULT_RULES,
        physical_rules: Sequence[Rule] = PHYSICAL_RULES,
        max_passes: int = 50,
    ) -> None:
        self.rules = tuple(rules)
        self.physical_rules = tuple(physical_rules)
        self.max_passes = max_passes
        self._stats = OptimizerStats()

    def __repr__(self) -> str:
        """The rules, in the order they are tried.

        >>> PlanOptimizer(physical_rules=())  # doctest: +ELLIPSIS
        PlanOptimizer(rules=[drop_true_filter, ...], physical_rules=[])
        """
        def names(rules: tuple[Rule, ...]) -> str:
            return ", ".join(getattr(r, "__name__", repr(r)) for r in rules)

        return (f"PlanOptimizer(rules=[{names(self.rules)}], "
                f"physical_rules=[{names(self.physical_rules)}])")

    def get_stats(self) -> OptimizerStats:
        """Statistics of the last :meth:`optimize` call."""
        return self._stats

    def explain_rewrites(self) -> str:
        """The rewrites of the last call, one per line."""
        return "\n".join(str(r) for r in self._stats.rewrites) or "no rewrites"

    def optimize(self, graph: JobGraph) -> JobGraph:
        """Return an equivalent, cheaper plan (the input graph is not modified)."""
        self._stats = OptimizerStats()
        root = self._fixpoint(graph.root, self.rules)
        root = self._fixpoint(root, self.physical_rules)
        log.debug("optimizer reached a fixpoint after %d passes", self._stats.passes)
        return JobGraph(root)

    def _fixpoint(self, root: Node, rules: tuple[Rule, ...]) -> Node:
        for _ in range(self.max_passes):
            self._stats.passes += 1
            new_root = self._rewrite(root, rules)
            if new_root is root:
                return root
            root = new_root
        raise RuntimeError(
            f"the optimizer did not converge in {self.max_passes} passes; rules fired: "
            f"{self._stats.counts()}"
        )

    def _rewrite(self, node: Node, rules: tuple[Rule, ...]) -> Node:
        """One bottom-up pass: children first, then every rule once at this node."""
        children = tuple(self._rewrite(c, rules) for c in node.children)
        if any(new is not old for new, old in zip(children, node.children, strict=True)):
            node = node.with_children(children)
        for rule in rules:
            new = rule(node)
            if new is not None and new is not node:
                self._stats.rewrites.append(Rewrite(rule.__name__, *_change(node, new)))
                node = new
        return node
