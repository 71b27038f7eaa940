"""Rewrite rules: small named functions ``rule(node) -> node | None``.

A rule looks at one node (and, where it must, the nodes right below it) and returns a
rewritten node, or ``None`` when it does not apply. Rules never change the rows a plan
produces; ``tests/plan/test_rules.py`` checks each one by node equality, and a hypothesis test
runs random plans with and without them.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab.expr import col
>>> from sabot_lab.ops.sources import TableScan
>>> from sabot_lab.plan.nodes import Filter, Source
>>> src = Source(TableScan(pa.table({"a": [1, 2], "b": [3, 4]})))
>>> merge_adjacent_filters(Filter(Filter(src, col("a") > 1), col("b") > 3)) == Filter(
...     src, (col("a") > 1) & (col("b") > 3))
True
>>> push_filter_into_source(Filter(src, col("a") > 1)) == Source(
...     src.scan, predicate=col("a") > 1)
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from sabot_lab.expr import Binary, Column, Expr, Literal, col
from sabot_lab.plan.nodes import (
    AsOfEnrich,
    Enrich,
    Filter,
    Fused,
    Node,
    Project,
    Sink,
    Source,
    Union,
    WindowAggregate,
)

__all__ = [
    "DEFAULT_RULES",
    "PHYSICAL_RULES",
    "Rule",
    "conjoin",
    "conjuncts",
    "drop_true_filter",
    "fuse_stateless_chain",
    "merge_adjacent_filters",
    "merge_adjacent_projections",
    "prune_unused_columns",
    "push_filter_below_enrich",
    "push_filter_below_project",
    "push_filter_below_union",
    "push_filter_into_source",
    "push_key_filter_into_window",
    "remove_identity_projection",
]

Rule = Callable[[Node], Node | None]


def conjuncts(expr: Expr) -> list[Expr]:
    """Split ``a & b & c`` into ``[a, b, c]``.

    >>> conjuncts((col("a") > 1) & (col("b") < 2) & col("c").is_null())
    [(col('a') > 1), (col('b') < 2), col('c').is_null()]
    """
    if isinstance(expr, Binary) and expr.op == "&":
        return conjuncts(expr.left) + conjuncts(expr.right)
    return [expr]


def conjoin(exprs: Iterable[Expr]) -> Expr:
    """Join predicates with ``&`` (the inverse of :func:`conjuncts`).

    >>> conjoin([col("a") > 1, col("b") < 2])
    (col('a') > 1) & (col('b') < 2)
    """
    exprs = list(exprs)
    out = exprs[0]
    for e in exprs[1:]:
        out = out & e
    return out


def _filtered(child: Node, predicates: list[Expr]) -> Node:
    return Filter(child, conjoin(predicates)) if predicates else child


# --- filters -----------------------------------------------------------------------------

def drop_true_filter(node: Node) -> Node | None:
    """``Filter(x, True)`` is ``x``."""
    if isinstance(node, Filter) and isinstance(node.predicate, Literal) and (
        node.predicate.value is True
    ):
        return node.child
    return None


def merge_adjacent_filters(node: Node) -> Node | None:
    """``Filter(Filter(x, a), b)`` is ``Filter(x, a & b)``: one mask, one pass."""
    if isinstance(node, Filter) and isinstance(node.child, Filter):
        return Filter(node.child.child, node.child.predicate & node.predicate)
    return None


def push_filter_below_project(node: Node) -> Node | None:
    """Move a filter below a projection, rewriting renamed and computed columns.

    ``Filter(Project(x, b=a*2), b > 4)`` becomes ``Project(Filter(x, a*2 > 4), b=a*2)``: the
    projection then computes only the rows that survive.
    """
    if not (isinstance(node, Filter) and isinstance(node.child, Project)):
        return None
    project = node.child
    definitions = dict(project.exprs)
    moved = [c.substitute(definitions) for c in conjuncts(node.predicate)]
    return project.with_children((Filter(project.child, conjoin(moved)),))


def push_filter_below_enrich(node: Node) -> Node | None:
    """Move conjuncts below an enrich: those on stream columns to the stream side; those on
    reference columns of an inner join into the reference table (a smaller lookup)."""
    if not (isinstance(node, Filter) and isinstance(node.child, Enrich)):
        return None
    enrich = node.child
    if enrich.unmatched_side_output:
        # Which rows (and columns) reach the side output must not change.
        return None
    stream_columns = set(enrich.child.schema.names)
    reference_names = dict(zip(enrich.output_names, enrich.columns, strict=True))
    # Filtering an as-of join's versions would hand some rows an older version instead.
    into_reference_ok = enrich.how == "inner" and not isinstance(enrich, AsOfEnrich)
    below, into_reference, stay = [], [], []
    for c in conjuncts(node.predicate):
        if c.columns <= stream_columns:
            below.append(c)
        elif into_reference_ok and c.columns <= set(reference_names):
            into_reference.append(c.substitute({o: col(r) for o, r in reference_names.items()}))
        else:
            stay.append(c)
    if not below and not into_reference:
        return None
    reference = enrich.reference
    if into_reference:
        reference = reference.filter(conjoin(into_reference))
    moved = dataclasses.replace(enrich, child=_filtered(enrich.child, below),
                                reference=reference)
    return _filtered(moved, stay)


def push_filter_below_union(node: Node) -> Node | None:
    """``Filter(Union(a, b), p)`` is ``Union(Filter(a, p), Filter(b, p))``."""
    if isinstance(node, Filter) and isinstance(node.child, Union):
        return Union(tuple(Filter(i, node.predicate) for i in node.child.inputs))
    return None


def push_filter_into_source(node: Node) -> Node | None:
    """A filter right above a source becomes the source's scan filter (Parquet skips row
    groups whose statistics exclude it)."""
    if not (isinstance(node, Filter) and isinstance(node.child, Source)):
        return None
    source = node.child
    predicate = node.predicate if source.predicate is None else (
        source.predicate & node.predicate)
    return dataclasses.replace(source, predicate=predicate)


# --- projections -------------------------------------------------------------------------

def push_key_filter_into_window(node: Node) -> Node | None:
    """Conjuncts of a filter above a window that read only its group keys become the
    window's ``key_filter``: rows of other groups are dropped before aggregation instead of
    aggregated and then dropped. They are dropped *after* their lateness is decided, so the
    ``late`` side output does not change, nor the watermark (it is assigned below).

    A global window (no keys), session windows (their operator does not apply a key filter)
    and filters on aggregates stay as they are.
    """
    if not (isinstance(node, Filter) and isinstance(node.child, WindowAggregate)):
        return None
    window = node.child
    keys = set(window.keys)
    if not keys or window.window.is_session:  # session windows: not applied
        return None
    movable = [p for p in conjuncts(node.predicate) if p.columns <= keys]
    if not movable:
        return None
    rest = [p for p in conjuncts(node.predicate) if not p.columns <= keys]
    existing = [] if window.key_filter is None else [window.key_filter]
    return _filtered(dataclasses.replace(window, key_filter=conjoin(existing + movable)), rest)


def _column_uses(exprs: Iterable[Expr]) -> dict[str, int]:
    counts: dict[str, int] = {}

    def visit(e: Expr) -> None:
        if isinstance(e, Column):
            counts[e.name] = counts.get(e.name, 0) + 1
        for c in e.children():
            visit(c)

    for e in exprs:
        visit(e)
    return counts


def merge_adjacent_projections(node: Node) -> Node | None:
    """``Project(Project(x, inner), outer)`` is one projection of ``x``.

    Computed inner columns are inlined only where the outer projection uses them at most
    once, so that nothing is computed twice.
    """
    if not (isinstance(node, Project) and isinstance(node.child, Project)):
        return None
    inner = dict(node.child.exprs)
    uses = _column_uses(e for _, e in node.exprs)
    if any(uses.get(n, 0) > 1 and not isinstance(e, Column) for n, e in inner.items()):
        return None
    return Project(node.child.child,
                   tuple((n, e.substitute(inner)) for n, e in node.exprs))


def remove_identity_projection(node: Node) -> Node | None:
    """A projection that keeps every input column, unchanged and in order, does nothing."""
    if not isinstance(node, Project):
        return None
    names = node.child.schema.names
    identity = len(node.exprs) == len(names) and all(
        isinstance(e, Column) and e.name == n == name
        for (n, e), name in zip(node.exprs, names, strict=True)
    )
    return node.child if identity else None


def _exactly(node: Node, names: list[str]) -> Node:
    """``node``, projected to exactly ``names`` if it has other columns (union inputs)."""
    if node.schema.names == names:
        return node
    return Project(node, tuple((n, col(n)) for n in names))


def _prune(node: Node, needed: frozenset[str] | None) -> Node:
    """Rebuild ``node`` so that it produces (at least) the ``needed`` columns (None: all)."""
    if isinstance(node, Source):
        if needed is None:
            return node
        columns = tuple(n for n in node.schema.names if n in needed)
        if node.columns is None and columns == tuple(node.scan.schema.names):
            return node
        return node if columns == node.columns else dataclasses.replace(node, columns=columns)
    if isinstance(node, Project):
        exprs = node.exprs if needed is None else tuple(
            (n, e) for n, e in node.exprs if n in needed)
        below = frozenset().union(*(e.columns for _, e in exprs))
        return Project(_prune(node.child, below), exprs)
    if isinstance(node, Filter):
        below = None if needed is None else needed | node.predicate.columns
        return node.with_children((_prune(node.child, below),))
    if isinstance(node, Enrich):
        keys = frozenset(s for s, _ in node.on) | frozenset(
            [node.as_of] if isinstance(node, AsOfEnrich) else [])
        if needed is None or node.unmatched_side_output:
            # With a side output, the unmatched rows keep every stream column.
            kept = node.columns if needed is None else tuple(
                c for c, o in zip(node.columns, node.output_names, strict=True) if o in needed)
            return dataclasses.replace(node, child=_prune(node.child, None), columns=kept)
        kept = tuple(c for c, o in zip(node.columns, node.output_names, strict=True)
                     if o in needed)
        # Stream columns that a kept reference column clashes with stay, so that the
        # reference column keeps its suffixed name.
        clashes = frozenset(c for c in kept if c in node.child.schema.names)
        below = (needed - set(node.output_names)) | keys | clashes
        return dataclasses.replace(node, child=_prune(node.child, below), columns=kept)
    if isinstance(node, Union):
        if needed is None:
            return Union(tuple(_prune(i, None) for i in node.inputs))
        names = [n for n in node.schema.names if n in needed]
        return Union(tuple(_exactly(_prune(i, needed), names) for i in node.inputs))
    if isinstance(node, Sink):
        return node.with_children((_prune(node.child, None),))
    # Opaque operators (MapBatches, later stateful ones) need every input column.
    return node.with_children(tuple(_prune(c, None) for c in node.children))


def prune_unused_columns(node: Node) -> Node | None:
    """Projection pushdown, applied at the sink: every source reads, and every enrich adds,
    only the columns that some operator downstream reads."""
    if not isinstance(node, Sink):
        return None
    pruned = _prune(node, None)
    return None if pruned == node else pruned


# --- physical -----------------------------------------------------------------------------

def fuse_stateless_chain(node: Node) -> Node | None:
    """Two or more stateless operators in a row become one :class:`Fused` stage, so that each
    batch passes through all of them in one task (one pass, no hand-off between stages).

    Runs after the logical rules (fused nodes hide their insides from them).
    """
    if not node.stateless:
        return None
    child = node.children[0]
    if isinstance(child, Fused):
        return Fused(node.with_children((child.top,)), child.depth + 1)
    if child.stateless:
        return Fused(node, 2)
    return None


#: Rules that map the optimized logical plan onto physical stages, applied after the others.
PHYSICAL_RULES: tuple[Rule, ...] = (fuse_stateless_chain,)

#: The rules :class:`~sabot_lab.plan.optimizer.PlanOptimizer` applies by default, in order.
DEFAULT_RULES: tuple[Rule, ...] = (
    drop_true_filter,
    merge_adjacent_filters,
    push_filter_below_project,
    push_filter_below_enrich,
    push_filter_below_union,
    push_filter_into_source,
    push_key_filter_into_window,
    merge_adjacent_projections,
    remove_identity_projection,
    prune_unused_columns,
)
