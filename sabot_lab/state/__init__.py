"""Keyed state for stateful operators: per-key columnar fields, TTL, snapshots.

A keyed operator maps a batch's key column to *slots*, runs a numba kernel that reads and
updates per-key state arrays in place, and hands the block back::

    spec = StateSpec({"count": np.int64, "recent_t": (np.int64, 8)}, ttl=3_600_000)
    state = MemoryState(spec)                  # or RocksDictState(spec, path)
    block = state.acquire(batch["account"], now=watermark)
    kernel(batch_columns..., block.slots, block.arrays["count"], block.arrays["recent_t"])
    state.release(block, now=watermark)
    state.expire(now=watermark)                # on watermarks: drop keys idle for > ttl

Everything per batch is vectorized (one numba pass, numpy gathers): no Python loop per row
or key in the memory backend. See :mod:`.base` for the protocol and snapshot format.

Backends and why
----------------
``MemoryState`` (default)
    numpy arrays per field indexed by slot, a numba open-addressing map from key to slot
    (:mod:`.slotmap`, chosen by measurement over pandas' hash tables, a numba typed dict and
    sorted arrays). Snapshots are Arrow IPC.
``RocksDictState``
    RocksDB through ``rocksdict`` (Rust bindings; 0.3.29 of December 2025 installs here as
    a manylinux wheel): for state larger than memory or that must survive the process.
    Batched multi-get and ``WriteBatch``, an event-time expiry index, RocksDB checkpoints.
    Its Arrow IPC snapshots restore into ``MemoryState`` and back.
``tonbo`` was evaluated and is not supported (see ``docs/notes.md``).

Examples
--------
>>> import numpy as np
>>> state = MemoryState(StateSpec({"n": np.int64}))
>>> block = state.acquire(np.array([3, 3, 4]))
>>> np.add.at(block.arrays["n"], block.slots, 1)
>>> state.release(block)
>>> state.to_table().to_pydict()
{'key': [3, 4], 'n': [2, 1]}
"""

from sabot_lab.state.base import KeyedState, StaleBlockError, StateBlock
from sabot_lab.state.keys import NullKeyError
from sabot_lab.state.memory import MemoryState
from sabot_lab.state.rocks import RocksDictState
from sabot_lab.state.spec import StateSpec

__all__ = [
    "KeyedState",
    "MemoryState",
    "NullKeyError",
    "RocksDictState",
    "StaleBlockError",
    "StateBlock",
    "StateSpec",
]
