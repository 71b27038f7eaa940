"""Key lookup for enrichment: map stream key values to reference rows, a batch at a time.

The lookup is built once per job, and so is every index it probes. Strategies, all
multi-key capable:

* **dense**: one integer key whose values span a compact range: a lookup table indexed by
  ``value - min``, probed by a numba kernel in one pass (no hashing at all).
* **hash**: anything else (strings, wide integer ranges, several keys). Built once per
  reference table: an open-addressing hash index over the int64 key values, or over the
  Arrow string buffers (offsets + bytes: bytes hashed at build time, hashed and compared on
  probe). A batch is probed by one numba pass that reads the stream column's Arrow buffers in
  place (validity bitmap included: null keys never match). Several key columns: each column
  has its own index over its distinct reference values, giving per-column codes; the codes
  combine into one integer (mixed radix) that a dense table or an int64 hash index resolves.
  Key types without a numba index (floats, dates, binary…) keep Arrow's ``index_in``.

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
>>> sparse = Lookup.build(pa.table({"id": [-(2**63), 2**63 - 1, 0]}), ["id"])
>>> sparse.strategy, sparse.rows([pa.array([0, 2**63 - 1, 5, None])])[0].tolist()
('hash', [2, 1, -1, -1])
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
#: Hash index capacity: at least this many slots per key (a load factor of at most 1/2 keeps
#: linear probing to about 1.5 slots per hit and 2.5 per miss).
_HASH_SLOTS_PER_KEY = 2
#: Fibonacci hashing multiplier (2**64 / golden ratio): the top bits of ``key * _FIB`` spread
#: strided and clustered ids (``100_000 + 3 * i``) evenly over the slots.
_FIB = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)

# Codes a per-row probe writes: ``_MISS`` (no match, or a row the selection left out) and
# ``_NULL`` (a null key: several key columns count a row with any null key as a null key).
_MISS = -1
_NULL = -2


# --- numba kernels ------------------------------------------------------------------------
# Shared conventions: ``bitmap``/``bit_offset``/``check_valid`` is the stream column's Arrow
# validity bitmap, read in place (no boolean mask is materialised); ``sel``/``sel_offset``/
# ``use_sel`` is an optional selection bitmap (an Arrow boolean array's data buffer): rows
# outside it are not probed at all, which is what makes filter + lookup one cheap pass.


@numba.njit(nogil=True, cache=True)
def _is_set(bits, j):  # pragma: no cover - numba
    return (bits[j >> 3] >> (j & 7)) & 1


@numba.njit(nogil=True, cache=True)
def _table_probe(values, bitmap, bit_offset, check_valid, sel, sel_offset, use_sel, null_code,
                 lo, table, out):  # pragma: no cover - numba
    """out[i] = table[values[i] - lo], ``_MISS`` when out of range or not selected,
    ``null_code`` when null; return the number of (selected) nulls.

    The dense path, and the expansion of a dictionary column's per-entry codes through its
    indices (``lo = 0``).
    """
    span = table.shape[0]
    nulls = 0
    for i in range(values.shape[0]):
        if use_sel and not _is_set(sel, i + sel_offset):
            out[i] = -1
            continue
        if check_valid and not _is_set(bitmap, i + bit_offset):
            out[i] = null_code
            nulls += 1
            continue
        k = values[i] - lo
        out[i] = table[k] if 0 <= k < span else -1
    return nulls


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
        if not _is_set(mask, i + mask_offset):
            continue
        if check_valid and not _is_set(bitmap, i + bit_offset):
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


@numba.njit(nogil=True, cache=True)
def _int_slot(key, shift):  # pragma: no cover - numba
    return np.int64((np.uint64(key) * _FIB) >> np.uint64(shift))


@numba.njit(nogil=True, cache=True)
def _int_build(keys, payload, shift, slots):  # pragma: no cover - numba
    """Insert ``keys[i] -> payload[i]`` into ``slots`` (rows ``[key, payload]``, payload -1 =
    empty), linear probing. A repeated key keeps its first payload (as ``index_in`` does)."""
    wrap = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        s = _int_slot(keys[i], shift)
        while slots[s, 1] >= 0 and slots[s, 0] != keys[i]:
            s = (s + 1) & wrap
        if slots[s, 1] < 0:
            slots[s, 0] = keys[i]
            slots[s, 1] = payload[i]


@numba.njit(nogil=True, cache=True)
def _int_lookup(values, bitmap, bit_offset, check_valid, sel, sel_offset, use_sel, null_code,
                compact, slots, shift, out, positions):  # pragma: no cover - numba
    """Probe an int64 hash index: per row (``out[i]``: the payload, ``-1`` for no match or an
    unselected row, ``null_code`` for a null) or, when ``compact``, only the matches among the
    selected rows (``positions[:kept]`` and ``out[:kept]``). Return ``kept`` and the number of
    selected rows with a null key.

    One kernel for both outputs, the slot search written inline: numba compiled it as a
    separate function into a loop several times slower (measured on the string index).
    """
    wrap = slots.shape[0] - 1
    kept = 0
    nulls = 0
    for i in range(values.shape[0]):
        if use_sel and not _is_set(sel, i + sel_offset):
            if not compact:
                out[i] = -1
            continue
        if check_valid and not _is_set(bitmap, i + bit_offset):
            nulls += 1
            if not compact:
                out[i] = null_code
            continue
        key = values[i]
        s = _int_slot(key, shift)
        r = -1
        while True:
            candidate = slots[s, 1]
            if candidate < 0:
                break
            if slots[s, 0] == key:
                r = candidate
                break
            s = (s + 1) & wrap
        if not compact:
            out[i] = r
        elif r >= 0:
            positions[kept] = i
            out[kept] = r
            kept += 1
    return kept, nulls


@numba.njit(nogil=True, cache=True)
def _str_hash(data, start, end):  # pragma: no cover - numba
    """FNV-1a over the bytes ``data[start:end]``."""
    h = _FNV_OFFSET
    for j in range(start, end):
        h = (h ^ np.uint64(data[j])) * _FNV_PRIME
    return h


@numba.njit(nogil=True, cache=True)
def _str_build(offsets, data, shift, slots):  # pragma: no cover - numba
    """Insert the strings ``data[offsets[i]:offsets[i + 1]]`` into ``slots`` (rows
    ``[hash, i]``, ``i = -1`` empty). A repeated string keeps its first ``i``."""
    wrap = slots.shape[0] - 1
    for i in range(offsets.shape[0] - 1):
        start, end = offsets[i], offsets[i + 1]
        h = _str_hash(data, start, end)
        s = np.int64((h * _FIB) >> np.uint64(shift))
        while True:
            k = slots[s, 1]
            if k < 0:
                slots[s, 0] = np.int64(h)
                slots[s, 1] = i
                break
            if slots[s, 0] == np.int64(h):  # noqa: SIM102 - see _str_lookup
                if _str_equal(data, start, end, data, offsets[k], offsets[k + 1]):
                    break
            s = (s + 1) & wrap


@numba.njit(nogil=True, cache=True)
def _str_equal(a, a_start, a_end, b, b_start, b_end):  # pragma: no cover - numba
    if a_end - a_start != b_end - b_start:
        return False
    for j in range(a_end - a_start):  # noqa: SIM110 - a plain loop compiles to a tight loop
        if a[a_start + j] != b[b_start + j]:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _str_lookup(offsets, data, bitmap, bit_offset, check_valid, sel, sel_offset, use_sel,
                null_code, compact, ref_offsets, ref_data, payload, slots, shift, out,
                positions):  # pragma: no cover - numba
    """As :func:`_int_lookup`, through a string hash index (``offsets`` already sliced to the
    array: ``len(offsets) = len(array) + 1``)."""
    wrap = slots.shape[0] - 1
    kept = 0
    nulls = 0
    for i in range(offsets.shape[0] - 1):
        if use_sel and not _is_set(sel, i + sel_offset):
            if not compact:
                out[i] = -1
            continue
        if check_valid and not _is_set(bitmap, i + bit_offset):
            nulls += 1
            if not compact:
                out[i] = null_code
            continue
        start, end = offsets[i], offsets[i + 1]
        h = _str_hash(data, start, end)
        s = np.int64((h * _FIB) >> np.uint64(shift))
        r = -1
        while True:
            k = slots[s, 1]
            if k < 0:
                break
            # The full 64-bit hash first: bytes are compared about only for the true match.
            # (Nested, not ``and``: kept in the form measured fast.)
            if slots[s, 0] == np.int64(h):  # noqa: SIM102
                if _str_equal(data, start, end, ref_data, ref_offsets[k], ref_offsets[k + 1]):
                    r = payload[k]
                    break
            s = (s + 1) & wrap
        if not compact:
            out[i] = r
        elif r >= 0:
            positions[kept] = i
            out[kept] = r
            kept += 1
    return kept, nulls


@numba.njit(nogil=True, cache=True)
def _combine_lookup(codes, strides, compact, dense, lo, table, slots, shift, out,
                    positions):  # pragma: no cover - numba
    """Combine per-column codes (rows of ``codes``; ``-1`` no match or not selected, ``-2``
    null) into one mixed-radix code per stream row and resolve it in the same pass, through
    the dense ``table`` (``dense``) or the int64 hash index ``slots``. Output as in
    :func:`_int_lookup` (per row, or compacted to the matches when ``compact``); return
    ``kept`` and the number of rows with a null in any key column."""
    span = table.shape[0]
    wrap = slots.shape[0] - 1
    kept = 0
    nulls = 0
    for i in range(codes.shape[1]):
        combined = 0
        state = 0
        for j in range(codes.shape[0]):
            c = codes[j, i]
            if c == -2:
                state = 2
            elif c < 0:
                state = max(state, 1)
            else:
                combined += c * strides[j]
        r = -1
        if state == 2:
            nulls += 1
        elif state == 0:
            if dense:
                k = combined - lo
                if 0 <= k < span:
                    r = table[k]
            else:
                s = _int_slot(combined, shift)
                while True:
                    candidate = slots[s, 1]
                    if candidate < 0:
                        break
                    if slots[s, 0] == combined:
                        r = candidate
                        break
                    s = (s + 1) & wrap
        if not compact:
            out[i] = r
        elif r >= 0:
            positions[kept] = i
            out[kept] = r
            kept += 1
    return kept, nulls


# --- Arrow buffers as numpy arrays (zero-copy) ------------------------------------------------

_NO_BITS = np.frombuffer(b"", dtype=np.uint8)
_NO_SEL = (_NO_BITS, 0, False)
_NO_POSITIONS = np.empty(0, dtype=np.int64)
_NO_TABLE = np.empty(0, dtype=np.int32)
_NO_SLOTS = np.full((1, 2), -1, dtype=np.int64)


def _validity_bits(array: pa.Array) -> tuple[np.ndarray, int, bool]:
    """The validity bitmap, its bit offset and whether to read it (only if there are nulls)."""
    if array.null_count == 0:
        return _NO_BITS, 0, False
    return np.frombuffer(array.buffers()[0], dtype=np.uint8), array.offset, True


def _selection(mask: pa.BooleanArray | None) -> tuple[np.ndarray, int, bool]:
    if mask is None:
        return _NO_SEL
    data = mask.buffers()[1]
    if data is None:  # an empty mask may have no buffer: no row is read
        return _NO_BITS, 0, True
    return np.frombuffer(data, dtype=np.uint8), mask.offset, True


def _fixed_values(array: pa.Array, dtype: type) -> np.ndarray:
    """The values buffer of a fixed-width array as ``dtype``, zero-copy (null slots hold
    arbitrary values)."""
    buffer = array.buffers()[1]
    if buffer is None:  # an empty array may have no buffer
        return np.empty(0, dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype, count=array.offset + len(array))[array.offset:]


def _int_values(array: pa.Array) -> np.ndarray:
    """The int64 values of an int64 (or, bit for bit, uint64) array, zero-copy."""
    return _fixed_values(array, np.int64)


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (sliced to the array: ``len(array) + 1`` of them) and data bytes of a string
    or large_string array, zero-copy."""
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    _, offsets, data = array.buffers()
    if offsets is None:
        offs = np.zeros(len(array) + 1, dtype=width)
    else:
        offs = np.frombuffer(offsets, dtype=width, count=array.offset + len(array) + 1)
        offs = offs[array.offset:]
    return offs, (np.frombuffer(data, dtype=np.uint8) if data is not None else _NO_BITS)


