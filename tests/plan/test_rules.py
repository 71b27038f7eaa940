"""Each rewrite rule, checked by node equality of the rewritten plan."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.expr import col, lit
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.ops.sources import TableScan
from sabot_lab.plan.nodes import Enrich, Filter, Fused, MapBatches, Project, Sink, Source, Union
from sabot_lab.plan.rules import (
    conjuncts,
    drop_true_filter,
    fuse_stateless_chain,
    merge_adjacent_filters,
    merge_adjacent_projections,
    prune_unused_columns,
    push_filter_below_enrich,
    push_filter_below_project,
    push_filter_below_union,
    push_filter_into_source,
    remove_identity_projection,
)

DATA = pa.table({"a": [1, 2, 3], "b": [4.0, 5.0, 6.0], "k": [1, 2, 9], "s": ["x", "y", "z"]})
REF = sl.Table(pa.table({"k": [1, 2], "name": ["one", "two"], "w": [10, 20], "s": ["p", "q"]}),
               key="k")


@pytest.fixture
def src() -> Source:
    return Source(TableScan(DATA))


def test_drop_true_filter(src):
    assert drop_true_filter(Filter(src, lit(True))) == src
    assert drop_true_filter(Filter(src, col("a") > 1)) is None


def test_merge_adjacent_filters(src):
    node = Filter(Filter(src, col("a") > 1), col("b") < 6)
    assert merge_adjacent_filters(node) == Filter(src, (col("a") > 1) & (col("b") < 6))
    assert merge_adjacent_filters(Filter(src, col("a") > 1)) is None


def test_push_filter_below_project_rewrites_renamed_and_computed(src):
    project = Project(src, (("alpha", col("a")), ("twice", col("b") * 2)))
    node = Filter(project, (col("alpha") > 1) & (col("twice") < 11))
    expected = Project(Filter(src, (col("a") > 1) & (col("b") * 2 < 11)), project.exprs)
    assert push_filter_below_project(node) == expected


def test_push_filter_below_enrich_splits_stream_and_reference_conjuncts(src):
    enrich = Enrich(src, REF, (("k", "k"),), "inner", ("name", "w", "s"))
    assert enrich.output_names == ("name", "w", "s_ref")
    node = Filter(enrich, (col("a") > 1) & (col("w") >= 20) & (col("a") < col("w")))
    rewritten = push_filter_below_enrich(node)
    # stream conjunct below; reference conjunct into the table; the mixed one stays.
    assert isinstance(rewritten, Filter) and rewritten.predicate.equals(col("a") < col("w"))
    moved = rewritten.child
    assert moved.child == Filter(src, col("a") > 1)
    assert moved.reference.data.column("w").to_pylist() == [20]
    assert moved.reference.key == ("k",) and moved.reference.unique


def test_reference_predicates_stay_above_left_joins_and_side_outputs(src):
    for enrich in (Enrich(src, REF, (("k", "k"),), "left", ("w",)),
                   Enrich(src, REF, (("k", "k"),), "inner", ("w",), unmatched_side_output=True)):
        assert push_filter_below_enrich(Filter(enrich, col("w") > 10)) is None


def test_enrich_with_side_output_is_a_barrier(src):
    # Filtering first would change which unmatched rows reach the side output.
    enrich = Enrich(src, REF, (("k", "k"),), "inner", ("w",), unmatched_side_output=True)
    assert push_filter_below_enrich(Filter(enrich, col("a") > 1)) is None
    plan = Sink(Project(enrich, (("w", col("w")),)), CollectSink())
    assert prune_unused_columns(plan) is None


def test_suffixed_reference_column_maps_back_to_its_name(src):
    enrich = Enrich(src, REF, (("k", "k"),), "inner", ("s",))
    rewritten = push_filter_below_enrich(Filter(enrich, col("s_ref") == "q"))
    assert rewritten.reference.data.column("s").to_pylist() == ["q"]


def test_push_filter_below_union(src):
    other = Source(TableScan(DATA.slice(1)))
    node = Filter(Union((src, other)), col("a") > 1)
    expected = Union((Filter(src, col("a") > 1), Filter(other, col("a") > 1)))
    assert push_filter_below_union(node) == expected


def test_push_filter_into_source_combines_with_existing(src):
    node = Filter(dataclasses.replace(src, predicate=col("a") > 0), col("b") < 6)
    expected = dataclasses.replace(src, predicate=(col("a") > 0) & (col("b") < 6))
    assert push_filter_into_source(node) == expected


def test_merge_adjacent_projections_inlines_single_use(src):
    inner = Project(src, (("x", col("a") + 1), ("b", col("b"))))
    node = Project(inner, (("y", col("x") * 2), ("b", col("b"))))
    assert merge_adjacent_projections(node) == Project(
        src, (("y", (col("a") + 1) * 2), ("b", col("b"))))
    twice = Project(inner, (("y", col("x") * col("x")),))
    assert merge_adjacent_projections(twice) is None


def test_remove_identity_projection(src):
    same = Project(src, tuple((n, col(n)) for n in DATA.column_names))
    assert remove_identity_projection(same) == src
    assert remove_identity_projection(Project(src, (("a", col("a")),))) is None


def test_prune_unused_columns_reaches_source_and_reference(src):
    enrich = Enrich(src, REF, (("k", "k"),), "inner", ("name", "w", "s"))
    plan = Sink(Project(Filter(enrich, col("b") > 4), (("a", col("a")), ("name", col("name")))),
                CollectSink())
    pruned = prune_unused_columns(plan)
    new_enrich = pruned.child.child.child
    assert new_enrich.columns == ("name",)
    assert new_enrich.child == dataclasses.replace(src, columns=("a", "b", "k"))
    assert pruned.schema == plan.schema
    assert prune_unused_columns(pruned) is None


def test_prune_keeps_clashing_stream_column_for_the_suffix(src):
    enrich = Enrich(src, REF, (("k", "k"),), "inner", ("s",))
    plan = Sink(Project(enrich, (("s_ref", col("s_ref")),)), CollectSink())
    pruned = prune_unused_columns(plan)
    assert pruned.schema == plan.schema
    assert pruned.child.child.child.columns == ("k", "s")


def test_prune_stops_at_opaque_map_batches(src):
    mapped = MapBatches(src, lambda b: b, DATA.schema, "identity")
    plan = Sink(Project(mapped, (("a", col("a")),)), CollectSink())
    assert prune_unused_columns(plan) is None


def test_conjuncts_flatten_nested_ands():
    e = ((col("a") > 1) & (col("b") > 2)) & ((col("c") > 3) & (col("d") > 4))
    assert [c.columns for c in conjuncts(e)] == [{"a"}, {"b"}, {"c"}, {"d"}]


def test_fuse_stateless_chain_grows_one_operator_at_a_time(src):
    first = Filter(src, col("a") > 1)
    second = Project(first, (("a", col("a")),))
    fused = fuse_stateless_chain(second)
    assert fused == Fused(second, 2)
    assert fused.stages == (first, second) and fused.children == (src,)
    third = Enrich(fused, REF, (("a", "k"),), "inner", ("w",))
    grown = fuse_stateless_chain(third)
    assert grown == Fused(Enrich(second, REF, (("a", "k"),), "inner", ("w",)), 3)
    assert grown.schema == third.schema
    assert fuse_stateless_chain(first) is None  # a source below: nothing to fuse with
    other = Source(TableScan(DATA.slice(1)))
    assert grown.with_children((other,)).stages[0] == Filter(other, col("a") > 1)
