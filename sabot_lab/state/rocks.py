"""Keyed state in RocksDB through ``rocksdict``: persistent, and larger than memory.

Each key is one RocksDB entry whose value is a packed numpy record (``last_access`` then the
fields, little-endian), so a batch decodes with one ``np.frombuffer``. Per batch, ``acquire``
reads the distinct keys with one multi-get and ``release`` writes them back in one
``WriteBatch`` (atomic, through the write-ahead log).

Column families:

* ``default``: key -> record. Integer keys are stored big-endian with the sign bit flipped,
  so the store orders them numerically; string keys as their UTF-8 bytes.
* ``expiry``: ``last_access`` (same encoding) + key -> empty, kept while the spec has a
  ``ttl``; ``expire`` reads it up to ``now - ttl`` and deletes what it finds.
* ``meta``: the layout (fields, key type, whether ``expiry`` is kept) and the key count.

RocksDB's own TTL (``AccessType.with_ttl``) counts wall-clock seconds from the write; state
TTL here follows event time, hence the index.

Examples
--------
>>> import tempfile, numpy as np
>>> spec = StateSpec({"count": np.int64}, ttl=10)
>>> with RocksDictState(spec, tempfile.mkdtemp() + "/db") as state:
...     block = state.acquire(np.array([5, 6, 5]), now=100)
...     np.add.at(block.arrays["count"], block.slots, 1)
...     state.release(block, now=100)
...     print(state.get(5), len(state), state.expire(now=111), len(state))
{'count': 2} 2 2 0
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import weakref
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rocksdict import AccessType, Checkpoint, Options, Rdict, ReadOptions, WriteBatch

from sabot_lab.state.base import _CHECKPOINT_FILE, _FORMAT, NEVER, KeyedState, StateBlock
from sabot_lab.state.keys import KeyKind, int_values, key_array, key_kind
from sabot_lab.state.spec import StateSpec

__all__ = ["RocksDictState"]

log = logging.getLogger(__name__)

_EXPIRY = "expiry"
_META = "meta"
_LAYOUT = b"layout"
_COUNT = b"count"
_SIGN = np.uint64(1 << 63)
_LOAD_CHUNK = 1 << 16
#: The store of one key range of a Dask run, inside its ``state_path``.
_RANGE_STORE = re.compile(r"range-\d{5}")
#: The stores open in this process, by resolved path: a new run at a path closes the old one.
_OPEN: weakref.WeakValueDictionary[str, RocksDictState] = weakref.WeakValueDictionary()


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


def _ordered(values: np.ndarray) -> np.ndarray:
    """int64 values as big-endian uint64 with the sign bit flipped: bytes sort like numbers."""
    return (np.asarray(values, dtype=np.int64).view(np.uint64) ^ _SIGN).astype(">u8")


def _time_bytes(t: int) -> bytes:
    return _ordered(np.array([t])).tobytes()


def _remove_store(path: Path) -> None:
    """Delete the sabot_lab store at ``path``, or the per-key-range stores a Dask run keeps
    there (``range-00000``…); nothing to do where there is none. Refuse anything else, and a
    store another process has open."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    refuse = (f"state_path {path} holds files that are not a sabot_lab state store: choose a "
              f"new or empty directory (a run starts from an empty store and deletes the "
              f"store an earlier run left there)")
    if not path.is_dir():
        raise FileExistsError(refuse)
    if not (path / "CURRENT").exists():
        ranges = list(path.iterdir())
        if not all(p.is_dir() and _RANGE_STORE.fullmatch(p.name) and (p / "CURRENT").exists()
                   for p in ranges):
            raise FileExistsError(refuse)
        for store in ranges:
            _remove_store(store)
        path.rmdir()
        return
    families = {_EXPIRY: Options(raw_mode=True), _META: Options(raw_mode=True)}
    try:
        db = Rdict(str(path), _options(), column_families=families)
    except Exception as exc:  # rocksdict raises plain Exceptions (a lock held, damage)
        raise FileExistsError(f"state_path {path} cannot be reset: {exc}. Is another run "
                              f"using it? Choose another directory") from None
    try:
        layout = db.get_column_family(_META).get(_LAYOUT)
    finally:
        db.close()
    if layout is None or json.loads(layout).get("format") != _FORMAT:
        raise FileExistsError(refuse)
    log.info("starting from an empty store: deleting the one an earlier run left at %s", path)
    shutil.rmtree(path)


def _split(buffer: bytes | np.ndarray, width: int) -> list[bytes]:
    """Cut a buffer into ``width``-byte ``bytes`` objects (one C-level pass)."""
    return np.frombuffer(buffer, dtype=f"V{width}").tolist()