def _validity(array: pa.Array) -> np.ndarray:
    return pc.is_valid(array).to_numpy(zero_copy_only=False)


def _hash_shift(n: int) -> tuple[int, int]:
    """A power-of-two capacity with at least ``_HASH_SLOTS_PER_KEY`` slots per key, and the
    shift that takes the top ``log2(capacity)`` bits of a 64-bit hash."""
    bits = max(int(_HASH_SLOTS_PER_KEY * max(n, 1) - 1).bit_length(), 1)
    return 1 << bits, 64 - bits


def _check_rows(payload: np.ndarray) -> None:
    if len(payload) and payload.max() >= 2**31:
        raise ValueError("a reference table for a lookup holds at most 2**31 rows")


# --- indexes over one key column ----------------------------------------------------------
# Every index maps a column (never dictionary-encoded: see ``_probe_column``) to payloads:
# ``probe`` for every row (or the selected ones), ``select`` compacted to the matches.


class _DenseEncoder:
    """Single integer key in a compact range: a lookup table and a numba probe."""

    def __init__(self, keys: np.ndarray, payload: np.ndarray) -> None:
        self.lo = int(keys.min()) if len(keys) else 0
        span = int(keys.max()) - self.lo + 1 if len(keys) else 0
        _check_rows(payload)
        # int32 entries: half the cache footprint of int64 for the random probes.
        self.table = np.full(span, -1, dtype=np.int32)
        self.table[keys - self.lo] = payload

    @staticmethod
    def fits(keys: np.ndarray) -> bool:
        if not len(keys):
            return True
        span = int(keys.max()) - int(keys.min()) + 1
        return span <= DENSE_FILL_FACTOR * len(keys) + _DENSE_SLACK

    def probe_values(self, values: np.ndarray, valid: tuple, sel: tuple, null_code: int,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        out = np.empty(len(values), dtype=np.int64) if out is None else out
        nulls = _table_probe(values, *valid, *sel, null_code, self.lo, self.table, out)
        return out, nulls

    def probe(self, array: pa.Array, sel: tuple = _NO_SEL, null_code: int = _MISS,
              out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        return self.probe_values(_int_values(array), _validity_bits(array), sel, null_code,
                                 out)

    def select_values(self, values: np.ndarray, valid: tuple, mask: tuple
                      ) -> tuple[np.ndarray, np.ndarray, int]:
        positions = np.empty(len(values), dtype=np.int64)
        rows = np.empty(len(values), dtype=np.int64)
        kept, nulls = _dense_select(values, *valid, *mask[:2], self.lo, self.table, positions,
                                    rows)
        return positions[:kept], rows[:kept], nulls

    def select(self, array: pa.Array, mask: tuple) -> tuple[np.ndarray, np.ndarray, int]:
        return self.select_values(_int_values(array), _validity_bits(array), mask)


class _IntHashIndex:
    """int64 (or uint64, compared bit for bit) keys over a wide range: open addressing with
    linear probing in one ``(capacity, 2)`` int64 array, a key and its payload side by side
    so that a probe touches one cache line."""

    def __init__(self, keys: np.ndarray, payload: np.ndarray) -> None:
        _check_rows(payload)
        capacity, self.shift = _hash_shift(len(keys))
        self.slots = np.full((capacity, 2), -1, dtype=np.int64)
        _int_build(np.ascontiguousarray(keys, dtype=np.int64),
                   np.ascontiguousarray(payload, dtype=np.int64), self.shift, self.slots)

    def probe_values(self, values: np.ndarray, valid: tuple, sel: tuple, null_code: int,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        out = np.empty(len(values), dtype=np.int64) if out is None else out
        _, nulls = _int_lookup(values, *valid, *sel, null_code, False, self.slots, self.shift,
                               out, _NO_POSITIONS)
        return out, nulls

    def probe(self, array: pa.Array, sel: tuple = _NO_SEL, null_code: int = _MISS,
              out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        return self.probe_values(_int_values(array), _validity_bits(array), sel, null_code,
                                 out)

    def select_values(self, values: np.ndarray, valid: tuple, mask: tuple
                      ) -> tuple[np.ndarray, np.ndarray, int]:
        positions = np.empty(len(values), dtype=np.int64)
        rows = np.empty(len(values), dtype=np.int64)
        kept, nulls = _int_lookup(values, *valid, *mask, _MISS, True, self.slots, self.shift,
                                  rows, positions)
        return positions[:kept], rows[:kept], nulls

    def select(self, array: pa.Array, mask: tuple) -> tuple[np.ndarray, np.ndarray, int]:
        return self.select_values(_int_values(array), _validity_bits(array), mask)


class _StrHashIndex:
    """String keys: the reference strings copied once into contiguous offsets + bytes, and an
    open-addressing index of ``[64-bit hash, key number]`` slots. A probe hashes the stream
    string's bytes in place (string or large_string buffers) and compares bytes only when the
    full hash matches."""

    def __init__(self, keys: pa.Array, payload: np.ndarray) -> None:
        _check_rows(payload)
        offsets, data = _string_buffers(keys)
        # Rebased to start at 0 and widened to int64: one kernel specialisation for every
        # reference, whatever its slice offset or offset width.
        self.offsets = offsets.astype(np.int64) - int(offsets[0])
        self.data = np.ascontiguousarray(data[int(offsets[0]):int(offsets[-1])])
        capacity, self.shift = _hash_shift(len(keys))
        self.slots = np.full((capacity, 2), -1, dtype=np.int64)
        _str_build(self.offsets, self.data, self.shift, self.slots)
        self.payload = np.ascontiguousarray(payload, dtype=np.int64)

    def probe(self, array: pa.Array, sel: tuple = _NO_SEL, null_code: int = _MISS,
              out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        offsets, data = _string_buffers(array)
        out = np.empty(len(array), dtype=np.int64) if out is None else out
        _, nulls = _str_lookup(offsets, data, *_validity_bits(array), *sel, null_code, False,
                               self.offsets, self.data, self.payload, self.slots, self.shift,
                               out, _NO_POSITIONS)
        return out, nulls

    def select(self, array: pa.Array, mask: tuple) -> tuple[np.ndarray, np.ndarray, int]:
        offsets, data = _string_buffers(array)
        positions = np.empty(len(array), dtype=np.int64)
        rows = np.empty(len(array), dtype=np.int64)
        kept, nulls = _str_lookup(offsets, data, *_validity_bits(array), *mask, _MISS, True,
                                  self.offsets, self.data, self.payload, self.slots,
                                  self.shift, rows, positions)
        return positions[:kept], rows[:kept], nulls


class _SetEncoder:
    """Key types without a numba index (floats, dates, binary…): Arrow's hash-based
    ``index_in`` against the distinct key values, per batch."""

    def __init__(self, keys: pa.Array, payload: np.ndarray) -> None:
        self.keys = keys
        self.payload = payload

    def probe(self, array: pa.Array, sel: tuple = _NO_SEL, null_code: int = _MISS,
              out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        positions = pc.index_in(array, value_set=self.keys)
        codes = positions.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        found = codes >= 0
        codes[found] = self.payload[codes[found]]
        invalid = ~_validity(array) if array.null_count else np.zeros(len(codes), np.bool_)
        if sel[2]:
            bits = np.unpackbits(sel[0], bitorder="little")[sel[1]:sel[1] + len(codes)]
            unselected = bits == 0
            codes[unselected] = -1
            invalid &= ~unselected
        codes[invalid] = null_code
        if out is not None:
            out[:] = codes
            codes = out
        return codes, int(np.count_nonzero(invalid))

    def select(self, array: pa.Array, mask: tuple) -> tuple[np.ndarray, np.ndarray, int]:
        codes, nulls = self.probe(array, mask)
        positions = np.flatnonzero(codes >= 0)
        return positions, codes[positions], nulls


def _column_index(keys: pa.Array, payload: np.ndarray, allow_dense: bool = True) -> object:
    """The index for one (normalized, null-free, not dictionary-encoded) key column."""
    if keys.type in (pa.int64(), pa.uint64()):
        values = _int_values(keys)
        if allow_dense and keys.type == pa.int64() and _DenseEncoder.fits(values):
            return _DenseEncoder(values, payload)
        return _IntHashIndex(values, payload)
    if pa.types.is_string(keys.type):
        return _StrHashIndex(keys, payload)
    return _SetEncoder(keys, payload)


def _dictionary_table(index: object, array: pa.DictionaryArray) -> tuple[np.ndarray, tuple]:
    """Payload per dictionary entry (``-1`` for a null or unknown entry), and the indices'
    values and validity to expand it through."""
    per_entry, _ = index.probe(_plain(array.dictionary))
    indices = array.indices
    if pa.types.is_unsigned_integer(indices.type):  # numba mixes uint64 and int64 as floats
        indices = indices.cast(pa.int64())
    dtype = indices.type.to_pandas_dtype()
    return per_entry, (_fixed_values(indices, dtype), _validity_bits(indices))


def _probe_column(index: object, array: pa.Array, sel: tuple = _NO_SEL,
                  null_code: int = _MISS, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, int]:
    """Payload per row (``-1`` none, ``null_code`` for a null key) and the selected nulls,
    written to ``out`` if given; a dictionary column is probed once per dictionary entry,
    then expanded through the indices."""
    if pa.types.is_dictionary(array.type):
        per_entry, (values, valid) = _dictionary_table(index, array)
        out = np.empty(len(values), dtype=np.int64) if out is None else out
        nulls = _table_probe(values, *valid, *sel, null_code, 0, per_entry, out)
        return out, nulls
    return index.probe(array, sel, null_code, out)


def _select_column(index: object, array: pa.Array, mask: tuple
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    if pa.types.is_dictionary(array.type):
        per_entry, (values, valid) = _dictionary_table(index, array)
        positions = np.empty(len(values), dtype=np.int64)
        rows = np.empty(len(values), dtype=np.int64)
        kept, nulls = _dense_select(values, *valid, *mask[:2], 0, per_entry, positions, rows)
        return positions[:kept], rows[:kept], nulls
    return index.select(array, mask)


class _MultiEncoder:
    """Several key columns: per-column codes combined into one integer, then resolved.

    Each column has its own index over its distinct reference values (code = position among
    them), so every key type, dictionary-encoded or not, reuses the single-column kernels;
    one more numba pass combines the codes (mixed radix: the product of the cardinalities is
    checked to fit) and a dense table or an int64 hash index resolves the combined code.
    """

    def __init__(self, keys: list[pa.Array], payload: np.ndarray) -> None:
        uniques = [pc.unique(k) for k in keys]
        cards = [max(len(u), 1) for u in uniques]
        if float(np.prod(cards, dtype=np.float64)) >= 2.0**62:
            raise ValueError("too many distinct key combinations for a multi-column lookup")
        self.strides = np.cumprod([1, *cards[:-1]]).astype(np.int64)
        self.columns = [_column_index(u, np.arange(len(u), dtype=np.int64)) for u in uniques]
        # The reference's own combined codes (every column matches: no nulls, no misses).
        codes = self._codes(keys, _NO_SEL)
        combined = (codes.astype(np.int64) * self.strides[:, None]).sum(axis=0)
        # A dense table keeps the last of repeated keys, a hash index the first: as before.
        if _DenseEncoder.fits(combined):
            self.resolve: object = _DenseEncoder(combined, payload)
        else:
            self.resolve = _IntHashIndex(combined, payload)

    def _codes(self, arrays: list[pa.Array], sel: tuple) -> np.ndarray:
        """Per-column codes, one row per key column (``-1`` no match or not selected, ``-2``
        null), each written in place by its column's probe."""
        # int32: a code is a position among at most 2**31 reference values; half the memory
        # traffic of int64 through the combining pass.
        codes = np.empty((len(arrays), len(arrays[0])), dtype=np.int32)
        for j, (index, array) in enumerate(zip(self.columns, arrays, strict=True)):
            _probe_column(index, array, sel, _NULL, codes[j])
        return codes

    def _resolve(self, codes: np.ndarray, compact: bool) -> tuple[np.ndarray, np.ndarray,
                                                                  int, int]:
        n = codes.shape[1]
        out = np.empty(n, dtype=np.int64)
        positions = np.empty(n if compact else 0, dtype=np.int64)
        r = self.resolve
        if isinstance(r, _DenseEncoder):
            args = (True, r.lo, r.table, _NO_SLOTS, 0)
        else:
            args = (False, 0, _NO_TABLE, r.slots, r.shift)
        kept, nulls = _combine_lookup(codes, self.strides, compact, *args, out, positions)
        return out, positions, kept, nulls

    def probe(self, arrays: list[pa.Array]) -> tuple[np.ndarray, int]:
        out, _, _, nulls = self._resolve(self._codes(arrays, _NO_SEL), False)
        return out, nulls

    def select(self, arrays: list[pa.Array], mask: tuple) -> tuple[np.ndarray, np.ndarray,
                                                                    int]:
        rows, positions, kept, nulls = self._resolve(self._codes(arrays, mask), True)
        return positions[:kept], rows[:kept], nulls


# --- normalization --------------------------------------------------------------------------


def _normalize(array: pa.Array, cast_large: bool = True) -> pa.Array:
    """Bring key columns of compatible types to one type: integers to int64, text to string
    (a stream's large_string is probed in place when ``cast_large`` is false)."""
    t = array.type
    if pa.types.is_dictionary(t):
        return pa.DictionaryArray.from_arrays(array.indices, _normalize(array.dictionary))
    if pa.types.is_integer(t) and t not in (pa.int64(), pa.uint64()):
        return array.cast(pa.int64())
    if pa.types.is_string_view(t) or (cast_large and pa.types.is_large_string(t)):
        return array.cast(pa.string())
    return array


def _plain(array: pa.Array) -> pa.Array:
    """A dictionary's values, as the index for its reference column expects them."""
    return _normalize(array)


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


def _in_place(array: pa.Array, target: pa.DataType, index: object) -> bool:
    """Whether the kernels can probe ``array`` as it is, with null keys counted from its
    validity bitmap exactly as the lookup has always counted them.

    Not so when int64 meets uint64 (``_align`` turns unrepresentable values into nulls that
    do not count as null keys), when a dictionary has null entries as well as null indices
    (``is_valid`` counts those rows as null keys), or for a large_string stream against a
    key type the string index does not serve.
    """
    if pa.types.is_dictionary(array.type):
        if array.null_count and array.dictionary.null_count:
            return False
        value_type = array.type.value_type
    else:
        value_type = array.type
    if pa.types.is_large_string(value_type):
        return isinstance(index, _StrHashIndex)
    return value_type == target


def _warm_up() -> None:
    """Compile (or load from cache) every kernel for the array types Arrow buffers give.

    Called when a lookup is built, so the one-off compile cost is paid there, not inside the
    first batch.
    """
    global _WARM
    if _WARM:
        return
    _WARM = True
    ints = pa.array([3, None, 5])
    wide = pa.array([3, None, 2**40])
    text = pa.array(["a", None, "bc"])
    mask = pa.array([True, True, False])
    for ref, stream in ((ints, ints), (wide, wide), (text, text),
                        (text, text.cast(pa.large_string())), (text, text.dictionary_encode())):
        lookup = Lookup.build(pa.table({"k": ref}), ["k"])
        lookup.rows([stream])
        lookup.select([stream], mask)
    # Several keys: one column of each index kind (hash int, string, dense int).
    several = Lookup.build(pa.table({"k": wide, "s": text, "i": ints}), ["k", "s", "i"])
    several.rows([wide, text, ints])
    several.select([wide, text, ints], mask)


_WARM = False


# --- the lookup -----------------------------------------------------------------------------


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
        if len(arrays) == 1:
            encoder: object = _column_index(arrays[0], payload)
        else:
            encoder = _MultiEncoder(arrays, payload)
        strategy = "dense" if isinstance(encoder, _DenseEncoder) else "hash"
        _warm_up()
        return cls(strategy, unique, encoder, group_start, group_count, group_rows,
                   tuple(a.type for a in arrays))

    def _columns(self, arrays: list[pa.Array]) -> list[pa.Array] | None:
        """The stream key columns normalized for in-place probing, or None when one of them
        needs the general path (see :func:`_in_place`)."""
        arrays = [_normalize(a, cast_large=False) for a in arrays]
        indexes = (self.encoder.columns if isinstance(self.encoder, _MultiEncoder)
                   else [self.encoder])
        for a, t, index in zip(arrays, self.key_types, indexes, strict=True):
            if not _in_place(a, t, index):
                return None
        return arrays

    def _general(self, arrays: list[pa.Array]) -> tuple[list[pa.Array], np.ndarray | None]:
        """Stream keys aligned to the reference types, and the validity of each row (None
        when no key column has nulls), counted before aligning."""
        arrays = [_normalize(a) for a in arrays]
        valid = None
        for a in arrays:
            if a.null_count:
                valid = _validity(a) if valid is None else valid & _validity(a)
        return [_align(a, t) for a, t in zip(arrays, self.key_types, strict=True)], valid

    def rows(self, arrays: list[pa.Array]) -> tuple[np.ndarray, int]:
        """Reference rows (or groups) for each stream row, ``-1`` for none; and the null-key count.

        Parameters
        ----------
        arrays
            The stream's key columns, in the order of the reference keys.
        """
        columns = self._columns(arrays)
        if columns is not None:
            if isinstance(self.encoder, _MultiEncoder):
                return self.encoder.probe(columns)
            return _probe_column(self.encoder, columns[0])
        columns, valid = self._general(arrays)
        if len(columns) == 1:  # one column: its own null count (null indices only)
            nulls = _normalize(arrays[0]).null_count
        else:
            nulls = 0 if valid is None else len(valid) - int(np.count_nonzero(valid))
        if isinstance(self.encoder, _MultiEncoder):
            return self.encoder.probe(columns)[0], nulls
        return _probe_column(self.encoder, columns[0])[0], nulls

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
        columns = self._columns(arrays)
        if columns is None:
            found, _ = self.rows(arrays)
            _, valid = self._general(arrays)
            selected = mask.to_numpy(zero_copy_only=False)
            positions = np.flatnonzero(selected & (found >= 0))
            nulls = 0 if valid is None else int(np.count_nonzero(selected & ~valid))
            return positions, found[positions], nulls
        sel = _selection(mask)
        if isinstance(self.encoder, _MultiEncoder):
            return self.encoder.select(columns, sel)
        return _select_column(self.encoder, columns[0], sel)
