"""Plans are validated as they are built; every error names what is wrong and what exists."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl


@pytest.fixture
def stream() -> sl.Stream:
    return sl.Stream.from_table(pa.table({"id": [1, 2], "sym": ["A", "B"], "px": [1.0, 2.0]}))


def test_unknown_column_names_column_node_and_schema(stream):
    with pytest.raises(sl.PlanError) as info:
        stream.filter(sl.col("price") > 1)
    message = str(info.value)
    assert "'price' not found" in message
    assert "Filter[(col('price') > 1)]" in message
    assert "['id', 'sym', 'px']" in message
    with pytest.raises(sl.PlanError, match=r"Project\[.*'qty' not found"):
        stream.select("id", "qty")


def test_filter_must_be_boolean(stream):
    with pytest.raises(sl.PlanError, match=r"must be boolean.*is double"):
        stream.filter(sl.col("px") * 2)


def test_duplicate_output_column(stream):
    with pytest.raises(sl.PlanError, match="'id' is defined twice"):
        stream.select("id", id="sym")


def test_key_type_mismatch_names_both_types(stream):
    ref = sl.Table(pa.table({"id": ["1", "2"], "name": ["x", "y"]}), key="id")
    with pytest.raises(sl.PlanError, match="stream column 'id' is int64 but reference key 'id' "
                                           "is string; cast one side"):
        stream.enrich(ref)


def test_duplicate_reference_keys_name_the_values():
    data = pa.table({"k": [1, 2, 2, 3, 3, 3, None, None], "v": range(8)})
    with pytest.raises(sl.DuplicateKeyError, match=r"2 key value\(s\).*\(3,\) x3.*unique=False"):
        sl.Table(data, key="k")
    assert sl.Table(data, key="k", unique=False).null_key_rows == 2


def test_enrich_keys_and_columns_are_checked(stream):
    ref = sl.Table(pa.table({"a": [1], "b": ["x"], "v": [0.5]}), key=["a", "b"])
    with pytest.raises(sl.PlanError, match=r"must match every reference key column \['a', 'b'\]"):
        stream.enrich(ref, on={"id": "a"})
    with pytest.raises(sl.PlanError, match="stream key column 'nope' not found"):
        stream.enrich(ref, on={"nope": "a", "sym": "b"})
    with pytest.raises(sl.PlanError, match=r"reference column 'w' not found; .*\['a', 'b', 'v'\]"):
        stream.enrich(ref, on={"id": "a", "sym": "b"}, columns=["w"])
    with pytest.raises(KeyError, match="reference key column 'c' not found"):
        sl.Table(pa.table({"a": [1]}), key="c")
    with pytest.raises(TypeError, match=r"takes a sabot_lab.Table\(data, key=...\)"):
        stream.enrich(pa.table({"a": [1]}), on="id")


def test_explain_shows_every_node_and_optional_schema(stream):
    text = stream.filter(sl.col("px") > 1).select("sym").explain(show_schema=True)
    assert text.splitlines()[0] == "Sink[collect]"
    assert "Filter[(col('px') > 1)]" in text
    assert "schema: sym: string" in text


def test_nodes_compare_structurally(stream):
    a = stream.filter(sl.col("px") > 1).node
    b = stream.filter(sl.col("px") > 1).node
    c = stream.filter(sl.col("px") > 2).node
    assert a == b and a != c


def test_common_newcomer_mistakes_are_explained(stream):
    with pytest.raises(sl.PlanError, match=r"not a string: write e.g. filter\(sl.col"):
        stream.filter("px >= 1")
    with pytest.raises(sl.PlanError, match="groups need windows"):
        stream.group_by("sym")
