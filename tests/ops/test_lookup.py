"""The lookup's hash indexes (int64, string, several columns) against a plain-dict oracle.

The oracle knows nothing of hashing: a Python dict from the key tuple to the first reference
row with that key, nulls never matching. Inputs cover what the kernels read in place: sparse
and extreme int64 values, empty, unicode and long strings, nulls, dictionary-encoded and
sliced (offset != 0) stream arrays, large_string, and two key columns. No test looks at time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sabot_lab.ops.lookup import Lookup

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

sparse_ints = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]),
    st.integers(-1000, 1000).map(lambda v: v * 1_000_003),  # strided, as real ids are
)
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "a", "A", "é", "e\u0301", "日本", "\x00", "🙂", "a\x00b"]),
    st.text(min_size=40, max_size=300),
)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def oracle(ref: list[tuple], stream: list[tuple], mask: list[bool] | None = None
           ) -> tuple[list[int], int]:
    """Reference row per stream row (``-1`` none), and rows with a null key (among the
    selected ones when ``mask`` is given)."""
    first: dict[tuple, int] = {}
    for r, key in enumerate(ref):
        if None not in key:
            first.setdefault(key, r)
    found = [-1 if None in key else first.get(key, -1) for key in stream]
    selected = mask if mask is not None else [True] * len(stream)
    nulls = sum(1 for key, s in zip(stream, selected, strict=True) if s and None in key)
    return found, nulls


def variants(array: pa.Array, prefix: pa.Array) -> list[pa.Array]:
    """The same values as plain, sliced (offset != 0), dictionary-encoded and sliced
    dictionary arrays."""
    out = [array]
    padded = pa.concat_arrays([prefix, array]).slice(len(prefix))
    out.append(padded)
    out.append(pc.dictionary_encode(array))
    out.append(pc.dictionary_encode(pa.concat_arrays([prefix, array])).slice(len(prefix)))
    if pa.types.is_string(array.type):
        out.append(array.cast(pa.large_string()))
        out.append(padded.cast(pa.large_string()).slice(0))
        out.append(pa.concat_arrays([prefix, array]).cast(pa.large_string()).slice(len(prefix)))
    return out


def check(lookup: Lookup, ref_keys: list[tuple], stream_arrays: list[pa.Array],
          mask: list[bool]) -> None:
    stream_keys = list(zip(*(a.to_pylist() for a in stream_arrays), strict=True))
    expected, expected_nulls = oracle(ref_keys, stream_keys)
    found, nulls = lookup.rows(stream_arrays)
    assert found.tolist() == expected
    assert nulls == expected_nulls
    # Filter + probe: only selected rows, compacted, with the selected null keys.
    _, selected_nulls = oracle(ref_keys, stream_keys, mask)
    positions, rows, nulls = lookup.select(stream_arrays, pa.array(mask, pa.bool_()))
    want = [i for i, (m, f) in enumerate(zip(mask, expected, strict=True)) if m and f >= 0]
    assert positions.tolist() == want
    assert rows.tolist() == [expected[i] for i in want]
    assert nulls == selected_nulls


@st.composite
def key_case(draw, values: st.SearchStrategy) -> tuple[list, list, list[bool]]:
    ref = draw(st.lists(values, max_size=40, unique=True))
    known = st.sampled_from(ref) if ref else values
    stream = draw(st.lists(st.one_of(known, values, st.none()), max_size=60))
    mask = draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
    return ref, stream, mask


@SETTINGS
@given(key_case(sparse_ints))
def test_sparse_int64_keys_match_a_dict(case):
    ref, stream, mask = case
    lookup = Lookup.build(pa.table({"k": pa.array(ref, pa.int64())}), ["k"])
    prefix = pa.array([7, None, INT64_MIN], pa.int64())
    for array in variants(pa.array(stream, pa.int64()), prefix):
        check(lookup, [(k,) for k in ref], [array], mask)


@SETTINGS
@given(key_case(texts))
def test_string_keys_match_a_dict(case):
    ref, stream, mask = case
    for ref_type in (pa.string(), pa.large_string()):
        lookup = Lookup.build(pa.table({"k": pa.array(ref, ref_type)}), ["k"])
        assert lookup.strategy == "hash"
        prefix = pa.array(["pad", None, ""], pa.string())
        for array in variants(pa.array(stream, pa.string()), prefix):
            check(lookup, [(k,) for k in ref], [array], mask)


@SETTINGS
@given(st.data())
def test_two_column_keys_match_a_dict(data):
    pairs = st.tuples(sparse_ints, texts)
    ref = data.draw(st.lists(pairs, max_size=30, unique=True))
    ints = [k for k, _ in ref] or [0]
    strs = [s for _, s in ref] or [""]
    # Mostly recombined reference parts: both columns known, the pair often not.
    column_value = st.tuples(st.one_of(st.sampled_from(ints), sparse_ints, st.none()),
                             st.one_of(st.sampled_from(strs), texts, st.none()))
    stream = data.draw(st.lists(st.one_of(st.sampled_from(ref) if ref else pairs, column_value),
                                max_size=60))
    mask = data.draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
    reference = pa.table({"k": pa.array([k for k, _ in ref], pa.int64()),
                          "s": pa.array([s for _, s in ref], pa.string())})
    lookup = Lookup.build(reference, ["k", "s"])
    k = pa.array([a for a, _ in stream], pa.int64())
    s = pa.array([b for _, b in stream], pa.string())
    int_variants = variants(k, pa.array([1, None], pa.int64()))
    str_variants = variants(s, pa.array([None, "x"], pa.string()))
    for i, ka in enumerate(int_variants):
        sa = str_variants[i % len(str_variants)]
        check(lookup, ref, [ka, sa], mask)
    check(lookup, ref, [int_variants[0], str_variants[-1]], mask)


@pytest.mark.parametrize("n", [0, 1, 3, 1_000, 50_000])
def test_many_keys_and_repeated_probes(n):
    """Large indexes (many probe chains) against the dict, with misses next to every key."""
    rng = np.random.default_rng(n)
    keys = np.unique(rng.integers(INT64_MIN, INT64_MAX, size=n, dtype=np.int64))
    rng.shuffle(keys)
    lookup = Lookup.build(pa.table({"k": keys}), ["k"])
    probe = np.concatenate([keys, keys + 1, keys[::-1]])
    found, nulls = lookup.rows([pa.array(probe)])
    position = {int(k): i for i, k in enumerate(keys)}
    assert found.tolist() == [position.get(int(k), -1) for k in probe]
    assert nulls == 0

    words = pa.array([f"sym-{int(k):x}" for k in keys], pa.string())
    text_lookup = Lookup.build(pa.table({"s": words}), ["s"])
    probe_words = pa.concat_arrays([words, pc.binary_join_element_wise(words, "!", "")])
    found, _ = text_lookup.rows([probe_words])
    assert found.tolist() == list(range(len(keys))) + [-1] * len(keys)


def test_against_index_in_on_mixed_batches():
    """The hash index agrees with Arrow's ``index_in`` (the per-batch path it replaces)."""
    rng = np.random.default_rng(5)
    ref = pa.array([f"k{int(v)}" for v in rng.choice(10**6, 2_000, replace=False)])
    stream = pa.array([f"k{int(v)}" if v % 7 else None for v in rng.integers(0, 10**6, 20_000)])
    lookup = Lookup.build(pa.table({"k": ref}), ["k"])
    expected = pc.index_in(stream, value_set=ref).fill_null(-1).to_numpy(zero_copy_only=False)
    found, nulls = lookup.rows([stream])
    assert np.array_equal(found, expected)
    assert nulls == stream.null_count


