"""Key to dense slot id, a batch at a time: open-addressing hash maps in numba.

:class:`MemoryState` keeps each field in one numpy array indexed by a *slot*; a slot map
gives every live key its slot. One numba pass per batch maps all rows (rows of the same key
share a slot), inserts unseen keys and reports which rows' keys are new. Removed keys free
their slots for reuse; :meth:`SlotMap.compact` renumbers the live slots densely.

The table is linear probing with each entry's columns side by side (one cache line per
probe), load factor at most one half, deletions as tombstones cleared by rehashing.
``Int64SlotMap`` entries are ``(slot, key)``; ``StringSlotMap`` entries are ``(slot, 64-bit
hash, heap offset, length)`` with the UTF-8 bytes in a heap, compared on a hash match (so a
probe touches the entry and then the key's bytes, nothing else). We measured this against
pandas' ``Int64Factorizer`` (a private API with no deletion), a numba typed ``Dict`` and
sorted arrays with ``searchsorted`` on 10K-row batches over 100K keys: it was the fastest
for int64 keys, and about 5x faster than pandas' object and string hash tables for strings.

Examples
--------
>>> import pyarrow as pa
>>> m = Int64SlotMap()
>>> slots, is_new, new_slots = m.acquire(pa.array([7, 9, 7]))
>>> slots.tolist(), is_new.tolist(), new_slots.tolist()
([0, 1, 0], [True, True, True], [0, 1])
>>> m.acquire(pa.array([9, 5]))[:2]
(array([1, 2]), array([False,  True]))
>>> m.remove(np.array([1]))
>>> m.keys_at(m.live_slots()).to_pylist(), len(m)
([7, 5], 2)
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import pyarrow as pa

from sabot_lab.kernels import PREFETCH_DISTANCE, prefetch
from sabot_lab.state.keys import int_values, string_buffers

__all__ = ["Int64SlotMap", "SlotMap", "StringSlotMap"]

log = logging.getLogger(__name__)

EMPTY = -1
TOMBSTONE = -2
_MIN_TABLE = 16
#: :meth:`SlotMap.needs_compaction` once more than this many slots (or string heap words),
#: and more than are in use, are free.
COMPACT_MIN_FREE = 1024

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _mix(z):  # pragma: no cover - numba
    """splitmix64's finalizer: every input bit reaches every output bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(nogil=True, cache=True)
def _pack(offsets, data, words, word_bytes, starts, hashes):  # pragma: no cover - numba
    """Copy each key into whole zero-padded uint64 words (``word_bytes`` is ``words`` as
    uint8) and hash it a word at a time, the length mixed in first."""
    pos = 0
    for i in range(offsets.shape[0] - 1):
        a = offsets[i]
        n = offsets[i + 1] - a
        nw = (n + 7) >> 3
        if nw:
            words[pos + nw - 1] = 0
        word_bytes[pos * 8:pos * 8 + n] = data[a:a + n]
        h = _mix(np.uint64(n) ^ _M2)
        for w in range(pos, pos + nw):
            h = _mix(h ^ words[w])
        hashes[i] = np.int64(h)
        starts[i] = pos
        pos += nw


@numba.njit(inline="always")
def _int_hash(k):  # pragma: no cover - numba
    return np.int64(_mix(np.uint64(k)))


@numba.njit(inline="always")
def _allocate(alive, fresh, free, n_free, hw):  # pragma: no cover - numba
    """A slot for a new key: the last freed one, else the next never used; returns
    ``(slot, n_free, hw)``."""
    if n_free > 0:
        n_free -= 1
        s = free[n_free]
    else:
        s = hw
        hw += 1
    alive[s] = True
    fresh[s] = True
    return s, n_free, hw


@numba.njit(inline="always")
def _finish(slots, is_new, fresh, new_slots, n_new):  # pragma: no cover - numba
    """Rows whose key was inserted by this batch are new; then clear the scratch flags."""
    for i in range(slots.shape[0]):
        is_new[i] = fresh[slots[i]]
    for j in range(n_new):
        fresh[new_slots[j]] = False


