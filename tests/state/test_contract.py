"""The keyed state contract, for every backend, against a plain Python dict as the oracle."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sabot_lab.state import (
    KeyedState,
    MemoryState,
    NullKeyError,
    RocksDictState,
    StaleBlockError,
    StateSpec,
)

TTL = 6
RING = 3
SPEC = StateSpec({"count": np.int64, "total": np.float64, "recent": (np.int32, RING)},
                 defaults={"total": 0.5, "recent": -1}, ttl=TTL)
DEFAULT = {"count": 0, "total": 0.5, "recent": [-1] * RING}

Factory = Callable[[Path], KeyedState]
BACKENDS: dict[str, Factory] = {
    "memory": lambda _: MemoryState(SPEC),
    "rocksdict": lambda directory: RocksDictState(SPEC, directory / "db"),
}


def _key(kind: str, i: int) -> int | str:
    return i * 1_000_003 - 5 if kind == "int64" else f"ключ-{i}"


class Oracle:
    """The expected state: key -> {"fields": {...}, "last": int}, updated row by row."""

    def __init__(self) -> None:
        self.rows: dict[object, dict] = {}

    def acquire(self, keys: list, now: int) -> list[bool]:
        is_new = []
        fresh = set()
        for key in keys:
            row = self.rows.get(key)
            if key not in fresh and (row is None or row["last"] < now - TTL):
                self.rows[key] = {"fields": copy.deepcopy(DEFAULT), "last": now}
                fresh.add(key)
            is_new.append(key in fresh)
        return is_new

    def update(self, key: object, value: int) -> None:
        fields = self.rows[key]["fields"]
        fields["count"] += 1
        fields["total"] += value
        fields["recent"] = [*fields["recent"][1:], value]

    def release(self, keys: list, now: int) -> None:
        for key in keys:
            self.rows[key]["last"] = now

    def expire(self, now: int) -> int:
        gone = [k for k, row in self.rows.items() if row["last"] < now - TTL]
        for key in gone:
            del self.rows[key]
        return len(gone)


def _update(block, values: list[int]) -> None:
    """The test's kernel, row by row in Python (the oracle does the same on dicts)."""
    for slot, value in zip(block.slots.tolist(), values, strict=True):
        block.arrays["count"][slot] += 1
        block.arrays["total"][slot] += value
        ring = block.arrays["recent"][slot]
        ring[:-1] = ring[1:].copy()
        ring[-1] = value


def assert_matches(state: KeyedState, oracle: Oracle) -> None:
    table = state.to_table(last_access=True).to_pylist()
    actual = {row.pop("key"): row for row in table}
    expected = {key: {**row["fields"], "last_access": row["last"]}
                for key, row in oracle.rows.items()}
    assert actual == expected
    assert len(state) == len(oracle.rows)
    assert sorted(state.keys().to_pylist(), key=str) == sorted(oracle.rows, key=str)
    for key, row in list(oracle.rows.items())[:3]:
        assert state.get(key) == row["fields"]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


@pytest.fixture
def make(backend: str, tmp_path: Path) -> Iterator[Factory]:
    opened: list[KeyedState] = []

    def factory(directory: Path = tmp_path) -> KeyedState:
        state = BACKENDS[backend](directory)
        opened.append(state)
        return state

    yield factory
    for state in opened:
        state.close()


_OPS = st.lists(st.one_of(
    st.tuples(st.just("batch"), st.lists(st.integers(0, 9), max_size=12), st.integers(0, 4)),
    st.tuples(st.just("expire"), st.just([]), st.integers(0, 9)),
    st.tuples(st.just("snapshot"), st.just([]), st.just(0)),
    st.tuples(st.just("restore"), st.just([]), st.just(0)),
), max_size=14)


@pytest.mark.parametrize("kind", ["int64", "string"])
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS, values=st.randoms(use_true_random=False))
def test_random_operations_match_a_dict(make, kind, ops, values):
    """acquire / update / release / expire / snapshot / restore in random order."""
    with tempfile.TemporaryDirectory() as directory, make(Path(directory)) as state:
        _run(state, kind, ops, values)


