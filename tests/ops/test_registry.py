"""A new operator is its node, its operator and one registry line."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import sabot_lab as sl
from sabot_lab.ops.base import Operator
from sabot_lab.ops.registry import OPERATORS
from sabot_lab.plan.nodes import Fused, _Unary


@dataclass(frozen=True, eq=False)
class Negate(_Unary):
    """The node: ``column`` negated, every other column as it is."""

    stateless = True

    column: str

    def _infer_schema(self) -> pa.Schema:
        return self.child.schema


class NegateOp(Operator):
    """The operator: one vectorized kernel per batch."""

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        i = batch.schema.get_field_index(self.node.column)
        return [batch.set_column(i, self.node.column, pc.negate(batch.column(i)))]


def test_a_new_stateless_operator_is_a_node_an_operator_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(OPERATORS, Negate, NegateOp)  # in sabot_lab/ops/registry.py: one line
    table = pa.table({"k": list(range(10)), "v": [float(i) for i in range(10)]})
    stream = sl.Stream(Negate(sl.Stream.from_table(table, batch_size=3)
                              .filter(sl.col("k") >= 4).with_columns(w=sl.col("v") * 2).node,
                              "v"))
    result = stream.run()
    expected = table.filter(pc.greater_equal(table["k"], 4))
    expected = expected.append_column("w", pc.multiply(expected["v"], 2))
    expected = expected.set_column(1, "v", pc.negate(expected["v"]))
    assert result.table.equals(expected)
    # As a stateless node it is fused with the projection into one stage, like built-in ones.
    assert any(isinstance(n, Fused) for n in result.executed_plan.nodes)
    assert [m.rows_out for m in result.operator_metrics] == [6, 6, 6, 6]


def test_a_node_without_an_operator_names_the_registry():
    table = pa.table({"v": [1.0]})
    with pytest.raises(NotImplementedError, match=r"sabot_lab\.ops\.registry\.OPERATORS"):
        sl.Stream(Negate(sl.Stream.from_table(table).node, "v")).run()