def test_one_to_many_groups_through_the_hash_index():
    ref = pa.table({"k": pa.array([10**12, 5, 10**12, -(10**12), 5, 10**12], pa.int64()),
                    "s": ["a", "b", "a", "c", "b", "z"]})
    for keys in (["k"], ["s"], ["k", "s"]):
        lookup = Lookup.build(ref, keys, unique=False)
        assert lookup.strategy == "hash"
        stream = [pa.array([10**12, None, 5, 6], pa.int64()), pa.array(["a", "b", "b", "a"])]
        columns = [stream[["k", "s"].index(k)] for k in keys]
        groups, _ = lookup.rows(columns)
        rows = [sorted(lookup.group_rows[lookup.group_start[g]:lookup.group_start[g]
                                         + lookup.group_count[g]].tolist()) if g >= 0 else []
                for g in groups.tolist()]
        ref_keys = list(zip(*(ref.column(k).to_pylist() for k in keys), strict=True))
        stream_keys = list(zip(*(c.to_pylist() for c in columns), strict=True))
        expected = [[] if None in key else [r for r, rk in enumerate(ref_keys) if rk == key]
                    for key in stream_keys]
        assert rows == expected


def test_dictionary_with_null_entries_counts_nulls_as_before():
    """A dictionary whose values include null: those rows never match. With null indices as
    well, ``select`` counts them as null keys (``is_valid``), ``rows`` counts null indices."""
    lookup = Lookup.build(pa.table({"s": ["a", "b"]}), ["s"])
    keys = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2, 1], pa.int32()),
                                          pa.array(["a", None, "b"]))
    found, nulls = lookup.rows([keys])
    assert found.tolist() == [0, -1, -1, 1, -1] and nulls == 1
    positions, rows, nulls = lookup.select([keys], pa.array([True] * 5))
    assert positions.tolist() == [0, 3] and rows.tolist() == [0, 1] and nulls == 3
