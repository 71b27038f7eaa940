"""Fingerprints: what a job is, as plain JSON, so a checkpoint can be bound to one job.

A checkpoint may only be resumed by the job that wrote it, over the same input. Printing the
plan is not enough (it leaves out a process function's parameters, the batch size and the
data), so every plan node describes *all* its parameters with :func:`fingerprint_value`:

* numbers, strings, paths, expressions and schemas as themselves;
* Arrow tables and batches by a SHA-256 of their contents (:func:`table_digest`);
* files and directories by their paths, sizes and modification times;
* functions by their qualified name and a digest of their code (constants included), so
  editing a lambda changes the job;
* objects with a ``fingerprint()`` method (process functions, scans) by what it returns, other
  objects by their public attributes.

A value whose data cannot be known without consuming it (an iterator, a generator function's
output) is :data:`UNKNOWN`; a job holding one can be resumed only when the user names the
data (``source_id=``) or says ``resume="trust"``.

Examples
--------
>>> import pyarrow as pa
>>> a = fingerprint_value(pa.table({"x": [1, 2]}))
>>> a == fingerprint_value(pa.table({"x": [1, 2]})), a == fingerprint_value(pa.table({"x": [2, 1]}))
(True, False)
>>> fingerprint_value(lambda v: v + 1) == fingerprint_value(lambda v: v + 2)
False
>>> differences({"f": {"z": 3.0}, "n": 1}, {"f": {"z": 1.5}, "n": 1})
['f.z: 3.0 -> 1.5']
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import types
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sabot_lab.expr import Expr

__all__ = ["UNKNOWN", "differences", "fingerprint_value", "table_digest"]

#: The fingerprint of data that cannot be identified without reading it up.
UNKNOWN = "<unknown: data read from an iterator or a generator function>"


class _HashingFile:
    """A write-only file that feeds a SHA-256 (Arrow's IPC writer streams buffers into it)."""

    closed = False

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return len(data)

    def flush(self) -> None:
        return None


def table_digest(data: pa.Table | pa.RecordBatch) -> str:
    """SHA-256 of a table's schema and contents (the Arrow IPC stream of its slices, so a
    zero-copy slice hashes only its own rows).

    >>> t = pa.table({"x": list(range(10))})
    >>> table_digest(t.slice(2, 3)) == table_digest(pa.table({"x": [2, 3, 4]}))
    True
    """
    sink = _HashingFile()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), data.schema) as writer:
        writer.write(data)
    return f"sha256:{data.num_rows}:{sink.sha.hexdigest()}"


def _code_digest(code: types.CodeType) -> str:
    sha = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        sha.update(_code_digest(const).encode() if isinstance(const, types.CodeType)
                   else repr(const).encode())
    sha.update(repr(code.co_names).encode())
    return sha.hexdigest()[:16]


def _callable(fn: Any) -> dict[str, Any]:
    if isinstance(fn, functools.partial):
        return {"partial": _callable(fn.func), "args": fingerprint_value(fn.args),
                "keywords": fingerprint_value(fn.keywords)}
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None and hasattr(fn, "py_func"):  # a numba dispatcher
        code = fn.py_func.__code__
    if code is None and not isinstance(fn, types.BuiltinFunctionType | type):
        return {"callable": name, **_attributes(fn)}  # a callable object: its parameters
    return {"callable": name, "code": _code_digest(code) if code is not None else None}


def _attributes(obj: Any) -> dict[str, Any]:
    public = {k: v for k, v in vars(obj).items() if not k.startswith("_")} \
        if hasattr(obj, "__dict__") else {}
    return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}",
            **{k: fingerprint_value(v) for k, v in sorted(public.items())}}


def _path(path: Path) -> dict[str, Any]:
    """A file or directory by the paths, sizes and modification times of its files."""
    path = path.resolve()
    if not path.exists():
        return {"path": str(path), "missing": True}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"path": str(path), "files": [
        [str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size,
         p.stat().st_mtime_ns] for p in files]}


def fingerprint_value(value: Any) -> Any:
    """A JSON-serializable description of ``value`` that changes when it does (see the
    module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return fingerprint_value(value.item())
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, timedelta):
        return f"timedelta:{value.total_seconds()}"
    if isinstance(value, Path):
        return _path(value)
    if isinstance(value, pa.Table | pa.RecordBatch):
        return table_digest(value)
    if isinstance(value, pa.Schema | pa.DataType | pa.Field):
        return str(value)
    if isinstance(value, np.ndarray):
        return f"ndarray:{value.dtype}:{value.shape}:" + hashlib.sha256(
            np.ascontiguousarray(value).tobytes()).hexdigest()
    if isinstance(value, Mapping):
        return {str(k): fingerprint_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | range):
        return [fingerprint_value(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((fingerprint_value(v) for v in value), key=repr)
    if isinstance(value, Iterator) or inspect.isgenerator(value):
        return UNKNOWN
    own = getattr(value, "fingerprint", None)
    if callable(own) and not isinstance(value, type):
        return own()
    if isinstance(value, Expr):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__qualname__, **{
            f.name: fingerprint_value(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if callable(value):
        return _callable(value)
    return _attributes(value)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def differences(old: Any, new: Any, limit: int = 8) -> list[str]:
    """What changed between two fingerprints, one ``path: old -> new`` line each."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old, "", before)
    _flatten(new, "", after)
    lines = [f"{k}: " + " -> ".join(_shown(before.get(k, "(none)"), after.get(k, "(none)")))
             for k in sorted(before.keys() | after.keys(), key=_path_order)
             if before.get(k, "(none)") != after.get(k, "(none)")]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _path_order(path: str) -> tuple:
    return tuple(path.split("."))


def _shown(old: Any, new: Any, width: int = 80) -> tuple[str, str]:
    """Both values as reprs cut to ``width``, around their first difference when long.

    >>> _shown("x" * 100 + "a", "x" * 100 + "b", width=12)
    ("...xxxa'", "...xxxb'")
    """
    a, b = repr(old), repr(new)
    if max(len(a), len(b)) <= width:
        return a, b
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                 min(len(a), len(b)))
    start = max(0, first - (width - 6) // 2)

    def cut(text: str) -> str:
        piece = text[start:start + width - 6]
        return ("..." if start else "") + piece + ("..." if start + width - 6 < len(text) else "")

    return cut(a), cut(b)
