"""MemoryState and its slot maps: storage, slot reuse, compaction, hash collisions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot_lab.state import MemoryState, StateSpec
from sabot_lab.state.slotmap import Int64SlotMap, StringSlotMap

SPEC = StateSpec({"count": np.int64, "ring": (np.float32, 4)}, defaults={"ring": 1.5}, ttl=10)


def test_block_arrays_are_the_storage():
    state = MemoryState(SPEC)
    block = state.acquire([4, 5, 4], now=0)
    assert block.arrays["ring"].shape == (2, 4)
    assert block.arrays["ring"].tolist() == [[1.5] * 4] * 2
    state.release(block, now=0)
    block.arrays["count"][block.slots[0]] = 9
    assert state.get(4) == {"count": 9, "ring": [1.5] * 4}


def test_expired_slots_are_reused_then_compacted():
    state = MemoryState(SPEC)
    state.release(state.acquire(np.arange(3000), now=0), now=0)
    state.release(state.acquire(np.arange(1000, 3000), now=20), now=20)
    assert state.expire(25) == 1000  # 1000 free slots of 3000: kept for reuse
    block = state.acquire(np.arange(5000, 5500), now=25)
    assert block.slots.max() < 3000 and state._map.high_water == 3000
    state.release(block, now=25)
    bytes_before = state.nbytes
    assert state.expire(31) == 2000  # 500 live of 3000 slots: compacted
    assert state._map.high_water == 500
    assert state.nbytes < bytes_before
    assert sorted(state.keys().to_pylist()) == list(range(5000, 5500))
    block = state.acquire([5001, 7], now=32)
    assert block.is_new.tolist() == [False, True]


def test_string_heap_stays_bounded_under_churn():
    """Expired string keys' slots are reused at once; their bytes are reclaimed later."""
    state = MemoryState(SPEC)
    for now in range(0, 400, 20):
        keys = [f"account-{now}-{i}" for i in range(2000)]
        state.release(state.acquire(keys, now=now), now=now)
        assert state.expire(now) == (2000 if now else 0)
        assert len(state) == 2000
        assert state._map._heap_used <= 4 * 2000 * 3  # at most ~4 generations of 3-word keys
    assert sorted(state.keys().to_pylist()) == sorted(f"account-380-{i}" for i in range(2000))


def test_expire_skips_the_scan_while_nothing_can_be_old_enough():
    state = MemoryState(SPEC)
    state.release(state.acquire([1, 2], now=100), now=100)
    assert state._oldest == 100
    assert state.expire(110) == 0
    state.release(state.acquire([1, 2], now=150), now=150)
    assert state._oldest == 100  # a lower bound, tightened by the next scan
    assert state.expire(111) == 0 and state._oldest == 150
    assert state.expire(161) == 2 and state._oldest > 10**18


def test_string_slot_map_hash_collision_compares_bytes():
    """Force an entry to carry another key's hash: the bytes must still tell them apart."""
    probe = StringSlotMap()
    probe.acquire(pa.array(["cd"]))
    collision_hash = probe._slot_hash[0]
    m = StringSlotMap()
    m.acquire(pa.array(["ab"]))
    m._slot_hash[0] = collision_hash
    m._rebuild_table(len(m._table))  # "ab" now sits where "cd" probes first, with its hash
    slots, is_new, _ = m.acquire(pa.array(["cd", "cd"]))
    assert slots.tolist() == [1, 1] and is_new.tolist() == [True, True]
    assert m.lookup(pa.array(["cd"])).tolist() == [1]
    assert m.keys_at(np.array([0, 1])).to_pylist() == ["ab", "cd"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 40), max_size=30)),
                max_size=25),
       st.sampled_from(["int64", "string"]))
def test_slot_maps_match_a_dict(steps, kind):
    """Insert batches and remove keys at random: slots stay stable and distinct per key."""
    m = Int64SlotMap() if kind == "int64" else StringSlotMap()
    wrap = (lambda i: i * -(2**40)) if kind == "int64" else (lambda i: "k" * (i % 7) + str(i))
    arrow_type = pa.int64() if kind == "int64" else pa.string()
    expected: dict[object, int] = {}
    for remove, ids in steps:
        keys = [wrap(i) for i in ids]
        if remove:
            gone = sorted({k for k in keys if k in expected}, key=str)
            m.remove(np.array([expected.pop(k) for k in gone], dtype=np.int64))
            continue
        slots, is_new, new_slots = m.acquire(pa.array(keys, type=arrow_type))
        assert is_new.tolist() == [k not in expected for k in keys]
        for key, slot in zip(keys, slots.tolist(), strict=True):
            assert expected.setdefault(key, slot) == slot
        assert sorted(new_slots.tolist()) == sorted({s for s, n in zip(slots, is_new,
                                                                       strict=True) if n})
        assert len(set(expected.values())) == len(expected) == len(m)
    live = m.live_slots()
    assert dict(zip(m.keys_at(live).to_pylist(), live.tolist(), strict=True)) == expected
    order = m.compact()
    renumbered = {key: int(np.flatnonzero(order == slot)[0]) for key, slot in expected.items()}
    assert m.lookup(pa.array(list(renumbered), type=arrow_type)).tolist() == list(
        renumbered.values())


def test_repr_and_html():
    state = MemoryState(SPEC)
    assert repr(state).startswith("MemoryState(0 keys, fields [count:int64, ring:float32[4]]")
    state.release(state.acquire([f"k{i}" for i in range(8)], now=1), now=1)
    assert "MemoryState(8 string keys" in repr(state) and "ttl=10" in repr(state)
    page = state._repr_html_()
    assert "<table" in page and "k4" in page and "k5" not in page and "3 more keys" in page
    assert state.to_table(limit=2).num_rows == 2
