"""Keyed state in memory: numpy arrays indexed by slot, a key's fields kept together.

A numba slot map (:mod:`.slotmap`) turns each batch's keys into slots in one pass. The
arrays a block hands to the kernel *are* the storage, so ``release`` only records the access
time. The fields of a key sit together in one record (:meth:`StateSpec.allocate` with
``records=True``), so a kernel that updates a key touches one or two cache lines; the field
arrays are strided views. ``expire`` is a vectorized scan of the last-access times, skipped
while no key can be old enough; expired keys' slots are reused, and the arrays are compacted
once more than half of the slots (or of a string key heap) are free.

Examples
--------
>>> import numpy as np
>>> state = MemoryState(StateSpec({"count": np.int64, "total": np.float64}, ttl=10))
>>> block = state.acquire(np.array([7, 8, 7]), now=100)
>>> np.add.at(block.arrays["count"], block.slots, 1)
>>> np.add.at(block.arrays["total"], block.slots, [1.5, 2.0, 0.5])
>>> state.release(block, now=100)
>>> state.get(7), len(state)
({'count': 2, 'total': 2.0}, 2)
>>> state.acquire([8], now=105).is_new.tolist()
[False]
>>> state.expire(now=111)
2
>>> len(state), state.get(7)
(0, None)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from sabot_lab.state.base import NEVER, KeyedState, StateBlock
from sabot_lab.state.keys import key_array, key_kind
from sabot_lab.state.slotmap import Int64SlotMap, SlotMap, StringSlotMap
from sabot_lab.state.spec import StateSpec

__all__ = ["MemoryState"]

log = logging.getLogger(__name__)

_NO_KEYS = np.iinfo(np.int64).max  # the oldest access time of an empty state


class MemoryState(KeyedState):
    """Keyed state held in numpy arrays; the default backend.

    Parameters
    ----------
    spec
        Fields, defaults and ttl.

    Examples
    --------
    >>> spec = StateSpec({"last": ("int64", 2)}, defaults={"last": -1})
    >>> state = MemoryState(spec)
    >>> block = state.acquire(["a", "b"])
    >>> block.arrays["last"][block.slots, 0] = [10, 20]
    >>> state.release(block)
    >>> state.to_table().to_pylist()
    [{'key': 'a', 'last': [10, -1]}, {'key': 'b', 'last': [20, -1]}]
    >>> state
    MemoryState(2 string keys, fields [last:int64[2]], ...)
    """

    def __init__(self, spec: StateSpec) -> None:
        super().__init__(spec)
        self._map: SlotMap | None = None
        self._data = spec.allocate(0, records=True)
        self._last = np.zeros(0, dtype=np.int64)
        self._oldest = _NO_KEYS  # no live key was last accessed before this

    # -- the protocol -------------------------------------------------------------------
    def acquire(self, keys: Any, now: int | None = None) -> StateBlock:
        """The state of ``keys``: see :meth:`KeyedState.acquire`.

        ``block.slots`` index the state's own arrays, so a kernel's updates need no copy.
        """
        keys = key_array(keys)
        self._block = None
        if len(keys) == 0:
            block = StateBlock(np.zeros(0, dtype=np.int64), self._views(),
                               np.zeros(0, dtype=np.bool_), self)
        else:
            slotmap = self._slotmap(key_kind(keys))
            slots, is_new, new_slots = slotmap.acquire(keys)
            self._reserve(slotmap.high_water)
            cutoff = self._cutoff(now)
            if cutoff is not None and self._oldest < cutoff:
                stale = ~is_new & (self._last[slots] < cutoff)
                if stale.any():
                    is_new |= stale
                    new_slots = np.concatenate([new_slots, np.unique(slots[stale])])
            self._spec.fill_defaults(self._data, new_slots)
            if len(new_slots):
                self._last[new_slots] = NEVER if now is None else now
                self._oldest = min(self._oldest, NEVER if now is None else int(now))
            block = StateBlock(slots, self._views(), is_new, self)
        self._block = block
        return block

    def release(self, block: StateBlock, now: int | None = None) -> None:
        """Record ``now`` as the last access of the block's keys (the arrays are the state)."""
        self._check_block(block)
        self._check_release_time(now)
        if now is not None and len(block.slots):
            self._last[block.slots] = now
            self._oldest = min(self._oldest, int(now))
        self._block = None

    def expire(self, now: int) -> int:
        """Remove the keys last accessed before ``now - ttl``; return how many."""
        cutoff = self._cutoff(now)
        self._block = None
        if cutoff is None or self._map is None or self._oldest >= cutoff:
            return 0
        live = self._map.live_slots()
        last = self._last[live]
        old = last < cutoff
        gone = live[old]
        self._map.remove(gone)
        kept = last[~old]
        self._oldest = int(kept.min()) if len(kept) else _NO_KEYS
        if self._map.needs_compaction():
            self._compact()
        return len(gone)

    # -- inspection ---------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self._map is None else len(self._map)

    @property
    def nbytes(self) -> int:
        """Bytes of the field arrays, access times and slot map (allocated capacity)."""
        arrays = len(self._last) * (self._spec.record_bytes + self._last.itemsize)
        return arrays + (0 if self._map is None else self._map.nbytes)

    def get(self, key: Any) -> dict[str, Any] | None:
        """One key's fields as Python values, or ``None``.

        Examples
        --------
        >>> state = MemoryState(StateSpec({"n": "int64"}, defaults={"n": 3}))
        >>> state.release(state.acquire([1]))
        >>> state.get(1), state.get(2)
        ({'n': 3}, None)
        """
        slot = self._slot_of(key)
        if slot < 0:
            return None
        return {name: array[slot].tolist() for name, array in self._data.items()}

    def keys(self) -> pa.Array:
        """Every key held, in slot order."""
        if self._map is None:
            return pa.array([], type=pa.int64())
        return self._map.keys_at(self._map.live_slots())

    def to_table(self, limit: int | None = None, last_access: bool = False) -> pa.Table:
        """Keys and fields (and optionally ``last_access``) as a table, in slot order.

        Examples
        --------
        >>> state = MemoryState(StateSpec({"n": "int64"}, ttl=5))
        >>> state.release(state.acquire([4, 2]), now=9)
        >>> state.to_table(last_access=True).to_pydict()
        {'key': [4, 2], 'n': [0, 0], 'last_access': [9, 9]}
        """
        live = np.zeros(0, dtype=np.int64) if self._map is None else self._map.live_slots()
        if limit is not None:
            live = live[:limit]
        keys = pa.array([], type=pa.int64()) if self._map is None else self._map.keys_at(live)
        arrays = {name: array[live] for name, array in self._data.items()}
        return self._table_from_arrays(keys, arrays, self._last[live] if last_access else None)

    def due(self, field: str, upto: int) -> tuple[pa.Array, np.ndarray]:
        """The keys whose int64 ``field`` is at most ``upto``, and those values.

        Examples
        --------
        >>> state = MemoryState(StateSpec({"t": "int64"}))
        >>> block = state.acquire(["a", "b", "c"])
        >>> block.arrays["t"][block.slots] = [5, 50, 9]
        >>> state.release(block)
        >>> keys, times = state.due("t", 10)
        >>> keys.to_pylist(), times.tolist()
        (['a', 'c'], [5, 9])
        """
        if self._map is None:
            return pa.array([], type=pa.int64()), np.zeros(0, dtype=np.int64)
        live = self._map.live_slots()
        values = self._data[field][live]
        hit = values <= upto
        return self._map.keys_at(live[hit]), values[hit]

    # -- internals ----------------------------------------------------------------------
    def _slotmap(self, kind: str) -> SlotMap:
        self._set_kind(kind)
        if self._map is None:
            self._map = Int64SlotMap() if kind == "int64" else StringSlotMap()
        return self._map

    def _slot_of(self, key: Any) -> int:
        keys = key_array([key])
        if self._map is None:
            return -1
        if key_kind(keys) != self._kind:
            raise TypeError(f"this state has {self._kind} keys, got {key!r}")
        return int(self._map.lookup(keys)[0])

    def _views(self) -> dict[str, np.ndarray]:
        n = 0 if self._map is None else self._map.high_water
        return {name: array[:n] for name, array in self._data.items()}

    def _reserve(self, slots: int) -> None:
        """Field arrays with room for ``slots`` slots, doubling as they grow."""
        capacity = len(self._last)
        if slots <= capacity:
            return
        size = max(slots, 2 * capacity, 16)
        # Unfilled: a slot gets its defaults when a key takes it (acquire), and untouched
        # pages cost nothing until then.
        grown = self._spec.allocate(size, records=True, fill=False)
        for name, array in self._data.items():
            grown[name][:capacity] = array
        self._data = grown
        last = np.empty(size, dtype=np.int64)
        last[:capacity] = self._last
        self._last = last

    def _compact(self) -> None:
        assert self._map is not None
        log.debug("MemoryState: compact %d live of %d slots", len(self._map),
                  self._map.high_water)
        order = self._map.compact()
        compacted = self._spec.allocate(len(order), records=True, fill=False)
        for name, array in self._data.items():
            compacted[name][:] = array[order]
        self._data = compacted
        self._last = self._last[order]

    def _load(self, table: pa.Table) -> None:
        self._map = None
        self._data = self._spec.allocate(0, records=True)
        self._last = np.zeros(0, dtype=np.int64)
        self._oldest = _NO_KEYS
        if table.num_rows == 0:
            return
        keys = key_array(table.column("key"))
        slotmap = self._slotmap(key_kind(keys))
        slots, _, _ = slotmap.acquire(keys)
        self._reserve(slotmap.high_water)
        for name, values in self._arrays_from_table(table).items():
            self._data[name][slots] = values
        last = table.column("last_access").to_numpy()
        self._last[slots] = last
        self._oldest = int(last.min())
