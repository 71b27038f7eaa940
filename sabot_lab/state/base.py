"""The keyed state interface shared by every backend, and the block a batch works on.

A keyed operator calls, per batch::

    block = state.acquire(keys, now)       # a slot per row, state arrays, new-key flags
    kernel(batch columns, block.slots, *block.arrays.values())   # reads and updates in place
    state.release(block, now)              # keeps the updates, records the access time

and ``state.expire(now)`` on watermarks. A block is valid until the next ``acquire``,
``expire``, ``restore`` or ``close``; releasing an older block raises :class:`StaleBlockError`.

Snapshots (:meth:`KeyedState.snapshot`) are one Arrow IPC stream of the columns ``key``, the
fields (ring fields as fixed-size lists) and ``last_access``, with the layout in the schema
metadata: the same bytes restore into any backend.
"""

from __future__ import annotations

import html
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.errors import StaleBlockError
from sabot_lab.state.keys import KeyKind
from sabot_lab.state.spec import StateSpec

__all__ = ["NEVER", "KeyedState", "StateBlock"]

#: ``last_access`` of a key acquired without an event time and not yet released.
NEVER = np.iinfo(np.int64).min
_META_KEY = b"sabot_lab.state"
_FORMAT = 1
_CHECKPOINT_FILE = "state.arrow"


class StateBlock:
    """The state of the keys of one batch, for a kernel to read and update in place.

    Attributes
    ----------
    slots
        int64, one per input row: the row's index into ``arrays`` (rows of one key share it).
    arrays
        Field name to numpy array whose first dimension is indexed by slot (2-D for ring
        fields). For :class:`MemoryState` these are views of the state's own storage, for a
        persistent backend a gathered copy written back by ``release``.
    is_new
        bool, one per input row: the row's key had no state (or its state had expired) before
        this ``acquire``; its slot was filled with the defaults.
    """

    __slots__ = ("_owner", "_token", "arrays", "is_new", "slots")

    def __init__(self, slots: np.ndarray, arrays: dict[str, np.ndarray], is_new: np.ndarray,
                 owner: KeyedState, token: Any = None) -> None:
        self.slots = slots
        self.arrays = arrays
        self.is_new = is_new
        self._owner = owner
        self._token = token

    def __len__(self) -> int:
        return len(self.slots)

    def __repr__(self) -> str:
        return (f"StateBlock(rows={len(self.slots)}, new_rows={int(self.is_new.sum())}, "
                f"fields={list(self.arrays)})")


