"""Deterministic hash partitioning for keyed operators.

The same key goes to the same partition in every process and on every machine: Python's
``hash()`` of a string is salted per process, and ``pyarrow.compute`` has no public hash
kernel, so keys are hashed with ``pandas.util.hash_array`` (SipHash with a fixed key for
strings, a fixed mix for numbers). String columns are hashed once per distinct value
(dictionary-encode, hash the dictionary, take by index).

Examples
--------
>>> import pyarrow as pa
>>> batch = pa.record_batch({"k": [1, 2, 3, 1], "s": ["a", "b", "a", "a"]})
>>> parts = partition_ids(batch, ["k", "s"], 4)
>>> bool(parts[0] == parts[3]), parts.dtype
(True, dtype('int64'))
>>> sum(b.num_rows for b in split_by_partition(batch, parts, 4))
4
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["hash_keys", "partition_ids", "split_by_partition"]

_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _hash_column(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):  # chunk by chunk: combining unifies dictionaries
        if array.num_chunks == 1:
            return _hash_column(array.chunk(0))
        return np.concatenate([_hash_column(c) for c in array.chunks]) if array.num_chunks \
            else np.zeros(0, dtype=np.uint64)
    if not pa.types.is_dictionary(array.type):
        if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or \
                pa.types.is_boolean(array.type) or pa.types.is_temporal(array.type):
            values = array.fill_null(0) if array.null_count else array
            if pa.types.is_temporal(values.type):
                values = values.cast(pa.int64())
            hashed = pd.util.hash_array(values.to_numpy(zero_copy_only=False))
            if array.null_count:
                hashed[~pc.is_valid(array).to_numpy(zero_copy_only=False)] = _NULL_HASH
            return hashed
        array = pc.dictionary_encode(array)
    per_entry = pd.util.hash_array(array.dictionary.to_numpy(zero_copy_only=False))
    indices = array.indices
    out = np.full(len(array), _NULL_HASH, dtype=np.uint64)
    valid = pc.is_valid(indices).to_numpy(zero_copy_only=False)
    out[valid] = per_entry[indices.fill_null(0).to_numpy(zero_copy_only=False)[valid]]
    return out


def hash_keys(batch: pa.RecordBatch | pa.Table, keys: Sequence[str]) -> np.ndarray:
    """A uint64 hash per row of the ``keys`` columns, identical in every process."""
    out = None
    for k in keys:
        # Order-dependent combination, as in boost::hash_combine (from 0: the first key's
        # hash plus the constant, without the shifts of zeros).
        h = _hash_column(batch.column(k))
        if out is None:
            out = np.add(h, _MIX, out=h)
        else:
            out ^= h + _MIX + (out << np.uint64(6)) + (out >> np.uint64(2))
    return out if out is not None else np.zeros(batch.num_rows, dtype=np.uint64)


def partition_ids(batch: pa.RecordBatch | pa.Table, keys: Sequence[str], n: int) -> np.ndarray:
    """The partition (``0 … n-1``) of every row, by its key columns."""
    return (hash_keys(batch, keys) % np.uint64(n)).astype(np.int64)


def split_by_partition(batch: pa.RecordBatch, parts: np.ndarray, n: int
                       ) -> list[pa.RecordBatch]:
    """``n`` batches; batch ``i`` holds the rows whose partition is ``i``, in input order.

    Each batch has buffers of its own, not slices of a shared one: a batch is sent to
    another process on its own, and a slice would carry its parent's whole buffers."""
    # A stable sort of small integers is a radix sort: linear, where int64 would merge sort.
    small = parts.astype(np.uint16) if n <= 1 << 16 else parts
    order = np.argsort(small, kind="stable")
    bounds = np.searchsorted(small[order], np.arange(n + 1))
    return [batch.take(pa.array(order[bounds[i]:bounds[i + 1]])) for i in range(n)]