def _run(state: KeyedState, kind: str, ops: list, values) -> None:
    oracle = Oracle()
    now = 0
    saved = None
    for op, ids, step in ops:
        now += step
        if op == "batch":
            keys = [_key(kind, i) for i in ids]
            rows = [values.randint(-50, 50) for _ in keys]
            block = state.acquire(keys, now=now)
            expected_new = oracle.acquire(keys, now)
            assert block.is_new.tolist() == expected_new
            for slot, new in zip(block.slots.tolist(), expected_new, strict=True):
                if new:
                    assert block.arrays["count"][slot] == 0
                    assert block.arrays["recent"][slot].tolist() == DEFAULT["recent"]
            _update(block, rows)
            for key, value in zip(keys, rows, strict=True):
                oracle.update(key, value)
            state.release(block, now=now)
            oracle.release(keys, now)
        elif op == "expire":
            assert state.expire(now) == oracle.expire(now)
        elif op == "snapshot":
            saved = (state.snapshot(), copy.deepcopy(oracle.rows))
        elif saved is not None:
            state.restore(saved[0])
            oracle.rows = copy.deepcopy(saved[1])
        assert_matches(state, oracle)


def test_ttl_boundary(make):
    """A key last accessed at t survives expire(t + ttl) and is gone at t + ttl + 1."""
    state = make()
    block = state.acquire([1, 2], now=100)
    state.release(block, now=100)
    state.release(state.acquire([2], now=104), now=104)
    assert state.expire(100 + TTL) == 0
    assert state.get(1) == DEFAULT
    assert state.expire(100 + TTL + 1) == 1
    assert state.get(1) is None
    assert len(state) == 1
    assert state.keys().to_pylist() == [2]
    assert pa.ipc.open_stream(state.snapshot()).read_all().column("key").to_pylist() == [2]
    assert state.expire(100 + TTL + 1) == 0


def test_expired_but_not_yet_removed_key_starts_fresh(make):
    state = make()
    block = state.acquire([7], now=0)
    block.arrays["count"][block.slots] = 5
    state.release(block, now=0)
    block = state.acquire([7, 7], now=TTL + 1)
    assert block.is_new.tolist() == [True, True]
    assert block.arrays["count"][block.slots[0]] == 0
    state.release(block, now=TTL + 1)
    assert state.get(7) == DEFAULT
    assert state.expire(TTL + 1) == 0


@pytest.mark.parametrize("keys", [
    pa.array([1, None, 3, None]),
    np.array(["a", None, None, "b"], dtype=object),
    pa.chunked_array([["a"], [None, None, "b"]]),
])
def test_null_keys_are_refused_naming_the_count(make, keys):
    state = make()
    with pytest.raises(NullKeyError, match="2 of 4 keys are null") as raised:
        state.acquire(keys, now=0)
    assert raised.value.null_count == 2
    assert len(state) == 0


def test_keys_of_one_type_only(make):
    state = make()
    state.release(state.acquire([1, 2], now=0), now=0)
    with pytest.raises(TypeError, match="int64 keys"):
        state.acquire(["a"], now=0)
    with pytest.raises(TypeError, match="int64 keys"):
        state.get("a")
    with pytest.raises(TypeError, match="integers or strings"):
        state.acquire(np.array([1.5]), now=0)


@pytest.mark.parametrize("keys", [
    np.array([5, 6, 5], dtype=np.int32),
    np.array([5, 6, 5], dtype=np.uint64),
    pa.chunked_array([[5], [6, 5]], type=pa.int16()),
    pa.array([5, 6, 5]).dictionary_encode(),
])
def test_integer_key_types(make, keys):
    state = make()
    block = state.acquire(keys, now=0)
    assert block.slots[0] == block.slots[2] != block.slots[1]
    state.release(block, now=0)
    assert sorted(state.keys().to_pylist()) == [5, 6]


@pytest.mark.parametrize("keys", [
    pa.array(["é", "", "é"], type=pa.large_string()),
    pa.array(["é", "", "é"], type=pa.string_view()),
    np.array(["é", "", "é"]),
    pa.array(["x", "é", "", "é"]).slice(1),
])
def test_string_key_types(make, keys):
    state = make()
    block = state.acquire(keys, now=0)
    assert block.slots[0] == block.slots[2] != block.slots[1]
    state.release(block, now=0)
    assert sorted(state.keys().to_pylist()) == ["", "é"]