class RocksDictState(KeyedState):
    """Keyed state in a RocksDB database at ``path`` (created if missing, reopened if not).

    Parameters
    ----------
    spec
        Fields, defaults and ttl; an existing database must have the same fields.
    path
        The database directory.

    Notes
    -----
    Blocks hold a copy of the batch's distinct keys' state: ``block.slots`` index that copy.
    Writes go through RocksDB's write-ahead log without fsync: they survive a crash of the
    process, not of the machine. Use one instance per database and thread.
    """

    def __init__(self, spec: StateSpec, path: str | Path) -> None:
        super().__init__(spec)
        self._path = Path(path)
        _OPEN[str(self._path.resolve())] = self
        self._record = np.dtype(
            [("last_access", "<i8")]
            + [(name, dtype.newbyteorder("<"), shape)
               for name, (dtype, shape) in spec.layout.items()])
        self._db: Rdict | None = None
        self._families: dict[str, tuple[Rdict, Any]] = {}
        self._count = 0
        self._open()

    @classmethod
    def fresh(cls, spec: StateSpec, path: str | Path) -> RocksDictState:
        """An empty store at ``path``, for a run that does not resume: a sabot_lab store
        left there by an earlier run is deleted (one still open in this process is closed
        first), and a directory holding anything else is refused.

        >>> import tempfile
        >>> spec, path = StateSpec({"n": np.int64}), tempfile.mkdtemp() + "/db"
        >>> with RocksDictState(spec, path) as old:
        ...     old.release(old.acquire(np.array([1, 2])))
        >>> len(RocksDictState.fresh(spec, path))
        0
        """
        path = Path(path)
        previous = _OPEN.get(str(path.resolve()))
        if previous is not None:
            previous.close()
        _remove_store(path)
        return cls(spec, path)

    @property
    def path(self) -> Path:
        """The database directory."""
        return self._path

    # -- the protocol -------------------------------------------------------------------
    def acquire(self, keys: Any, now: int | None = None) -> StateBlock:
        """The state of ``keys``: see :meth:`KeyedState.acquire`; one multi-get per batch."""
        keys = key_array(keys)
        db = self._store()
        self._block = None
        if len(keys) == 0:
            none = np.zeros(0, dtype=np.bool_)
            self._block = StateBlock(np.zeros(0, dtype=np.int64), self._spec.allocate(0), none,
                                     self, ([], np.zeros(0, dtype=np.int64), none))
            return self._block
        self._persist_kind(key_kind(keys))
        encoded = keys.dictionary_encode()
        codes = encoded.indices.to_numpy().astype(np.int64)
        raw = self._encode(encoded.dictionary)
        values = db.get(raw)
        found = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(raw))
        arrays = self._spec.allocate(len(raw))
        last = np.full(len(raw), NEVER, dtype=np.int64)
        if found.any():
            records = np.frombuffer(b"".join([v for v in values if v is not None]),
                                    dtype=self._record)
            where = np.flatnonzero(found)
            for name, array in arrays.items():
                array[where] = records[name]
            last[where] = records["last_access"]
        is_new = ~found
        cutoff = self._cutoff(now)
        if cutoff is not None:
            stale = found & (last < cutoff)
            if stale.any():
                self._spec.fill_defaults(arrays, np.flatnonzero(stale))
                is_new |= stale
        block = StateBlock(codes, arrays, is_new[codes], self, (raw, last, found))
        self._block = block
        return block

    def release(self, block: StateBlock, now: int | None = None) -> None:
        """Write the block's keys back in one ``WriteBatch`` (and move their expiry entries)."""
        self._check_block(block)
        self._check_release_time(now)
        raw, last, found = block._token
        self._block = None
        if not raw:
            return
        records = np.empty(len(raw), dtype=self._record)
        records["last_access"] = last if now is None else now
        for name, array in block.arrays.items():
            records[name] = array
        batch = WriteBatch(raw_mode=True)
        for key, value in zip(raw, _split(records.tobytes(), self._record.itemsize),
                              strict=True):
            batch.put(key, value)
        if self._spec.ttl is not None:
            handle = self._handle(_EXPIRY)
            moved = np.flatnonzero(last != now)
            old = moved[found[moved]]
            for entry in self._expiry_keys(last[old], [raw[i] for i in old]):
                batch.delete(entry, handle)
            for entry in self._expiry_keys(np.full(len(moved), now), [raw[i] for i in moved]):
                batch.put(entry, b"", handle)
        count = self._count + int((~found).sum())
        if count != self._count:
            batch.put(_COUNT, count.to_bytes(8, "little"), self._handle(_META))
        self._store().write(batch)
        self._count = count

    def expire(self, now: int) -> int:
        """Remove the keys last accessed before ``now - ttl``, read from the expiry index."""
        cutoff = self._cutoff(now)
        db = self._store()
        self._block = None
        if cutoff is None:
            return 0
        bound = ReadOptions()
        bound.set_iterate_upper_bound(_time_bytes(cutoff))
        entries = list(self._family(_EXPIRY).keys(read_opt=bound))
        if not entries:
            return 0
        batch = WriteBatch(raw_mode=True)
        handle = self._handle(_EXPIRY)
        for entry in entries:
            batch.delete(entry[8:])
            batch.delete(entry, handle)
        count = self._count - len(entries)
        batch.put(_COUNT, count.to_bytes(8, "little"), self._handle(_META))
        db.write(batch)
        self._count = count
        return len(entries)

    def close(self) -> None:
        """Close the database (idempotent); the state can not be used afterwards."""
        super().close()
        self._families = {}
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- inspection ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        if self._db is None:
            return f"RocksDictState(closed, {self._path})"
        return super().__repr__()

    @property
    def nbytes(self) -> int:
        """Bytes of the store's table files and memtables (rows and expiry index)."""
        db = self._store()
        total = 0
        for family in (db, self._family(_EXPIRY)):
            for prop in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
                total += family.property_int_value(prop) or 0
        return total

    def get(self, key: Any) -> dict[str, Any] | None:
        """One key's fields as Python values, or ``None``."""
        keys = key_array([key])
        db = self._store()
        if self._kind is None:
            return None
        if key_kind(keys) != self._kind:
            raise TypeError(f"this state has {self._kind} keys, got {key!r}")
        value = db.get(self._encode(keys)[0])
        if value is None:
            return None
        record = np.frombuffer(value, dtype=self._record)[0]
        return {name: record[name].tolist() for name in self._spec.names}

    def keys(self) -> pa.Array:
        """Every key held, in the store's order (numeric for integer keys)."""
        return self._decode(list(self._store().keys()))

    def to_table(self, limit: int | None = None, last_access: bool = False) -> pa.Table:
        """Keys and fields (and optionally ``last_access``) as a table, in the store's order."""
        items = list(islice(self._store().items(), limit))
        records = np.frombuffer(b"".join([v for _, v in items]), dtype=self._record)
        arrays = {name: np.ascontiguousarray(records[name]) for name in self._spec.names}
        last = np.ascontiguousarray(records["last_access"]) if last_access else None
        return self._table_from_arrays(self._decode([k for k, _ in items]), arrays, last)

    # -- snapshots ----------------------------------------------------------------------
    def checkpoint(self, directory: str | Path) -> Path:
        """A RocksDB checkpoint (hard links to the table files) in the new ``directory``."""
        directory = Path(directory)
        if directory.exists():
            raise FileExistsError(f"a checkpoint directory must not exist yet: {directory}")
        Checkpoint(self._store()).create_checkpoint(str(directory))
        return directory

    def restore_checkpoint(self, directory: str | Path) -> None:
        """Replace the database by a copy of a :meth:`checkpoint` (or of a memory state's
        checkpoint file)."""
        directory = Path(directory)
        if (directory / _CHECKPOINT_FILE).exists():
            super().restore_checkpoint(directory)
            return
        if not (directory / "CURRENT").exists():
            raise ValueError(f"{directory} is not a RocksDB checkpoint")
        families = {_EXPIRY: Options(raw_mode=True), _META: Options(raw_mode=True)}
        checkpoint = Rdict(str(directory), _options(), column_families=families,
                           access_type=AccessType.read_only())
        try:
            layout = json.loads(checkpoint.get_column_family(_META).get(_LAYOUT))
        finally:
            checkpoint.close()
        self._spec.check_layout(layout["fields"], f"checkpoint {directory}")
        self.close()
        shutil.rmtree(self._path, ignore_errors=True)
        shutil.copytree(directory, self._path)
        self._kind = None
        self._open()

    # -- internals ----------------------------------------------------------------------
    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        families = {_EXPIRY: Options(raw_mode=True), _META: Options(raw_mode=True)}
        self._db = Rdict(str(self._path), _options(), column_families=families)
        self._cache_families()
        meta = self._family(_META)
        layout = meta.get(_LAYOUT)
        if layout is None:
            self._count = 0
            self._write_layout()
            return
        stored = json.loads(layout)
        self._spec.check_layout(stored["fields"], f"the database at {self._path}")
        self._kind = stored["key"]
        self._count = int.from_bytes(meta.get(_COUNT), "little")
        if stored["indexed"] != (self._spec.ttl is not None):
            self._reindex()

    def _write_layout(self) -> None:
        layout = {"format": _FORMAT, "fields": self._spec.describe(), "key": self._kind,
                  "indexed": self._spec.ttl is not None}
        batch = WriteBatch(raw_mode=True)
        batch.put(_LAYOUT, json.dumps(layout).encode(), self._handle(_META))
        batch.put(_COUNT, self._count.to_bytes(8, "little"), self._handle(_META))
        self._store().write(batch)

    def _reindex(self) -> None:
        """Rebuild (spec with ttl) or drop (no ttl) the expiry index: the database was
        written under the other setting."""
        db = self._store()
        log.info("RocksDictState %s: %s the expiry index", self._path,
                 "rebuilding" if self._spec.ttl is not None else "dropping")
        self._recreate_expiry()
        if self._spec.ttl is not None:
            handle = self._handle(_EXPIRY)
            items = iter(db.items())
            while chunk := list(islice(items, _LOAD_CHUNK)):
                records = np.frombuffer(b"".join([v for _, v in chunk]), dtype=self._record)
                batch = WriteBatch(raw_mode=True)
                for entry in self._expiry_keys(records["last_access"], [k for k, _ in chunk]):
                    batch.put(entry, b"", handle)
                db.write(batch)
        self._write_layout()

    def _load(self, table: pa.Table) -> None:
        db = self._store()
        # Every key sorts below 9 bytes of 0xFF: integer keys are 8 bytes, UTF-8 has no 0xFF.
        db.delete_range(b"", b"\xff" * 9)
        self._recreate_expiry()
        arrays = self._arrays_from_table(table)
        last = table.column("last_access").to_numpy()
        keys = key_array(table.column("key")) if table.num_rows else None
        handle = self._handle(_EXPIRY)
        for start in range(0, table.num_rows, _LOAD_CHUNK):
            stop = min(start + _LOAD_CHUNK, table.num_rows)
            records = np.empty(stop - start, dtype=self._record)
            records["last_access"] = last[start:stop]
            for name, array in arrays.items():
                records[name] = array[start:stop]
            raw = self._encode(keys.slice(start, stop - start))
            batch = WriteBatch(raw_mode=True)
            for key, value in zip(raw, _split(records.tobytes(), self._record.itemsize),
                                  strict=True):
                batch.put(key, value)
            if self._spec.ttl is not None:
                for entry in self._expiry_keys(last[start:stop], raw):
                    batch.put(entry, b"", handle)
            db.write(batch)
        self._count = table.num_rows
        self._write_layout()

    def _store(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"the state at {self._path} is closed")
        return self._db

    def _recreate_expiry(self) -> None:
        """An empty expiry index."""
        db = self._store()
        self._families.clear()
        db.drop_column_family(_EXPIRY)
        db.create_column_family(_EXPIRY, Options(raw_mode=True))
        self._cache_families()

    def _cache_families(self) -> None:
        # Looked up once: ``get_column_family`` can take milliseconds after a large write.
        db = self._store()
        self._families = {name: (db.get_column_family(name), db.get_column_family_handle(name))
                          for name in (_EXPIRY, _META)}

    def _family(self, name: str) -> Rdict:
        self._store()
        return self._families[name][0]

    def _handle(self, name: str) -> Any:
        self._store()
        return self._families[name][1]

    def _persist_kind(self, kind: KeyKind) -> None:
        first = self._kind is None
        self._set_kind(kind)
        if first:
            self._write_layout()

    def _encode(self, keys: pa.Array) -> list[bytes]:
        if self._kind == "int64":
            return _split(_ordered(int_values(keys)), 8)
        binary = pa.large_binary() if pa.types.is_large_string(keys.type) else pa.binary()
        return keys.cast(binary).to_pylist()

    def _decode(self, raw: list[bytes]) -> pa.Array:
        if self._kind == "string":
            return pa.array(raw, type=pa.binary()).cast(pa.string())
        values = np.frombuffer(b"".join(raw), dtype=">u8").astype(np.uint64) ^ _SIGN
        return pa.array(values.view(np.int64), type=pa.int64())

    def _expiry_keys(self, times: np.ndarray, raw: list[bytes]) -> list[bytes]:
        """``last_access`` + key, so that the index sorts by time."""
        prefixes = _split(_ordered(times), 8)
        return [p + k for p, k in zip(prefixes, raw, strict=True)]