@numba.njit(nogil=True, cache=True)
def _int_acquire(keys, insert, table, slot_key, alive, fresh, free, n_free, hw, slots,
                 is_new, new_slots):  # pragma: no cover - numba
    """Map each key to its slot (inserting unseen keys when ``insert``, else -1).

    Returns ``(new keys, n_free, high water, table entries taken from EMPTY)``.
    """
    mask = table.shape[0] - 1
    n_new = 0
    filled = 0
    n_keys = keys.shape[0]
    for i in range(n_keys):
        if i + PREFETCH_DISTANCE < n_keys:  # the table is probed at random: overlap the loads
            prefetch(table, _int_hash(keys[i + PREFETCH_DISTANCE]) & mask)
        k = keys[i]
        h = _int_hash(k) & mask
        tomb = -1
        s = EMPTY
        while True:
            s = table[h, 0]
            if s == EMPTY:
                break
            if s == TOMBSTONE:
                if tomb < 0:
                    tomb = h
            elif table[h, 1] == k:
                break
            h = (h + 1) & mask
        if s < 0 and insert:
            s, n_free, hw = _allocate(alive, fresh, free, n_free, hw)
            if tomb >= 0:
                h = tomb
            else:
                filled += 1
            table[h, 0] = s
            table[h, 1] = k
            slot_key[s] = k
            new_slots[n_new] = s
            n_new += 1
        slots[i] = s
    if insert:
        _finish(slots, is_new, fresh, new_slots, n_new)
    return n_new, n_free, hw, filled


@numba.njit(inline="always")
def _same_words(heap, o, words, w, nw):  # pragma: no cover - numba
    j = 0
    while j < nw and heap[o + j] == words[w + j]:
        j += 1
    return j == nw


@numba.njit(inline="always")
def _str_find(table, hk, n, heap, words, w, exact):  # pragma: no cover - numba
    """Probe for the key of ``n`` bytes packed at ``words[w:]`` with hash ``hk``, comparing
    hash and length (and the words if ``exact``); returns ``(position, slot or EMPTY,
    first tombstone or -1)``."""
    mask = table.shape[0] - 1
    h = hk & mask
    tomb = -1
    while True:
        s = table[h, 0]
        if s == EMPTY:
            return h, s, tomb
        if s == TOMBSTONE:
            if tomb < 0:
                tomb = h
        elif (table[h, 1] == hk and table[h, 3] == n
              and (not exact or _same_words(heap, table[h, 2], words, w, (n + 7) >> 3))):
            return h, s, tomb
        h = (h + 1) & mask


@numba.njit(inline="always")
def _str_insert(table, h, tomb, hk, words, w, n, heap, heap_used, slot_off, slot_len,
                slot_hash, alive, fresh, free, n_free, hw):  # pragma: no cover - numba
    """Insert a key at probe end ``h`` (or the first tombstone on the way); returns
    ``(slot, n_free, hw, heap_used, 1 if an EMPTY entry was taken else 0)``."""
    s, n_free, hw = _allocate(alive, fresh, free, n_free, hw)
    filled = 1
    if tomb >= 0:
        h = tomb
        filled = 0
    nw = (n + 7) >> 3
    table[h, 0] = s
    table[h, 1] = hk
    table[h, 2] = heap_used
    table[h, 3] = n
    slot_off[s] = heap_used
    slot_len[s] = n
    slot_hash[s] = hk
    heap[heap_used:heap_used + nw] = words[w:w + nw]
    return s, n_free, hw, heap_used + nw, filled


