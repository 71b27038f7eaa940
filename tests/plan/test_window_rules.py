"""The optimizer and windows: a filter on group keys moves into the window, and nothing else
about the results changes (main output, late rows, rejected rows, accounting)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.plan.nodes import Filter, WindowAggregate
from sabot_lab.plan.rules import push_key_filter_into_window
from tests.oracle import assert_balanced


def _events(n: int = 20_000) -> pa.Table:
    rng = np.random.default_rng(11)
    t = np.sort(rng.integers(0, 1_200_000, n)) + rng.integers(-4_000, 4_000, n)
    t[rng.choice(n, 300, replace=False)] -= 120_000
    return pa.table({"ts": pa.array(t).cast(pa.timestamp("ms")),
                     "user": pa.array(rng.choice(["a", "b", "c", None], n)),
                     "region": pa.array(rng.integers(0, 4, n)),
                     "v": pa.array(rng.exponential(10, n))})


def _job(predicate: sl.Expr, lateness: str = "1min") -> sl.Stream:
    return (sl.Stream.from_table(_events(), batch_size=999)
            .with_watermark("ts", max_out_of_orderness="5s", allowed_lateness=lateness)
            .window(sl.hopping("2min", "1min")).group_by("user", "region")
            .agg(n=sl.count(), p95=sl.quantile("v", 0.95))
            .filter(predicate))


def test_rule_moves_only_key_conjuncts():
    job = _job((sl.col("user") == "a") & (sl.col("n") > 3) & sl.col("region").isin([1, 2]))
    rewritten = push_key_filter_into_window(job.node)
    assert isinstance(rewritten, Filter) and repr(rewritten.predicate) == repr(sl.col("n") > 3)
    window = rewritten.child
    assert isinstance(window, WindowAggregate)
    assert window.key_filter.columns == {"user", "region"}
    assert push_key_filter_into_window(_job(sl.col("n") > 3).node) is None


@pytest.mark.parametrize("predicate", [
    sl.col("user") == "a",
    sl.col("user").is_null() | (sl.col("region") > 2),
    (sl.col("region") == 1) & (sl.col("p95") > 5),
])
@pytest.mark.parametrize("lateness", ["0s", "1min"])
def test_results_and_side_outputs_are_unchanged(predicate, lateness):
    job = _job(predicate, lateness)
    plain = job.run(optimize=False)
    optimized = job.run()
    assert "push_key_filter_into_window" in optimized.optimizer_stats.counts()
    sl.assert_same_results(optimized.table, plain.table, rtol=1e-12)
    for name, table in plain.side_outputs.items():
        sl.assert_same_results(optimized.side_outputs[name], table)
    assert plain.side_outputs["late"].num_rows > 0
    assert_balanced(optimized.operator_metrics)
    window = next(m for m in optimized.operator_metrics if m.aggregates)
    assert window.rows_filtered > 0
