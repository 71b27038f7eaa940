"""KeyDictionary against a plain dict oracle."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot_lab.ops.window.keys import KeyDictionary

ints = st.lists(st.one_of(st.none(), st.integers(-3, 3), st.integers(-2**62, 2**62)),
                max_size=30)
strings = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "ccc", ""])), max_size=30)


def _oracle_ids(rows, seen):
    out = []
    for row in rows:
        out.append(seen.setdefault(row, len(seen)))
    return out


@settings(max_examples=80, deadline=None)
@given(batches=st.lists(st.tuples(ints, strings), max_size=5), multi=st.booleans())
def test_ids_are_dense_stable_and_decode_to_the_keys(batches, multi):
    schema = pa.schema([("i", pa.int64()), ("s", pa.string())] if multi else [("i", pa.int64())])
    keys = KeyDictionary(schema)
    seen: dict = {}
    for i_values, s_values in batches:
        n = min(len(i_values), len(s_values)) if multi else len(i_values)
        columns = {"i": pa.array(i_values[:n], pa.int64())}
        if multi:
            columns["s"] = pa.array(s_values[:n], pa.string())
        batch = pa.table(columns)
        rows = list(zip(*(columns[f.name].to_pylist() for f in schema), strict=True))
        ids = keys.encode(batch)
        assert ids.tolist() == _oracle_ids(rows, seen)
        decoded = list(zip(*(c.to_pylist() for c in keys.values(ids)), strict=True))
        assert decoded == rows
    assert len(keys) == len(seen)


def test_compact_integer_path_and_hashed_path_share_ids():
    keys = KeyDictionary(pa.schema([("k", pa.int32())]))
    assert keys.encode(pa.table({"k": pa.array([5, 7, 5], pa.int32())})).tolist() == [0, 1, 0]
    # A batch with a null goes the hashed way: known keys keep their ids.
    assert keys.encode(pa.table({"k": pa.array([7, None, 9], pa.int32())})).tolist() == [1, 2, 3]
    assert keys.encode(pa.table({"k": pa.array([9, 5, 11], pa.int32())})).tolist() == [3, 0, 4]
    # Keys far apart do not build a huge table.
    far = pa.table({"k": pa.array([-2**31, 2**31 - 1], pa.int32())})
    assert keys.encode(far).tolist() == [5, 6]
    assert keys.values(np.arange(7))[0].to_pylist() == [5, 7, None, 9, 11, -2**31, 2**31 - 1]
    assert keys.values([0])[0].type == pa.int32()


def test_dictionary_encoded_keys_come_back_with_their_type():
    column = pa.array(["x", "y", "x"]).dictionary_encode()
    keys = KeyDictionary(pa.schema([("k", column.type)]))
    assert keys.encode(pa.table({"k": column})).tolist() == [0, 1, 0]
    out = keys.values([1, 0])[0]
    assert out.type == column.type and out.to_pylist() == ["y", "x"]