class KeyedState(ABC):
    """Per-key columnar state with time to live; see the module docstring for the protocol.

    Subclasses implement the storage; this class holds the spec, the key type, the open
    block, snapshots in Arrow IPC, and the notebook reprs.
    """

    def __init__(self, spec: StateSpec) -> None:
        self._spec = spec
        self._kind: KeyKind | None = None
        self._block: StateBlock | None = None

    # -- the protocol -------------------------------------------------------------------
    @abstractmethod
    def acquire(self, keys: Any, now: int | None = None) -> StateBlock:
        """The state of ``keys`` (one per row) as a :class:`StateBlock`.

        Parameters
        ----------
        keys
            int64-compatible or string keys: Arrow array, numpy array or sequence; no nulls
            (:class:`~sabot_lab.state.keys.NullKeyError`).
        now
            The event time of the batch. With a ``ttl``, keys last accessed before
            ``now - ttl`` count as new even if :meth:`expire` has not removed them yet.
        """

    @abstractmethod
    def release(self, block: StateBlock, now: int | None = None) -> None:
        """Keep the block's updates and record ``now`` as its keys' last access (required
        when the spec has a ``ttl``)."""

    @abstractmethod
    def expire(self, now: int) -> int:
        """Remove the keys last accessed before ``now - ttl``; return how many (0 without
        a ``ttl``). A key last accessed at ``t`` survives up to and including
        ``now == t + ttl``."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of keys held (expired keys count until :meth:`expire` removes them)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes the state takes (memory, or the store's files and memtables)."""

    @abstractmethod
    def get(self, key: Any) -> dict[str, Any] | None:
        """One key's fields as Python values (rings as lists), or ``None`` if absent."""

    @abstractmethod
    def keys(self) -> pa.Array:
        """Every key held, in no particular order."""

    @abstractmethod
    def to_table(self, limit: int | None = None, last_access: bool = False) -> pa.Table:
        """The state as a table: ``key``, one column per field (rings as fixed-size lists)
        and, if asked, ``last_access``; at most ``limit`` keys."""

    def due(self, field: str, upto: int) -> tuple[pa.Array, np.ndarray]:
        """The keys whose int64 ``field`` is at most ``upto``, and those values (timers due
        by then). This scans every key; backends override it with a faster scan."""
        table = self.to_table()
        values = table.column(field).to_numpy()
        hit = np.flatnonzero(values <= upto)
        return table.column("key").take(pa.array(hit)), values[hit]

    @abstractmethod
    def _load(self, table: pa.Table) -> None:
        """Replace all state by ``table`` (columns as :meth:`to_table` with ``last_access``)."""

    def close(self) -> None:
        """Release resources (files, handles); an open block becomes stale."""
        self._block = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spec(self) -> StateSpec:
        """The state's layout, defaults and ttl."""
        return self._spec

    @property
    def key_kind(self) -> KeyKind | None:
        """``"int64"`` or ``"string"`` once the first keys arrived, else ``None``."""
        return self._kind

    # -- snapshots ----------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """All state (with last-access times) as Arrow IPC stream bytes.

        The bytes restore into any backend with the same fields (see :meth:`restore`).
        """
        table = self.to_table(last_access=True)
        meta = {"format": _FORMAT, "fields": self._spec.describe(), "key": self._kind}
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta)})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def restore(self, data: bytes) -> None:
        """Replace all state by a :meth:`snapshot`; its fields must match the spec."""
        table = pa.ipc.open_stream(data).read_all()
        self._restore_table(table, "snapshot")

    def checkpoint(self, directory: str | Path) -> Path:
        """Write a snapshot into ``directory`` (created if missing); return its path.

        The base version writes the IPC snapshot as a file; persistent backends use their
        store's own checkpoint instead.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / _CHECKPOINT_FILE
        path.write_bytes(self.snapshot())
        return path

    def restore_checkpoint(self, directory: str | Path) -> None:
        """Replace all state by a :meth:`checkpoint` written into ``directory``."""
        path = Path(directory) / _CHECKPOINT_FILE
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
        self._restore_table(table, f"checkpoint {path}")

    def _restore_table(self, table: pa.Table, where: str) -> None:
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ValueError(f"{where} is not a sabot_lab state snapshot")
        meta = json.loads(raw)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{where} has format {meta.get('format')}, expected {_FORMAT}")
        self._spec.check_layout(meta["fields"], where)
        if meta.get("key") not in (None, "int64", "string"):
            raise ValueError(f"{where} has keys of kind {meta.get('key')!r}")
        missing = {"key", "last_access", *self._spec.names} - set(table.column_names)
        if missing:
            raise ValueError(f"{where} lacks the columns {sorted(missing)}")
        if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
            raise ValueError(f"{where} holds a key more than once")
        self._block = None
        self._kind = meta["key"]
        self._load(table)

    # -- helpers for subclasses ---------------------------------------------------------
    def _set_kind(self, kind: KeyKind) -> None:
        if self._kind is None:
            self._kind = kind
        elif kind != self._kind:
            raise TypeError(f"this state has {self._kind} keys, got {kind} keys")

    def _check_block(self, block: StateBlock) -> None:
        if block._owner is not self:
            raise ValueError("this block was acquired from another state")
        if block is not self._block:
            raise StaleBlockError("the block is stale: acquire, expire, restore or close "
                                  "happened after it was acquired")

    def _check_release_time(self, now: int | None) -> None:
        if now is None and self._spec.ttl is not None:
            raise ValueError("release needs the event time `now` when the spec has a ttl")

    def _cutoff(self, now: int | None) -> int | None:
        """Keys last accessed before this are expired at ``now``; ``None``: no expiry."""
        if now is None or self._spec.ttl is None:
            return None
        return int(now) - int(self._spec.ttl)

    def _table_from_arrays(self, keys: pa.Array, arrays: dict[str, np.ndarray],
                           last: np.ndarray | None) -> pa.Table:
        columns: dict[str, pa.Array] = {"key": keys}
        for name, values in arrays.items():
            if values.ndim == 2:
                flat = pa.array(values.reshape(-1), type=self._spec.arrow_type(name).value_type)
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
            else:
                columns[name] = pa.array(values)
        if last is not None:
            columns["last_access"] = pa.array(last, type=pa.int64())
        return pa.table(columns)

    def _arrays_from_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        out = {}
        for name, (dtype, shape) in self._spec.layout.items():
            column = table.column(name).combine_chunks()
            if shape:
                flat = column.flatten().to_numpy(zero_copy_only=False)
                out[name] = flat.astype(dtype, copy=False).reshape(len(column), *shape)
            else:
                out[name] = column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return out

    # -- reprs --------------------------------------------------------------------------
    def _summary(self) -> str:
        ttl = "" if self._spec.ttl is None else f", ttl={self._spec.ttl}"
        kind = f" {self._kind}" if self._kind else ""
        return (f"{len(self):,}{kind} keys, fields [{self._spec.field_summary()}]{ttl}, "
                f"{_size(self.nbytes)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._summary()})"

    def _repr_html_(self) -> str:
        head = self.to_table(limit=5).to_pandas()
        title = html.escape(f"{type(self).__name__}: {self._summary()}")
        more = "" if len(self) <= 5 else f"<p>… {len(self) - 5:,} more keys</p>"
        return f"<p><b>{title}</b></p>{head.to_html(index=False)}{more}"


def _size(nbytes: int) -> str:
    """``1,234 B``, ``1.2 MiB``: a byte count for people."""
    value, unit = float(nbytes), 0
    while value >= 1024 and unit < 3:
        value /= 1024
        unit += 1
    return f"{nbytes:,} B" if unit == 0 else f"{value:,.1f} {('KiB', 'MiB', 'GiB')[unit - 1]}"
