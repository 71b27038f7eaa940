"""Key lookup for enrichment: map stream key values to reference rows, a batch at a time.

The lookup is built once per job. Two strategies, both multi-key capable:

* **dense**: one integer key whose values span a compact range: a lookup table indexed by
  ``value - min``, probed by a numba kernel in one pass (no hashing at all).
* **hash**: anything else (strings, wide integer ranges, several keys): Arrow's ``index_in``
  hash kernel maps each key column to a code; several codes combine into one integer that a
  dense table or a sorted array (``searchsorted``) resolves.

Null keys never match. Dictionary-encoded key columns are looked up once per dictionary
entry, then expanded through the indices.

Examples
--------
>>> import pyarrow as pa
>>> ref = pa.table({"id": [10, 12, 11], "sym": ["a", "c", "b"]})
>>> lookup = Lookup.build(ref, ["id"])
>>> lookup.strategy
'dense'
>>> rows, nulls = lookup.rows([pa.array([11, None, 99, 10])])
>>> rows.tolist(), nulls
([2, -1, -1, 0], 1)
>>> Lookup.build(ref, ["sym"]).rows([pa.array(["c", "z"])])[0].tolist()
[1, -1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Lookup"]

#: A dense table may be at most this many times larger than the number of keys (plus slack).
DENSE_FILL_FACTOR = 8
_DENSE_SLACK = 1 << 16


@numba.njit(nogil=True, cache=True)
def _dense_probe(values, bitmap, bit_offset, check_valid, lo, table, out):  # pragma: no cover
    """out[i] = table[values[i] - lo], or -1 when null or out of range: one pass per batch.

    ``bitmap`` is the Arrow validity bitmap (bit ``i + bit_offset`` set means valid), read
    in place so that no boolean mask is materialised.
    """
    span = table.shape[0]
    for i in range(values.shape[0]):
        if check_valid:
            j = i + bit_offset
            if not (bitmap[j >> 3] >> (j & 7)) & 1:
                out[i] = -1
                continue
        k = values[i] - lo
        out[i] = table[k] if 0 <= k < span else -1


@numba.njit(nogil=True, cache=True)
def _dense_select(values, bitmap, bit_offset, check_valid, mask, mask_offset, lo, table,
                  positions, rows):  # pragma: no cover - numba
    """Among rows whose ``mask`` bit is set: write the positions of rows with a match and their
    reference rows (compacted); return how many, and how many selected rows had a null key.

    One pass over the batch for a filter and a lookup together, writing only what is kept.
    """
    span = table.shape[0]
    kept = 0
    nulls = 0
    for i in range(values.shape[0]):
        m = i + mask_offset
        if not (mask[m >> 3] >> (m & 7)) & 1:
            continue
        if check_valid:
            j = i + bit_offset
            if not (bitmap[j >> 3] >> (j & 7)) & 1:
                nulls += 1
                continue
        k = values[i] - lo
        if 0 <= k < span:
            r = table[k]
            if r >= 0:
                positions[kept] = i
                rows[kept] = r
                kept += 1
    return kept, nulls


_NO_BITMAP = np.frombuffer(b"", dtype=np.uint8)


def _warm_up() -> None:
    """Compile (or load from cache) the probe for the read-only arrays Arrow buffers give.

    Called when a lookup is built, so the one-off compile cost is paid there, not inside the
    first batch.
    """
    values = np.frombuffer(np.zeros(1, dtype=np.int64).tobytes(), dtype=np.int64)
    bitmap = np.frombuffer(b"\x01", dtype=np.uint8)
    out = np.empty(1, dtype=np.int64)
    table = np.zeros(1, dtype=np.int32)
    _dense_probe(values, bitmap, 0, True, 0, table, out)
    _dense_probe(values, _NO_BITMAP, 0, False, 0, table, out)
    _dense_select(values, bitmap, 0, True, bitmap, 0, 0, table, out, out.copy())
    _dense_select(values, _NO_BITMAP, 0, False, bitmap, 0, 0, table, out, out.copy())


def _normalize(array: pa.Array) -> pa.Array:
    """Bring key columns of compatible types to one type: integers to int64, text to string."""
    t = array.type
    if pa.types.is_dictionary(t):
        return pa.DictionaryArray.from_arrays(array.indices, _normalize(array.dictionary))
    if pa.types.is_integer(t) and t not in (pa.int64(), pa.uint64()):
        return array.cast(pa.int64())
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return array.cast(pa.string())
    return array


def _align(array: pa.Array, target: pa.DataType) -> pa.Array:
    """A normalized stream key column in the reference key's type, where one is int64 and
    the other uint64: a value the reference type cannot hold (a negative one against uint64,
    one above ``2**63 - 1`` against int64) cannot match, so it becomes null here (the caller
    counts null keys before aligning: these rows count as unmatched, not as null keys).

    >>> _align(pa.array([1, -1, None]), pa.uint64()).to_pylist()
    [1, None, None]
    >>> _align(pa.array([1, 2**64 - 1], pa.uint64()), pa.int64()).to_pylist()
    [1, None]
    """
    t = array.type
    if pa.types.is_dictionary(t):
        return pa.DictionaryArray.from_arrays(array.indices, _align(array.dictionary, target))
    if t == target or not (pa.types.is_integer(t) and pa.types.is_integer(target)):
        return array
    if t == pa.int64():  # against uint64
        fits = pc.greater_equal(array, pa.scalar(0, t))
    else:  # uint64 against int64
        fits = pc.less_equal(array, pa.scalar(np.iinfo(np.int64).max, t))
    return pc.if_else(fits, array, pa.scalar(None, t)).cast(target)


def _int_values(array: pa.Array) -> np.ndarray:
    """The int64 values of an int64 array, zero-copy (null slots hold arbitrary values)."""
    buffer = array.buffers()[1]
    return np.frombuffer(buffer, dtype=np.int64, count=array.offset + len(array))[array.offset:]


def _validity(array: pa.Array) -> np.ndarray:
    return pc.is_valid(array).to_numpy(zero_copy_only=False)


class _DenseEncoder:
    """Single integer key in a compact range: a lookup table and a numba probe."""

    def __init__(self, keys: np.ndarray, payload: np.ndarray) -> None:
        self.lo = int(keys.min()) if len(keys) else 0
        span = int(keys.max()) - self.lo + 1 if len(keys) else 0
        if len(payload) and payload.max() >= 2**31:
            raise ValueError("a reference table for a lookup holds at most 2**31 rows")
        # int32 entries: half the cache footprint of int64 for the random probes.
        self.table = np.full(span, -1, dtype=np.int32)
        self.table[keys - self.lo] = payload
        _warm_up()

    @staticmethod
    def fits(keys: np.ndarray) -> bool:
        if not len(keys):
            return True
        span = int(keys.max()) - int(keys.min()) + 1
        return span <= DENSE_FILL_FACTOR * len(keys) + _DENSE_SLACK

    def encode(self, array: pa.Array) -> np.ndarray:
        out = np.empty(len(array), dtype=np.int64)
        check = array.null_count > 0
        bitmap = np.frombuffer(array.buffers()[0], dtype=np.uint8) if check else _NO_BITMAP
        _dense_probe(_int_values(array), bitmap, array.offset, check, self.lo, self.table, out)
        return out

    def select(self, array: pa.Array, mask: pa.BooleanArray) -> tuple[np.ndarray, np.ndarray,
                                                                       int]:
        n = len(array)
        positions = np.empty(n, dtype=np.int64)
        rows = np.empty(n, dtype=np.int64)
        check = array.null_count > 0
        bitmap = np.frombuffer(array.buffers()[0], dtype=np.uint8) if check else _NO_BITMAP
        mask_bits = np.frombuffer(mask.buffers()[1], dtype=np.uint8)
        kept, nulls = _dense_select(_int_values(array), bitmap, array.offset, check, mask_bits,
                                    mask.offset, self.lo, self.table, positions, rows)
        return positions[:kept], rows[:kept], nulls


class _SetEncoder:
    """Any single key type: Arrow's hash-based ``index_in`` against the distinct key values."""

    def __init__(self, keys: pa.Array, payload: np.ndarray) -> None:
        self.keys = keys
        self.payload = payload

    def encode(self, array: pa.Array) -> np.ndarray:
        positions = pc.index_in(array, value_set=self.keys)
        codes = positions.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        found = codes >= 0
        codes[found] = self.payload[codes[found]]
        return codes


