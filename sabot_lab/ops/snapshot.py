"""Operator state as bytes that are safe to read back: numpy arrays and JSON, never pickle.

A snapshot is an uncompressed ``.npz`` archive (``numpy.savez``) whose entries are plain
numeric arrays, read back with ``allow_pickle=False``, so a snapshot from an untrusted
checkpoint can never run code. The entry ``__meta__`` holds a JSON object (UTF-8 bytes) with
the format name, the operator kind and its scalars; Arrow data (key values) travels as Arrow
IPC stream bytes in a ``uint8`` entry (see :func:`table_to_array`).

Reading is strict: :class:`SnapshotReader` hands out an entry only with the dtype and number
of dimensions the reader expects, and every operator checks its indices against its own
sizes before a numba kernel sees them, so a damaged or crafted snapshot raises
:class:`SnapshotError` instead of corrupting memory or producing wrong rows.

Examples
--------
>>> import numpy as np
>>> data = pack("example", {"n": 3}, {"values": np.arange(3)})
>>> reader = SnapshotReader(data, "example")
>>> reader.meta["n"], reader.array("values", np.int64).tolist()
(3, [0, 1, 2])
>>> SnapshotReader(b"junk", "example")
Traceback (most recent call last):
...
sabot_lab.errors.SnapshotError: example state is damaged: not a snapshot archive ...
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from sabot_lab.errors import SnapshotError

__all__ = ["FORMAT", "SnapshotReader", "in_range", "pack", "table_to_array"]

#: Written into every snapshot; a reader refuses any other value.
FORMAT = "sabot_lab.operator-state/1"
_META = "__meta__"


def table_to_array(table: pa.Table) -> np.ndarray:
    """``table`` as Arrow IPC stream bytes in a ``uint8`` array (an entry of a snapshot).

    >>> t = pa.table({"k": ["a", "b"]})
    >>> SnapshotReader(pack("x", {}, {"t": table_to_array(t)}), "x").table("t").equals(t)
    True
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return np.frombuffer(sink.getvalue(), dtype=np.uint8)


def pack(kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """The snapshot bytes of an operator of ``kind``: JSON ``meta`` plus numeric ``arrays``."""
    header = {"format": FORMAT, "kind": kind, **meta}
    entries = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    for name, array in entries.items():
        if array.dtype.kind not in "biuf":
            raise TypeError(f"snapshot entry {name!r} has dtype {array.dtype}: only numbers "
                            f"and booleans are stored")
    entries[_META] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **entries)
    return out.getvalue()


class SnapshotReader:
    """The validated content of :func:`pack` bytes for an operator of ``kind``.

    Parameters
    ----------
    data
        The snapshot bytes.
    kind
        The operator kind the caller restores; any other kind is refused.
    """

    def __init__(self, data: bytes, kind: str) -> None:
        self.kind = kind
        try:
            archive = np.load(io.BytesIO(data), allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise self.error("not a snapshot archive (a bare array)")
            self._arrays = {name: archive[name] for name in archive.files}
            self.meta = json.loads(bytes(self._arrays.pop(_META)).decode())
        except SnapshotError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
                UnicodeDecodeError, TypeError) as exc:
            raise self.error(f"not a snapshot archive ({type(exc).__name__}: {exc})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise self.error(f"format is not {FORMAT!r}")
        if self.meta.get("kind") != kind:
            raise SnapshotError(f"the snapshot holds {self.meta.get('kind')!r} state, not "
                                f"{kind!r} state: it belongs to another operator")

    def error(self, what: str) -> SnapshotError:
        """A :class:`SnapshotError` for this snapshot, saying ``what`` is wrong."""
        return SnapshotError(f"{self.kind} state is damaged: {what}")

    def array(self, name: str, dtype: type | np.dtype, ndim: int = 1) -> np.ndarray:
        """Entry ``name``, which must have exactly ``dtype`` and ``ndim`` dimensions (a
        writable copy: operators update their arrays in place)."""
        array = self._arrays.get(name)
        if array is None:
            raise self.error(f"entry {name!r} is missing")
        if array.dtype != np.dtype(dtype) or array.ndim != ndim:
            raise self.error(f"entry {name!r} is {array.dtype}[{array.ndim}-d], expected "
                             f"{np.dtype(dtype)}[{ndim}-d]")
        return array.copy()

    def table(self, name: str) -> pa.Table:
        """Entry ``name`` read as an Arrow IPC stream (see :func:`table_to_array`)."""
        raw = self.array(name, np.uint8)
        try:
            return pa.ipc.open_stream(pa.py_buffer(raw)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.error(f"entry {name!r} is not Arrow IPC ({exc})") from None

    def scalar(self, name: str, kind: type) -> Any:
        """``meta[name]``, which must be of Python type ``kind`` (bool is not an int here)."""
        value = self.meta.get(name)
        if type(value) is not kind:
            raise self.error(f"{name!r} is {value!r}, expected a {kind.__name__}")
        return value

    def integers(self, name: str) -> list[int]:
        """``meta[name]``, which must be a list of ints."""
        value = self.meta.get(name)
        if not isinstance(value, list) or any(type(v) is not int for v in value):
            raise self.error(f"{name!r} is not a list of integers")
        return value

    def check(self, condition: bool, what: str) -> None:
        """Raise a :class:`SnapshotError` saying ``what`` when ``condition`` is false."""
        if not condition:
            raise self.error(what)


def in_range(values: np.ndarray, low: int, high: int) -> bool:
    """Whether every value is in ``[low, high)`` (true for no values).

    >>> in_range(np.array([0, 3]), 0, 4), in_range(np.array([-1]), 0, 4)
    (True, False)
    """
    return not len(values) or (int(values.min()) >= low and int(values.max()) < high)
