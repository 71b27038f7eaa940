"""assert_same_results: order-insensitive comparison that explains the first difference."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl


def test_equal_in_any_order_and_across_dictionary_encoding():
    a = pa.table({"k": [3, 1, None], "s": ["c", "a", None]})
    b = pa.table({"k": [None, 3, 1], "s": pa.array([None, "c", "a"]).dictionary_encode()})
    sl.assert_same_results(a, b)
    sl.assert_same_results(sl.Stream.from_table(a).run(), b)


@pytest.mark.parametrize(
    ("right", "message"),
    [
        (pa.table({"k": [1, 2]}), r"different columns: \['k', 's'\] != \['k'\]"),
        (pa.table({"k": [1.0, 2.0], "s": ["a", "b"]}), "column 'k' is int64 on the left"),
        (pa.table({"k": [1], "s": ["a"]}), "different row counts: 2 != 1"),
        (pa.table({"k": [1, 2], "s": ["a", None]}),
         r"row 1 of 2 .* column 's': \{'k': 2, 's': 'b'\} != \{'k': 2, 's': None\}"),
    ],
)
def test_differences_are_explained(right, message):
    left = pa.table({"k": [2, 1], "s": ["b", "a"]})
    with pytest.raises(AssertionError, match=message):
        sl.assert_same_results(left, right)


def test_floats_within_a_relative_tolerance_are_equal():
    a = pa.table({"q": [87336.39999999997, float("nan"), None]})
    b = pa.table({"q": [87336.39999999995, float("nan"), None]})
    sl.assert_same_results(a, b)
    with pytest.raises(AssertionError, match="column 'q'"):
        sl.assert_same_results(a, pa.table({"q": [87336.5, float("nan"), None]}))


def _with(table: pa.Table, name: str, values: list) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name,
                            pa.array(values, table.schema.field(name).type))


def test_timing_columns_can_be_ignored_when_comparing_fraud_results():
    from sabot_lab.datasets import transactions
    from sabot_lab.patterns.fraud import detect_fraud

    txns = transactions(20_000, n_accounts=1_000)
    alerts = detect_fraud(sl.Stream.from_table(txns, batch_size=5_000)).run().table
    assert alerts.num_rows > 0
    latency = alerts["detection_latency_ms"].to_pylist()
    # Another run, whose rules took longer per batch: the same alerts at other latencies.
    slower = _with(alerts, "detection_latency_ms", [v + 1.0 for v in latency])
    with pytest.raises(AssertionError, match="column 'detection_latency_ms'"):
        sl.assert_same_results(alerts, slower)
    sl.assert_same_results(alerts, slower, ignore_columns=("detection_latency_ms",))
    sl.assert_same_results(alerts, slower, ignore_columns="detection_latency_ms")
    # Ignoring the timing column does not hide a real difference.
    severity = alerts["severity"].to_pylist()
    changed = _with(slower, "severity", [severity[0] * 2, *severity[1:]])
    with pytest.raises(AssertionError, match="column 'severity'"):
        sl.assert_same_results(alerts, changed, ignore_columns=("detection_latency_ms",))
    # Two real runs in other batch sizes: the rows agree once timing is set aside.
    other = detect_fraud(sl.Stream.from_table(txns, batch_size=2_000)).run()
    sl.assert_same_results(alerts, other, ignore_columns=("detection_latency_ms",))


def test_ignoring_a_column_that_neither_side_has_is_an_error():
    a = pa.table({"k": [1], "latency_ms": [0.5]})
    with pytest.raises(ValueError, match=r"\['latncy_ms'\], a column of neither side"):
        sl.assert_same_results(a, a, ignore_columns=["latncy_ms"])