class _MultiEncoder:
    """Several key columns: per-column codes combined into one integer, then resolved."""

    def __init__(self, keys: list[pa.Array], payload: np.ndarray) -> None:
        self.uniques = [pc.unique(k) for k in keys]
        cards = [max(len(u), 1) for u in self.uniques]
        if float(np.prod(cards, dtype=np.float64)) >= 2.0**62:
            raise ValueError("too many distinct key combinations for a multi-column lookup")
        self.strides = np.cumprod([1, *cards[:-1]]).astype(np.int64)
        combined = self._combine([self._column_codes(i, k) for i, k in enumerate(keys)])
        if _DenseEncoder.fits(combined):
            self.dense: _DenseEncoder | None = _DenseEncoder(combined, payload)
        else:
            self.dense = None
            order = np.argsort(combined, kind="stable")
            self.sorted_codes = combined[order]
            self.sorted_payload = payload[order]

    def _column_codes(self, i: int, array: pa.Array) -> np.ndarray:
        return _encode_column(array, lambda a: pc.index_in(a, value_set=self.uniques[i])
                              .fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))

    def _combine(self, codes: list[np.ndarray]) -> np.ndarray:
        combined = np.zeros(len(codes[0]), dtype=np.int64)
        missing = np.zeros(len(codes[0]), dtype=np.bool_)
        for stride, c in zip(self.strides, codes, strict=True):
            combined += c * stride
            missing |= c < 0
        combined[missing] = -1
        return combined

    def encode(self, arrays: list[pa.Array]) -> np.ndarray:
        combined = self._combine([self._column_codes(i, a) for i, a in enumerate(arrays)])
        if self.dense is not None:
            out = np.full(len(combined), -1, dtype=np.int64)
            ok = combined >= 0
            out[ok] = _lookup_table(self.dense, combined[ok])
            return out
        pos = np.searchsorted(self.sorted_codes, combined)
        pos = np.minimum(pos, len(self.sorted_codes) - 1)
        hit = (combined >= 0) & (self.sorted_codes[pos] == combined)
        return np.where(hit, self.sorted_payload[pos], -1)


