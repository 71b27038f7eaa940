"""The optimizer never changes results; it is deterministic, idempotent and reports rewrites."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from sabot_lab.plan.nodes import Enrich
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.plan.rules import DEFAULT_RULES
from tests.oracle import assert_same_rows

REFERENCE = sl.Table(
    pa.table({"k": pa.array([0, 1, 2, 3, 5, 8], pa.int64()),
              "name": ["zero", "one", "two", "three", "five", "eight"],
              "w": pa.array([0.5, 1.5, None, 3.5, 5.5, 8.5]),
              "s": ["p", "q", "r", "p", "q", "r"]}),
    key="k",
)


@st.composite
def data(draw) -> pa.Table:
    n = draw(st.integers(0, 60))
    ints = st.one_of(st.none(), st.integers(-5, 9))
    return pa.table({
        "a": pa.array(draw(st.lists(ints, min_size=n, max_size=n)), pa.int64()),
        "b": pa.array(draw(st.lists(st.one_of(st.none(), st.floats(-10, 10)), min_size=n,
                                    max_size=n)), pa.float64()),
        "k": pa.array(draw(st.lists(ints, min_size=n, max_size=n)), pa.int64()),
        "s": pa.array(draw(st.lists(st.sampled_from(["p", "q", "x", None]), min_size=n,
                                    max_size=n)), pa.string()),
    })


def _columns(stream: sl.Stream, kind: str) -> list[str]:
    test = {"num": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
            "str": lambda t: pa.types.is_string(t) or pa.types.is_dictionary(t)}[kind]
    return [f.name for f in stream.schema if test(f.type)]


@st.composite
def predicates(draw, stream: sl.Stream) -> sl.expr.Expr:
    options = []
    nums, strs = _columns(stream, "num"), _columns(stream, "str")
    if nums:
        options.append(sl.col(draw(st.sampled_from(nums))) > draw(st.integers(-4, 6)))
        options.append(sl.col(draw(st.sampled_from(nums))).is_null())
        c1, c2 = draw(st.sampled_from(nums)), draw(st.sampled_from(nums))
        options.append(sl.col(c1) + 1 <= sl.col(c2))
    if strs:
        options.append(sl.col(draw(st.sampled_from(strs))).isin(["p", "r", "one"]))
    if not options:
        return sl.lit(True)
    chosen = draw(st.lists(st.sampled_from(options), min_size=1, max_size=3))
    out = chosen[0]
    for c in chosen[1:]:
        out = out & c if draw(st.booleans()) else out | c
    return ~out if draw(st.booleans()) else out


@st.composite
def plans(draw, table: pa.Table) -> sl.Stream:
    def base(t: pa.Table) -> sl.Stream:
        return sl.Stream.from_table(t, batch_size=draw(st.integers(1, 20)))

    stream = base(table)
    enriched = False
    steps = draw(st.lists(st.sampled_from(["filter", "select", "with_columns", "enrich",
                                           "union"]), max_size=6))
    for i, step in enumerate(steps):
        names = stream.schema.names
        if step == "filter":
            stream = stream.filter(draw(predicates(stream)))
        elif step == "select" and len(names) > 1:
            keep = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
            extra = {}  # new names carry the step number, so they never collide
            if draw(st.booleans()):
                extra[f"renamed{i}"] = keep[0]
            nums = [n for n in keep if n in _columns(stream, "num")]
            if nums:
                extra[f"calc{i}"] = sl.col(nums[0]) * 2 - 1
            stream = stream.select(*keep, **extra)
        elif step == "with_columns" and _columns(stream, "num"):
            c = draw(st.sampled_from(_columns(stream, "num")))
            stream = stream.with_columns(**{c: sl.col(c) + 3, f"flag{i}": sl.col(c) > 0})
        elif step == "enrich" and "k" in names and not enriched and \
                stream.schema.field("k").type == pa.int64():
            columns = draw(st.lists(st.sampled_from(["name", "w", "s"]), min_size=1,
                                    unique=True))
            stream = stream.enrich(REFERENCE, how=draw(st.sampled_from(["inner", "left"])),
                                   columns=columns,
                                   unmatched=draw(st.sampled_from(["drop", "side_output"])))
            enriched = True
        elif step == "union":
            stream = stream.union(stream.filter(draw(predicates(stream))))
    return stream


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_optimized_and_unoptimized_runs_give_the_same_rows(data_strategy):
    table = data_strategy.draw(data())
    stream = data_strategy.draw(plans(table))
    plain = stream.run(optimize=False)
    optimized = stream.run()
    assert optimized.table.schema == plain.table.schema
    assert_same_rows(optimized.table, plain.table)
    for name, side in plain.side_outputs.items():
        assert_same_rows(optimized.side_outputs[name], side)

    optimizer = PlanOptimizer()
    once = optimizer.optimize(stream.graph())
    assert optimizer.optimize(once) == once
    assert optimizer.get_stats().total_optimizations() == 0


def test_stats_reset_per_call_and_list_rewrites():
    table = pa.table({"a": [1, 2, 3], "b": [1.0, 2.0, 3.0]})
    stream = sl.Stream.from_table(table).filter(sl.col("a") > 1).select("b")
    optimizer = PlanOptimizer()
    optimizer.optimize(stream.graph())
    first = optimizer.get_stats()
    assert first.counts() == {"push_filter_into_source": 1, "prune_unused_columns": 1,
                              "remove_identity_projection": 1}
    assert "push_filter_into_source" in optimizer.explain_rewrites()
    optimizer.optimize(sl.Stream.from_table(table).graph())
    assert optimizer.get_stats().total_optimizations() == 0
    assert PlanOptimizer(rules=DEFAULT_RULES[:2], physical_rules=()).optimize(
        stream.graph()) == stream.graph()


def test_result_carries_logical_plan_and_stats():
    table = pa.table({"a": [1, 2, 3]})
    result = sl.Stream.from_table(table).filter(sl.col("a") > 1).run()
    assert result.optimizer_stats.total_optimizations() == 1
    assert "Filter" in result.logical_plan.explain()
    assert "Filter" not in result.plan.explain()
    assert sl.Stream.from_table(table).run(optimize=False).optimizer_stats is None


def test_parquet_pushdown_reads_fewer_columns_and_row_groups(tmp_path):
    n = 10_000
    table = pa.table({"id": pa.array(range(n)), "v": pa.array([float(i) for i in range(n)]),
                      "payload": pa.array(["x" * 50] * n)})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=1_000)
    stream = sl.Stream.from_parquet(path, batch_size=500).filter(sl.col("id") >= 9_500) \
        .select("v")
    plain, optimized = stream.run(optimize=False), stream.run()
    assert_same_rows(optimized.table, plain.table)
    source = optimized.plan.nodes[0]
    assert source.columns == ("v",) and source.predicate is not None
    # Only the last row group holds matching ids: at most 1,000 rows are decoded.
    assert sum(b.num_rows for b in source.scan.batches(source.columns, source.predicate)) == 500
    assert optimized.operator_metrics[0].rows_in == n
    assert optimized.operator_metrics[0].rows_filtered == n - 500


@pytest.mark.parametrize("how", ["inner", "left"])
def test_enrich_pushdown_prunes_reference_columns(how):
    table = pa.table({"k": [0, 1, 2, 7], "a": [1, 2, 3, 4]})
    stream = sl.Stream.from_table(table).enrich(REFERENCE, how=how).select("a", "name")
    enrich = next(n for n in stream.optimized().operators() if isinstance(n, Enrich))
    assert enrich.columns == ("name",)
    assert_same_rows(stream.run().table, stream.run(optimize=False).table)


@pytest.mark.parametrize("predicate", [sl.lit(False), sl.lit(1) == 1, True])
def test_constant_predicates_give_the_same_rows(predicate):
    stream = sl.Stream.from_table(pa.table({"a": [1, 2, 3]})).filter(predicate)
    assert stream.to_table().equals(stream.to_table(optimize=False))


def test_custom_optimizer_and_readable_rewrites():
    reference = sl.Table(pa.table({"k": [1, 2], "g": ["x", "y"]}), key="k")
    stream = sl.Stream.from_table(pa.table({"k": [1, 2, 2], "unused": [0, 0, 0]})).enrich(
        reference).filter(sl.col("g") == "x").select("k")
    only_logical = PlanOptimizer(physical_rules=())
    result = stream.run(optimize=only_logical)
    assert result.optimizer_stats is only_logical.get_stats()
    assert result.table.column("k").to_pylist() == [1]
    assert "reference where (col('g') == 'x')" in result.plan.explain()
    (pruning,) = [r for r in only_logical.get_stats().rewrites
                  if r.rule == "prune_unused_columns"]
    assert "columns=['k']" in pruning.after and "Sink" not in pruning.after
