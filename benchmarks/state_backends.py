"""Per-batch cost of the state layer: ``acquire`` + ``release`` of batches over a key space.

The state holds ``count`` (int64), ``mean`` (float64) and ``recent_t`` (a ring of 8 int64)
per key, with a ttl. It is first filled with every key, then each timed batch draws
``batch_size`` keys uniformly from the ``keys`` keys. Run from the repository root::

    .venv/bin/python benchmarks/state_backends.py
    .venv/bin/python benchmarks/state_backends.py --keys 1000000 --backend memory

Examples
--------
>>> result = measure("memory", "int64", keys=1_000, batch_size=100, batches=3)
>>> sorted(result)
['acquire_us', 'backend', 'batch_size', 'expire_us', 'key_type', 'keys', 'release_us']
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa

from sabot_lab.state.base import KeyedState
from sabot_lab.state.memory import MemoryState
from sabot_lab.state.rocks import RocksDictState
from sabot_lab.state.spec import StateSpec

__all__ = ["measure"]

SPEC = StateSpec({"count": np.int64, "mean": np.float64, "recent_t": (np.int64, 8)},
                 ttl=10**9)


def _key_space(key_type: str, keys: int, rng: np.random.Generator) -> pa.Array:
    ids = rng.permutation(keys).astype(np.int64) * 7_919 + 10**12
    if key_type == "int64":
        return pa.array(ids)
    return pa.array(np.char.add("account-", ids.astype(str)))


def _touch(block: Any) -> None:
    np.add.at(block.arrays["count"], block.slots, 1)


def measure(backend: str, key_type: str = "int64", keys: int = 100_000,
            batch_size: int = 10_000, batches: int = 50, seed: int = 0) -> dict[str, Any]:
    """Median microseconds per batch of ``acquire``, ``release`` and a no-op ``expire``.

    Parameters
    ----------
    backend
        ``"memory"`` or ``"rocksdict"`` (in a temporary directory).
    key_type
        ``"int64"`` or ``"string"`` keys.
    """
    rng = np.random.default_rng(seed)
    space = _key_space(key_type, keys, rng)
    with tempfile.TemporaryDirectory() as tmp:
        state: KeyedState = (MemoryState(SPEC) if backend == "memory"
                             else RocksDictState(SPEC, f"{tmp}/db"))
        with state:
            for start in range(0, keys, batch_size):
                state.release(state.acquire(space.slice(start, batch_size), now=0), now=0)
            draws = [space.take(pa.array(rng.integers(0, keys, batch_size)))
                     for _ in range(batches)]
            acquire, release, expire = [], [], []
            for now, batch in enumerate(draws, start=1):
                t0 = time.perf_counter()
                block = state.acquire(batch, now=now)
                t1 = time.perf_counter()
                _touch(block)
                t2 = time.perf_counter()
                state.release(block, now=now)
                t3 = time.perf_counter()
                state.expire(now)
                t4 = time.perf_counter()
                acquire.append(t1 - t0)
                release.append(t3 - t2)
                expire.append(t4 - t3)
    return {"backend": backend, "key_type": key_type, "keys": keys, "batch_size": batch_size,
            "acquire_us": statistics.median(acquire) * 1e6,
            "release_us": statistics.median(release) * 1e6,
            "expire_us": statistics.median(expire) * 1e6}


def main(argv: list[str] | None = None) -> None:
    """Print one line per backend and key type."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--backend", choices=["memory", "rocksdict"], action="append")
    args = parser.parse_args(argv)
    header = f"{'backend':10} {'keys':7} {'acquire us':>11} {'release us':>11} {'expire us':>10}"
    print(f"{args.keys:,} keys, {args.batch_size:,}-row batches, median of {args.batches}")
    print(header)
    for backend in args.backend or ["memory", "rocksdict"]:
        for key_type in ("int64", "string"):
            r = measure(backend, key_type, args.keys, args.batch_size, args.batches)
            print(f"{backend:10} {key_type:7} {r['acquire_us']:11.0f} {r['release_us']:11.0f} "
                  f"{r['expire_us']:10.0f}")


if __name__ == "__main__":
    main()