def _lookup_table(dense: _DenseEncoder, codes: np.ndarray) -> np.ndarray:
    out = np.empty(len(codes), dtype=np.int64)
    _dense_probe(codes, _NO_BITMAP, 0, False, dense.lo, dense.table, out)
    return out


def _encode_column(array: pa.Array, encode) -> np.ndarray:
    """Encode a column; a dictionary column is encoded once per dictionary entry."""
    if pa.types.is_dictionary(array.type):
        per_entry = encode(array.dictionary)
        indices = array.indices.cast(pa.int64())
        out = np.full(len(array), -1, dtype=np.int64)
        valid = _validity(indices)
        out[valid] = per_entry[_int_values(indices.fill_null(0))[valid]]
        return out
    return encode(array)


@dataclass
class Lookup:
    """Maps stream key columns to rows (or, for one-to-many, row groups) of a reference table.

    Attributes
    ----------
    strategy
        ``"dense"`` or ``"hash"``.
    unique
        One reference row per key (``rows`` returns row numbers) or several
        (``rows`` returns group numbers; ``group_start``/``group_count`` index ``group_rows``).
        Keys are equal as Arrow's hash kernels compare them, in both cases: NaN equals NaN,
        ``-0.0`` and ``0.0`` differ.
    key_types
        The reference key types, normalized; stream keys are brought to them.
    """

    strategy: str
    unique: bool
    encoder: object
    group_start: np.ndarray | None = None
    group_count: np.ndarray | None = None
    group_rows: np.ndarray | None = None
    key_types: tuple[pa.DataType, ...] = ()

    @classmethod
    def build(cls, reference: pa.Table, keys: list[str], unique: bool = True) -> Lookup:
        """Index ``reference`` on ``keys`` (rows with a null key are left out)."""
        arrays = [_normalize(reference.column(k).combine_chunks()) for k in keys]
        arrays = [a.dictionary_decode() if pa.types.is_dictionary(a.type) else a for a in arrays]
        valid = np.ones(reference.num_rows, dtype=np.bool_)
        for a in arrays:
            valid &= _validity(a)
        rows = np.flatnonzero(valid).astype(np.int64)
        arrays = [a.take(rows) for a in arrays]
        group_start = group_count = group_rows = None
        if unique:
            payload = rows
        else:
            # Group equal keys as the hash lookup will match them (NaN with NaN): by their
            # codes in a hash dictionary, rows of a group in reference order.
            codes = [pc.dictionary_encode(a).indices.to_numpy(zero_copy_only=False)
                     for a in arrays]
            order = np.lexsort(codes[::-1])
            group_rows = rows[order]
            change = np.zeros(len(rows), dtype=np.bool_)
            if len(rows):
                change[0] = True
            for c in codes:
                ordered = c[order]
                change[1:] |= ordered[1:] != ordered[:-1]
            group_start = np.flatnonzero(change).astype(np.int64)
            group_count = np.diff(np.append(group_start, len(rows))).astype(np.int64)
            arrays = [a.take(order[group_start]) for a in arrays]  # a key per group
            payload = np.arange(len(group_start), dtype=np.int64)
        if len(arrays) == 1 and arrays[0].type == pa.int64() and _DenseEncoder.fits(
            _int_values(arrays[0])
        ):
            encoder: object = _DenseEncoder(_int_values(arrays[0]), payload)
            strategy = "dense"
        elif len(arrays) == 1:
            encoder = _SetEncoder(arrays[0], payload)
            strategy = "hash"
        else:
            encoder = _MultiEncoder(arrays, payload)
            strategy = "hash"
        return cls(strategy, unique, encoder, group_start, group_count, group_rows,
                   tuple(a.type for a in arrays))

    def rows(self, arrays: list[pa.Array]) -> tuple[np.ndarray, int]:
        """Reference rows (or groups) for each stream row, ``-1`` for none; and the null-key count.

        Parameters
        ----------
        arrays
            The stream's key columns, in the order of the reference keys.
        """
        arrays = [_normalize(a) for a in arrays]
        if len(arrays) == 1:
            nulls = arrays[0].null_count
        else:
            valid = np.ones(len(arrays[0]), dtype=np.bool_)
            for a in arrays:
                if a.null_count:
                    valid &= _validity(a)
            nulls = len(valid) - int(np.count_nonzero(valid))
        arrays = [_align(a, t) for a, t in zip(arrays, self.key_types, strict=True)]
        if isinstance(self.encoder, _MultiEncoder):
            return self.encoder.encode(arrays), nulls
        return _encode_column(arrays[0], self.encoder.encode), nulls

    def select(self, arrays: list[pa.Array], mask: pa.BooleanArray
               ) -> tuple[np.ndarray, np.ndarray, int]:
        """Among the rows where ``mask`` (no nulls) is true: the positions of those with a
        match, their reference rows, and how many had a null key.

        >>> ref = pa.table({"id": [10, 11]})
        >>> lookup = Lookup.build(ref, ["id"])
        >>> positions, rows, nulls = lookup.select([pa.array([11, None, 10, 10])],
        ...                                        pa.array([True, True, False, True]))
        >>> positions.tolist(), rows.tolist(), nulls
        ([0, 3], [1, 0], 1)
        """
        arrays = [_normalize(a) for a in arrays]
        if isinstance(self.encoder, _DenseEncoder) and arrays[0].type == pa.int64() \
                and self.unique:
            return self.encoder.select(arrays[0], mask)
        found, _ = self.rows(arrays)
        selected = mask.to_numpy(zero_copy_only=False)
        valid = np.ones(len(selected), dtype=np.bool_)
        for a in arrays:
            if a.null_count:
                valid &= _validity(a)
        positions = np.flatnonzero(selected & (found >= 0))
        return positions, found[positions], int(np.count_nonzero(selected & ~valid))