def test_extreme_integer_keys(make):
    keys = [np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max]
    state = make()
    block = state.acquire(keys, now=0)
    block.arrays["count"][block.slots] = np.arange(5)
    state.release(block, now=0)
    assert {k: state.get(k)["count"] for k in keys} == dict(zip(keys, range(5), strict=True))


def test_empty_batch(make):
    state = make()
    block = state.acquire(pa.array([], type=pa.int64()), now=0)
    assert len(block) == 0 and block.is_new.shape == (0,)
    state.release(block, now=0)
    assert len(state) == 0 and state.key_kind is None


def test_stale_block_is_refused(make):
    state = make()
    first = state.acquire([1], now=0)
    state.acquire([2], now=0)
    with pytest.raises(StaleBlockError):
        state.release(first, now=0)
    block = state.acquire([3], now=0)
    state.expire(0)
    with pytest.raises(StaleBlockError):
        state.release(block, now=0)
    with pytest.raises(ValueError, match="needs the event time"):
        state.release(state.acquire([3], now=0))


def _fill(state: KeyedState, n: int, now: int = 0) -> dict[int, int]:
    keys = np.arange(n, dtype=np.int64) * 17 - n
    block = state.acquire(keys, now=now)
    block.arrays["count"][block.slots] = keys * 3
    block.arrays["recent"][block.slots, 0] = keys % 1000
    state.release(block, now=now)
    return {int(k): int(k) * 3 for k in keys}


def test_snapshot_restores_into_every_backend(make, tmp_path):
    source = make(tmp_path / "source")
    expected = _fill(source, 500)
    data = source.snapshot()
    for name, factory in BACKENDS.items():
        with factory(tmp_path / f"target-{name}") as target:
            target.restore(data)
            table = target.to_table()
            assert dict(zip(table.column("key").to_pylist(), table.column("count").to_pylist(),
                            strict=True)) == expected
            assert target.get(-500)["recent"] == [500, -1, -1]


def test_checkpoint_round_trip(make, tmp_path):
    state = make(tmp_path / "state")
    expected = _fill(state, 300)
    directory = state.checkpoint(tmp_path / "checkpoint")
    _fill(state, 400, now=5)
    state.restore_checkpoint(directory.parent if directory.is_file() else directory)
    table = state.to_table(last_access=True)
    assert dict(zip(table.column("key").to_pylist(), table.column("count").to_pylist(),
                    strict=True)) == expected
    assert set(table.column("last_access").to_pylist()) == {0}


def test_restore_refuses_another_layout(make):
    other = MemoryState(StateSpec({"count": np.int32}))
    other.release(other.acquire([1]))
    state = make()
    with pytest.raises(ValueError, match="snapshot has fields"):
        state.restore(other.snapshot())


def test_restore_refuses_duplicate_keys_and_keeps_the_state(make):
    state = make()
    _fill(state, 3)
    table = pa.ipc.open_stream(state.snapshot()).read_all()
    doubled = pa.concat_tables([table, table])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, doubled.schema) as writer:
        writer.write_table(doubled)
    with pytest.raises(ValueError, match="more than once"):
        state.restore(sink.getvalue().to_pybytes())
    assert len(state) == 3


def test_many_keys_against_numpy(make):
    """50K random keys in 10K-row batches (growth, rehash), then expiry of half."""
    rng = np.random.default_rng(1)
    universe = rng.integers(-(2**62), 2**62, 20_000)
    state = make()
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    for now in range(5):
        keys = universe[rng.integers(0, len(universe) // (2 - now % 2), 10_000)]
        block = state.acquire(keys, now=now * 10)
        np.add.at(block.arrays["count"], block.slots, 1)
        state.release(block, now=now * 10)
        unique, n = np.unique(keys, return_counts=True)
        for key, c in zip(unique.tolist(), n.tolist(), strict=True):
            fresh = key not in last or last[key] < now * 10 - TTL
            counts[key] = c if fresh else counts[key] + c
            last[key] = now * 10
    assert state.expire(40) == sum(t < 40 - TTL for t in last.values())
    expected = {k: c for k, c in counts.items() if last[k] >= 40 - TTL}
    table = state.to_table()
    assert dict(zip(table.column("key").to_pylist(), table.column("count").to_pylist(),
                    strict=True)) == expected