@numba.njit(nogil=True, cache=True)
def _str_acquire(lengths, words, starts, hashes, insert, table, slot_off, slot_len, slot_hash,
                 heap, heap_used, alive, fresh, free, n_free, hw, slots, is_new, new_slots,
                 found_at):  # pragma: no cover - numba
    """As :func:`_int_acquire` for keys packed by :func:`_pack`; new keys' words are
    appended to ``heap``.

    Two passes, so that the random memory accesses of different rows overlap instead of
    waiting on each other: probe by hash and length (inserting unseen keys), then compare
    the words of every match, probing again word-exact on a hash collision. ``found_at`` is
    scratch, one per row. Returns ``(new keys, n_free, high water, table entries taken from
    EMPTY, heap used)``.
    """
    rows = lengths.shape[0]
    n_new = 0
    filled = 0
    for i in range(rows):
        h, s, tomb = _str_find(table, hashes[i], lengths[i], heap, words, starts[i], False)
        found_at[i] = h
        if s == EMPTY and insert:
            s, n_free, hw, heap_used, f = _str_insert(
                table, h, tomb, hashes[i], words, starts[i], lengths[i], heap, heap_used,
                slot_off, slot_len, slot_hash, alive, fresh, free, n_free, hw)
            filled += f
            new_slots[n_new] = s
            n_new += 1
            found_at[i] = -1
        slots[i] = s
    for i in range(rows):
        if found_at[i] < 0 or slots[i] == EMPTY or _same_words(
                heap, table[found_at[i], 2], words, starts[i], (lengths[i] + 7) >> 3):
            continue
        h, s, tomb = _str_find(table, hashes[i], lengths[i], heap, words, starts[i], True)
        if s == EMPTY and insert:
            s, n_free, hw, heap_used, f = _str_insert(
                table, h, tomb, hashes[i], words, starts[i], lengths[i], heap, heap_used,
                slot_off, slot_len, slot_hash, alive, fresh, free, n_free, hw)
            filled += f
            new_slots[n_new] = s
            n_new += 1
        slots[i] = s
    if insert:
        _finish(slots, is_new, fresh, new_slots, n_new)
    return n_new, n_free, hw, filled, heap_used


@numba.njit(nogil=True, cache=True)
def _remove(slots, hashes, table, alive, free, n_free):  # pragma: no cover - numba
    """Delete the table entries of live ``slots`` (whose key hashes are ``hashes``) and free
    the slots; returns ``(n_free, table entries given back to EMPTY)``."""
    mask = table.shape[0] - 1
    emptied = 0
    for j in range(slots.shape[0]):
        s = slots[j]
        h = hashes[j] & mask
        while table[h, 0] != s:
            h = (h + 1) & mask
        # An entry followed by an empty one ends every probe run through it: it can be empty.
        if table[(h + 1) & mask, 0] == EMPTY:
            table[h, 0] = EMPTY
            emptied += 1
        else:
            table[h, 0] = TOMBSTONE
        alive[s] = False
        free[n_free] = s
        n_free += 1
    return n_free, emptied


@numba.njit(nogil=True, cache=True)
def _rehash(slots, rows, hashes, table):  # pragma: no cover - numba
    """Insert slots with their entries' other columns (``rows``), keys known distinct, into
    an empty table."""
    mask = table.shape[0] - 1
    n = slots.shape[0]
    for j in range(n):
        if j + PREFETCH_DISTANCE < n:
            prefetch(table, hashes[j + PREFETCH_DISTANCE] & mask)
        h = hashes[j] & mask
        while table[h, 0] != EMPTY:
            h = (h + 1) & mask
        table[h, 0] = slots[j]
        table[h, 1:] = rows[j]


@numba.njit(nogil=True, cache=True)
def _int_hashes(keys, out):  # pragma: no cover - numba
    for j in range(keys.shape[0]):
        out[j] = _int_hash(keys[j])


@numba.njit(nogil=True, cache=True)
def _gather_bytes(heap, offs, lens, out_offsets, out):  # pragma: no cover - numba
    """Copy the heap bytes of several keys one after another into ``out``."""
    for j in range(offs.shape[0]):
        o = out_offsets[j]
        out[o:o + lens[j]] = heap[offs[j]:offs[j] + lens[j]]


#: Integer keys spanning fewer values than this get a dense key -> slot cache (8 bytes each).
DENSE_KEYS = 1 << 22


def _pow2(n: int) -> int:
    return max(_MIN_TABLE, 1 << max(int(n) - 1, 0).bit_length())


