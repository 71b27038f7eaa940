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
