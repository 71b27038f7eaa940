"""RocksDictState: persistence across close and reopen, layout checks, the expiry index."""

from __future__ import annotations

import numpy as np
import pytest

from sabot_lab.state import MemoryState, RocksDictState, StateSpec

SPEC = StateSpec({"count": np.int64, "ring": (np.int16, 2)}, ttl=10)


def _write(state, keys, now, counts):
    block = state.acquire(keys, now=now)
    block.arrays["count"][block.slots] = counts
    state.release(block, now=now)


def test_state_survives_close_and_reopen(tmp_path):
    with RocksDictState(SPEC, tmp_path / "db") as state:
        _write(state, ["b", "a", "c"], 5, [2, 1, 3])
        _write(state, ["c"], 8, [30])
    assert repr(state).startswith("RocksDictState(closed")
    with pytest.raises(RuntimeError, match="closed"):
        state.acquire(["a"], now=9)
    with RocksDictState(SPEC, tmp_path / "db") as state:
        assert len(state) == 3 and state.key_kind == "string"
        assert state.keys().to_pylist() == ["a", "b", "c"]
        assert state.get("c") == {"count": 30, "ring": [0, 0]}
        assert state.expire(16) == 2  # the expiry index came back too
        assert state.keys().to_pylist() == ["c"]
        assert state.nbytes > 0


def test_integer_keys_are_stored_in_numeric_order(tmp_path):
    with RocksDictState(SPEC, tmp_path / "db") as state:
        keys = [5, -(2**63), 2**63 - 1, -1, 0]
        _write(state, keys, 0, keys)
        assert state.keys().to_pylist() == sorted(keys)
        assert state.to_table().column("count").to_pylist() == sorted(keys)


def test_reopen_with_other_fields_is_refused(tmp_path):
    RocksDictState(SPEC, tmp_path / "db").close()
    other = StateSpec({"count": np.int32, "ring": (np.int16, 2)})
    with pytest.raises(ValueError, match="has fields"):
        RocksDictState(other, tmp_path / "db")


def test_expiry_index_follows_the_ttl_setting(tmp_path):
    """Written without a ttl, reopened with one: the index is rebuilt from the rows."""
    no_ttl = StateSpec(SPEC.fields)
    with RocksDictState(no_ttl, tmp_path / "db") as state:
        _write(state, [1, 2], 0, [1, 2])
        _write(state, [2], 50, [20])
        assert state.expire(10**6) == 0
    with RocksDictState(SPEC, tmp_path / "db") as state:
        assert state.expire(55) == 1
        assert state.keys().to_pylist() == [2]
    with RocksDictState(no_ttl, tmp_path / "db") as state:
        assert len(state) == 1


def test_release_moves_the_expiry_entry(tmp_path):
    with RocksDictState(SPEC, tmp_path / "db") as state:
        for now in range(0, 100, 7):
            _write(state, [1, 1, 2], now, [now, now, now])
        expiry = state._family("expiry")
        assert len(list(expiry.keys())) == 2
        assert state.expire(1000) == 2 and len(state) == 0
        assert list(expiry.keys()) == []


def test_checkpoint_is_a_database(tmp_path):
    with RocksDictState(SPEC, tmp_path / "db") as state:
        _write(state, [3, 4], 1, [30, 40])
        directory = state.checkpoint(tmp_path / "ck")
        with pytest.raises(FileExistsError):
            state.checkpoint(tmp_path / "ck")
        _write(state, [5], 2, [50])
    with RocksDictState(SPEC, directory) as copy:
        assert copy.keys().to_pylist() == [3, 4]
    with RocksDictState(SPEC, tmp_path / "db") as state:
        state.restore_checkpoint(directory)
        assert len(state) == 2 and state.get(4)["count"] == 40
        with pytest.raises(ValueError, match="not a RocksDB checkpoint"):
            state.restore_checkpoint(tmp_path)


def test_checkpoint_of_other_fields_is_refused_before_anything_is_lost(tmp_path):
    other = StateSpec({"count": np.int32, "ring": (np.int16, 2)})
    with RocksDictState(other, tmp_path / "other") as state:
        directory = state.checkpoint(tmp_path / "ck")
    with RocksDictState(SPEC, tmp_path / "db") as state:
        _write(state, [1], 0, [10])
        with pytest.raises(ValueError, match="has fields"):
            state.restore_checkpoint(directory)
        assert state.get(1)["count"] == 10


def test_memory_checkpoint_restores_into_rocksdict(tmp_path):
    memory = MemoryState(SPEC)
    _write(memory, [7, 8], 3, [70, 80])
    memory.checkpoint(tmp_path / "mem")
    with RocksDictState(SPEC, tmp_path / "db") as state:
        state.restore_checkpoint(tmp_path / "mem")
        assert state.to_table(last_access=True).to_pydict() == {
            "key": [7, 8], "count": [70, 80], "ring": [[0, 0], [0, 0]], "last_access": [3, 3]}