def _grown(array: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(n, dtype=array.dtype)
    out[:len(array)] = array
    return out


class SlotMap:
    """Key to slot id for one key type; a slot stays with its key until the key is removed.

    Subclasses store the keys; this class allocates slots, tracks which are live and keeps
    the hash table's load factor at most one half.
    """

    kind: str
    #: Columns of a table entry: the slot, then what a probe compares.
    _width = 2

    def __init__(self) -> None:
        self._table = np.full((_MIN_TABLE, self._width), EMPTY, dtype=np.int64)
        self._used = 0  # table entries not EMPTY (live + tombstones)
        self._alive = np.zeros(0, dtype=np.bool_)
        self._fresh = np.zeros(0, dtype=np.bool_)
        self._free = np.zeros(0, dtype=np.int64)
        self._n_free = 0
        self._hw = 0
        self._live = 0

    def __len__(self) -> int:
        return self._live

    @property
    def high_water(self) -> int:
        """One more than the largest slot id ever handed out (and not compacted away)."""
        return self._hw

    @property
    def nbytes(self) -> int:
        """Bytes held by the table and the per-slot arrays."""
        return sum(a.nbytes for a in self._arrays())

    def live_slots(self) -> np.ndarray:
        """The slots of all live keys, ascending."""
        return np.flatnonzero(self._alive[:self._hw])

    def acquire(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slots for a batch of keys, inserting the unseen ones.

        Returns ``(slots, is_new, new_slots)``: a slot per row, whether the row's key was
        unseen before this call, and the slots given to unseen keys (once each).
        """
        n = len(keys)
        self._reserve(n)
        slots = np.empty(n, dtype=np.int64)
        is_new = np.empty(n, dtype=np.bool_)
        new_slots = np.empty(n, dtype=np.int64)
        n_new = self._probe(keys, True, slots, is_new, new_slots)
        self._live += n_new
        return slots, is_new, new_slots[:n_new]

    def lookup(self, keys: pa.Array) -> np.ndarray:
        """The slot of each key, -1 for keys not present."""
        slots = np.empty(len(keys), dtype=np.int64)
        self._probe(keys, False, slots, slots.astype(np.bool_), slots)
        return slots

    def remove(self, slots: np.ndarray) -> None:
        """Remove the keys held in live ``slots`` (distinct); their slots are reused."""
        slots = np.asarray(slots, dtype=np.int64)
        self._n_free, emptied = _remove(slots, self._slot_hashes(slots), self._table,
                                        self._alive, self._free, self._n_free)
        self._used -= emptied
        self._live -= len(slots)

    def needs_compaction(self) -> bool:
        """More slots are free than live (and more than :data:`COMPACT_MIN_FREE`)."""
        free = self._hw - self._live
        return free > max(self._live, COMPACT_MIN_FREE)

    def compact(self) -> np.ndarray:
        """Renumber the live keys' slots ``0 .. len - 1`` in slot order and shrink.

        Returns the old slot of each new slot, to reorder arrays indexed by slot.
        """
        order = self.live_slots()
        self._compact_keys(order)
        n = len(order)
        self._alive = np.ones(n, dtype=np.bool_)
        self._fresh = np.zeros(len(self._alive), dtype=np.bool_)
        self._free = np.zeros(len(self._alive), dtype=np.int64)
        self._n_free = 0
        self._hw = n
        self._rebuild_table(_pow2(4 * n))
        return order

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` more keys: slot arrays and a table at most half full after."""
        need = self._hw + rows
        if need > len(self._alive):
            size = max(need, 2 * len(self._alive))
            self._alive = _grown(self._alive, size)
            self._alive[self._hw:] = False
            self._fresh = np.zeros(size, dtype=np.bool_)
            self._free = _grown(self._free, size)
            self._grow_slots(size)
        if 2 * (self._used + rows) > len(self._table):
            self._rebuild_table(_pow2(4 * (self._live + rows)))

    def _rebuild_table(self, size: int) -> None:
        log.debug("%s: rehash %d live keys into %d entries", type(self).__name__, self._live,
                  size)
        self._table = np.full((size, self._width), EMPTY, dtype=np.int64)
        live = self.live_slots()
        hashes = self._slot_hashes(live)
        _rehash(live, self._table_rows(live, hashes), hashes, self._table)
        self._used = len(live)

    def _arrays(self) -> list[np.ndarray]:
        return [self._table, self._alive, self._fresh, self._free]

    def _probe(self, keys: pa.Array, insert: bool, slots: np.ndarray, is_new: np.ndarray,
               new_slots: np.ndarray) -> int:
        raise NotImplementedError

    def _slot_hashes(self, slots: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _table_rows(self, slots: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """Columns 1.. of the table entries of ``slots``."""
        raise NotImplementedError

    def _grow_slots(self, size: int) -> None:
        raise NotImplementedError

    def _compact_keys(self, order: np.ndarray) -> None:
        raise NotImplementedError

    def keys_at(self, slots: np.ndarray) -> pa.Array:
        """The keys held in ``slots``, as an Arrow array."""
        raise NotImplementedError


class Int64SlotMap(SlotMap):
    """Slots for int64 keys."""

    kind = "int64"

    def __init__(self) -> None:
        super().__init__()
        self._slot_key = np.zeros(0, dtype=np.int64)
        # A cache for keys in a compact range (account ids 1..n): key - base -> slot, or -1.
        # Looking a batch up in it is one gather, with no hashing and fewer cache misses; the
        # hash table stays the truth, and any removal or renumbering drops the cache.
        self._dense: np.ndarray | None = None
        self._dense_base = 0
        self._dense_off = False  # keys too spread out: never build it

    def _probe(self, keys: pa.Array, insert: bool, slots: np.ndarray, is_new: np.ndarray,
               new_slots: np.ndarray) -> int:
        values = int_values(keys)
        dense = self._dense_for(values) if insert else None
        if dense is None:
            return self._hash_probe(values, insert, slots, is_new, new_slots)
        found = dense[values - self._dense_base]
        missing = found < 0
        slots[:] = found
        is_new[:] = False
        if not missing.any():
            return 0
        # Only keys the cache does not know go through the hash table.
        rows = np.flatnonzero(missing)
        sub_slots = np.empty(len(rows), dtype=np.int64)
        sub_new = np.empty(len(rows), dtype=np.bool_)
        n_new = self._hash_probe(values[rows], insert, sub_slots, sub_new, new_slots)
        slots[rows] = sub_slots
        is_new[rows] = sub_new
        dense[values[rows] - self._dense_base] = sub_slots
        return n_new

    def _hash_probe(self, values: np.ndarray, insert: bool, slots: np.ndarray,
                    is_new: np.ndarray, new_slots: np.ndarray) -> int:
        n_new, self._n_free, self._hw, filled = _int_acquire(
            values, insert, self._table, self._slot_key, self._alive, self._fresh,
            self._free, self._n_free, self._hw, slots, is_new, new_slots)
        self._used += filled
        return n_new

    def _dense_for(self, values: np.ndarray) -> np.ndarray | None:
        """The dense cache, grown to cover ``values``; ``None`` if they are too spread out."""
        if self._dense_off or not len(values):
            return None
        low, high = int(values.min()), int(values.max())
        if self._dense is not None and low >= self._dense_base and (
                high < self._dense_base + len(self._dense)):
            return self._dense
        live = self.live_slots()
        if len(live):  # the cache covers every live key too
            held = self._slot_key[live]
            low, high = min(low, int(held.min())), max(high, int(held.max()))
        if high - low >= DENSE_KEYS:
            self._dense, self._dense_off = None, True
            return None
        dense = np.full(high - low + 1, -1, dtype=np.int64)
        dense[self._slot_key[live] - low] = live
        self._dense, self._dense_base = dense, low
        return self._dense

    def remove(self, slots: np.ndarray) -> None:
        super().remove(slots)
        self._dense = None  # rebuilt from the live keys when next needed

    def compact(self) -> np.ndarray:
        order = super().compact()
        self._dense = None
        return order

    def _slot_hashes(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty(len(slots), dtype=np.int64)
        _int_hashes(self._slot_key[slots], out)
        return out

    def _table_rows(self, slots: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        return self._slot_key[slots].reshape(-1, 1)

    def _grow_slots(self, size: int) -> None:
        self._slot_key = _grown(self._slot_key, size)

    def _compact_keys(self, order: np.ndarray) -> None:
        self._slot_key = self._slot_key[order]

    def keys_at(self, slots: np.ndarray) -> pa.Array:
        """The keys held in ``slots``.

        Examples
        --------
        >>> m = Int64SlotMap()
        >>> _ = m.acquire(pa.array([-4, 2**62]))
        >>> m.keys_at(np.array([1, 0])).to_pylist()
        [4611686018427387904, -4]
        """
        return pa.array(self._slot_key[slots], type=pa.int64())

    def _arrays(self) -> list[np.ndarray]:
        return [*super()._arrays(), self._slot_key]


class StringSlotMap(SlotMap):
    """Slots for string keys; their UTF-8 bytes live in one growable heap of uint64 words,
    each key zero-padded to whole words so that hashing and comparing go a word at a time.

    Examples
    --------
    >>> m = StringSlotMap()
    >>> m.acquire(pa.array(["b", "a", "b"]))[0].tolist()
    [0, 1, 0]
    >>> m.lookup(pa.array(["a", "z"])).tolist()
    [1, -1]
    """

    kind = "string"
    _width = 4  # slot, hash, heap word offset, byte length: a probe reads one entry, then heap

    def __init__(self) -> None:
        super().__init__()
        self._slot_off = np.zeros(0, dtype=np.int64)  # in words
        self._slot_len = np.zeros(0, dtype=np.int64)  # in bytes
        self._slot_hash = np.zeros(0, dtype=np.int64)
        self._heap = np.zeros(0, dtype=np.uint64)
        self._heap_used = 0
        self._garbage = 0  # heap words of removed keys

    def needs_compaction(self) -> bool:
        """Free slots as for every slot map, or removed keys' bytes filling most of the heap
        (freed slots are reused, their old bytes are not)."""
        in_use = self._heap_used - self._garbage
        return super().needs_compaction() or self._garbage > max(in_use, COMPACT_MIN_FREE)

    def _probe(self, keys: pa.Array, insert: bool, slots: np.ndarray, is_new: np.ndarray,
               new_slots: np.ndarray) -> int:
        offsets, data = string_buffers(keys)
        rows = len(keys)
        words = np.empty((int(offsets[-1] - offsets[0]) + 7 * rows) // 8 + 1, dtype=np.uint64)
        starts = np.empty(rows, dtype=np.int64)
        hashes = np.empty(rows, dtype=np.int64)
        _pack(offsets, data, words, words.view(np.uint8), starts, hashes)
        if insert and self._heap_used + len(words) > len(self._heap):
            self._heap = _grown(self._heap, max(self._heap_used + len(words),
                                                2 * len(self._heap)))
        n_new, self._n_free, self._hw, filled, self._heap_used = _str_acquire(
            np.diff(offsets), words, starts, hashes, insert, self._table, self._slot_off,
            self._slot_len, self._slot_hash, self._heap, self._heap_used, self._alive,
            self._fresh, self._free, self._n_free, self._hw, slots, is_new, new_slots,
            np.empty(rows, dtype=np.int64))
        self._used += filled
        return n_new

    def remove(self, slots: np.ndarray) -> None:
        self._garbage += int(((self._slot_len[slots] + 7) >> 3).sum())
        super().remove(slots)

    def _slot_hashes(self, slots: np.ndarray) -> np.ndarray:
        return self._slot_hash[slots]

    def _table_rows(self, slots: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        return np.column_stack([hashes, self._slot_off[slots], self._slot_len[slots]])

    def _grow_slots(self, size: int) -> None:
        self._slot_off = _grown(self._slot_off, size)
        self._slot_len = _grown(self._slot_len, size)
        self._slot_hash = _grown(self._slot_hash, size)

    def _gather(self, slots: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The keys of ``slots`` one after another, each ``width``-byte aligned (1: plain
        bytes, 8: heap words), and their byte offsets."""
        lens = self._slot_len[slots]
        offsets = np.zeros(len(slots) + 1, dtype=np.int64)
        np.cumsum((lens + width - 1) // width * width, out=offsets[1:])
        data = np.zeros(int(offsets[-1]), dtype=np.uint8)
        _gather_bytes(self._heap.view(np.uint8), self._slot_off[slots] * 8, lens, offsets, data)
        return offsets, data

    def _compact_keys(self, order: np.ndarray) -> None:
        offsets, data = self._gather(order, 8)
        self._heap = data.view(np.uint64)
        self._heap_used = len(self._heap)
        self._garbage = 0
        self._slot_off = offsets[:-1] // 8
        self._slot_len = self._slot_len[order]
        self._slot_hash = self._slot_hash[order]

    def keys_at(self, slots: np.ndarray) -> pa.Array:
        """The keys held in ``slots``: ``string``, or ``large_string`` past 2 GiB of text."""
        offsets, data = self._gather(np.asarray(slots, dtype=np.int64), 1)
        large = offsets[-1] > np.iinfo(np.int32).max
        kind = pa.large_string() if large else pa.string()
        offsets = offsets if large else offsets.astype(np.int32)
        return pa.Array.from_buffers(kind, len(slots),
                                     [None, pa.py_buffer(offsets), pa.py_buffer(data)])

    def _arrays(self) -> list[np.ndarray]:
        return [*super()._arrays(), self._slot_off, self._slot_len, self._slot_hash,
                self._heap]
