"""What a keyed state holds per key: named numeric fields, their defaults, and a time to live.

A field is a numpy dtype (one value per key) or ``(dtype, n)`` (a ring of ``n`` values per key,
stored as a 2-D array). Fields a spec gives no default for start at zero.

Examples
--------
>>> import numpy as np
>>> spec = StateSpec({"count": np.int64, "mean": np.float64, "recent_t": (np.int64, 3)},
...                  defaults={"mean": 0.5, "recent_t": -1}, ttl=100)
>>> spec.names
('count', 'mean', 'recent_t')
>>> arrays = spec.allocate(2)
>>> arrays["mean"].tolist(), arrays["recent_t"].shape
([0.5, 0.5], (2, 3))
>>> spec.describe()["recent_t"]
['<i8', 3]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = ["RESERVED_NAMES", "StateSpec"]

#: Column names that snapshots and ``to_table()`` use besides the fields.
RESERVED_NAMES = ("key", "last_access")

FieldType = npt.DTypeLike | tuple[npt.DTypeLike, int]

_CACHE_LINE = 64  # bytes


def _field(name: str, kind: Any) -> tuple[np.dtype, tuple[int, ...]]:
    if isinstance(kind, tuple):
        if len(kind) != 2 or not isinstance(kind[1], int | np.integer) or kind[1] < 1:
            raise ValueError(f"field {name!r}: a ring field is (dtype, length >= 1), got {kind!r}")
        dtype, shape = np.dtype(kind[0]), (int(kind[1]),)
    else:
        dtype, shape = np.dtype(kind), ()
    if dtype.kind not in "biuf":
        raise TypeError(f"field {name!r}: state fields are bool, integer or float, got {dtype}")
    return dtype.newbyteorder("="), shape


@dataclass(frozen=True)
class StateSpec:
    """The layout of one keyed state: fields, defaults and time to live.

    Parameters
    ----------
    fields
        Field name to numpy dtype, or to ``(dtype, n)`` for a ring of ``n`` values per key.
    defaults
        Field name to the value a new key starts with (a scalar, or for a ring field a scalar
        or ``n`` values). Fields not named here start at zero.
    ttl
        Keys whose last access is older than ``now - ttl`` expire; in the unit of the event
        times given to ``acquire``/``release``/``expire``. ``None``: keys never expire.

    Examples
    --------
    >>> StateSpec({"n": "int32"}, ttl=10).layout
    {'n': (dtype('int32'), ())}
    >>> StateSpec({"key": "int64"})
    Traceback (most recent call last):
    ...
    ValueError: field names 'key' and 'last_access' are reserved
    """

    fields: Mapping[str, FieldType]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    ttl: int | None = None
    _layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = field(
        init=False, repr=False, compare=False)
    _default_values: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a state spec needs at least one field")
        if any(name in RESERVED_NAMES for name in self.fields):
            raise ValueError("field names 'key' and 'last_access' are reserved")
        layout = {name: _field(name, kind) for name, kind in self.fields.items()}
        unknown = sorted(set(self.defaults) - set(layout))
        if unknown:
            raise ValueError(f"defaults for unknown fields {unknown}; fields are {list(layout)}")
        values = {}
        for name, (dtype, shape) in layout.items():
            raw = self.defaults.get(name, 0)
            try:
                values[name] = np.broadcast_to(np.asarray(raw, dtype=dtype), shape).copy()
            except (ValueError, TypeError, OverflowError) as error:
                raise ValueError(f"default {raw!r} does not fit field {name!r} "
                                 f"({dtype}, shape {shape}): {error}") from None
        if self.ttl is not None and (not isinstance(self.ttl, int | np.integer) or self.ttl < 0):
            raise ValueError(f"ttl is a non-negative integer or None, got {self.ttl!r}")
        object.__setattr__(self, "fields", dict(self.fields))
        object.__setattr__(self, "defaults", dict(self.defaults))
        object.__setattr__(self, "_layout", layout)
        object.__setattr__(self, "_default_values", values)

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(self._layout)

    @property
    def layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Field name to ``(dtype, shape of one key's value)``: shape ``()`` or ``(n,)``."""
        return dict(self._layout)

    def default(self, name: str) -> np.ndarray:
        """The value a new key starts with in field ``name`` (0-d, or 1-d for a ring field).

        Examples
        --------
        >>> StateSpec({"r": ("int8", 2)}, defaults={"r": [1, 2]}).default("r").tolist()
        [1, 2]
        """
        return self._default_values[name]

    def allocate(self, n: int, records: bool = False, fill: bool = True
                 ) -> dict[str, np.ndarray]:
        """Fresh arrays for ``n`` keys, filled with the defaults (``fill=False``: left
        uninitialized, for a caller that fills or overwrites every row it uses).

        With ``records=True`` the arrays are views into one buffer that keeps each key's
        fields together, in a record of :attr:`record_bytes` starting on a cache-line
        boundary: a kernel that reads and writes one key's fields then loads one or two cache
        lines, not one per field (the arrays are strided: row ``i`` of every field lies in
        record ``i``).

        Examples
        --------
        >>> StateSpec({"c": "int64"}).allocate(3)["c"].tolist()
        [0, 0, 0]
        >>> spec = StateSpec({"t": ("int64", 6), "x": ("float64", 6)})
        >>> arrays = spec.allocate(4, records=True)
        >>> spec.record_bytes, arrays["x"].strides, arrays["t"].ctypes.data % 64
        (128, (128, 8), 0)
        >>> arrays["x"].ctypes.data - arrays["t"].ctypes.data  # record 0: t, then x
        48
        """
        if records:
            out = self._record_views(n)
        else:
            out = {name: np.empty((n, *shape), dtype=dtype)
                   for name, (dtype, shape) in self._layout.items()}
        if fill:
            for name, array in out.items():
                array[...] = self._default_values[name]
        return out

    @property
    def record_bytes(self) -> int:
        """Bytes per key when the fields are kept together (``allocate(records=True)``).

        The fields are packed at their natural alignment, and the record is padded to a
        power of two up to 64 bytes and to whole 64-byte cache lines above, so no record
        straddles more lines than its size needs.

        Examples
        --------
        >>> StateSpec({"a": "int8", "b": "float64"}).record_bytes
        16
        >>> StateSpec({"ring": ("int64", 9)}).record_bytes
        128
        """
        return self._record_layout()[1]

    def _record_layout(self) -> tuple[dict[str, int], int]:
        """(byte offset of each field in a record, record size)."""
        offsets, end = {}, 0
        for name, (dtype, _) in sorted(self._layout.items(), key=lambda f: -f[1][0].itemsize):
            offsets[name] = end
            end += dtype.itemsize * int(np.prod(self._layout[name][1], dtype=np.int64))
        size = 1 << max(end - 1, 0).bit_length() if end <= _CACHE_LINE else (
            -(-end // _CACHE_LINE) * _CACHE_LINE)
        return offsets, size

    def _record_views(self, n: int) -> dict[str, np.ndarray]:
        offsets, size = self._record_layout()
        records = max(n, 1)  # numpy wants the offset of an empty view inside its buffer too
        raw = np.empty(records * size + _CACHE_LINE, dtype=np.uint8)
        start = -raw.ctypes.data % _CACHE_LINE  # the first record on a cache-line boundary
        buffer = raw[start:start + records * size]
        views = {}
        for name, (dtype, shape) in self._layout.items():
            views[name] = np.ndarray((n, *shape), dtype=dtype, buffer=buffer,
                                     offset=offsets[name],
                                     strides=(size, *(dtype.itemsize for _ in shape)))
        return views

    def fill_defaults(self, arrays: Mapping[str, np.ndarray], index: np.ndarray) -> None:
        """Set rows ``index`` of ``arrays`` (field name to array) to the defaults.

        Examples
        --------
        >>> spec = StateSpec({"c": "int64"}, defaults={"c": 7})
        >>> arrays = {"c": np.zeros(3, dtype=np.int64)}
        >>> spec.fill_defaults(arrays, np.array([0, 2]))
        >>> arrays["c"].tolist()
        [7, 0, 7]
        """
        if len(index):
            for name in self._layout:
                arrays[name][index] = self._default_values[name]

    def arrow_type(self, name: str) -> pa.DataType:
        """The Arrow type of field ``name``: its dtype, or a fixed-size list for a ring.

        Examples
        --------
        >>> StateSpec({"r": ("float32", 4)}).arrow_type("r")
        FixedSizeListType(fixed_size_list<item: float>[4])
        """
        dtype, shape = self._layout[name]
        value = pa.from_numpy_dtype(dtype)
        return pa.list_(value, shape[0]) if shape else value

    def describe(self) -> dict[str, list]:
        """A JSON-able description of the layout (``name -> [dtype string, ring length or 0]``),
        stored with snapshots and persistent state to check that they match the spec."""
        return {name: [np.dtype(dtype).newbyteorder("<").str, shape[0] if shape else 0]
                for name, (dtype, shape) in self._layout.items()}

    def check_layout(self, described: Mapping[str, list], where: str) -> None:
        """Raise ``ValueError`` naming the differences if ``described`` (from
        :meth:`describe`) is not this spec's layout.

        Examples
        --------
        >>> spec = StateSpec({"c": "int64"})
        >>> spec.check_layout({"c": ["<i4", 0]}, "snapshot")
        Traceback (most recent call last):
        ...
        ValueError: snapshot has fields {'c': ['<i4', 0]}, the spec has {'c': ['<i8', 0]}
        """
        mine = self.describe()
        if {k: list(v) for k, v in described.items()} != mine:
            raise ValueError(f"{where} has fields {dict(described)}, the spec has {mine}")

    def field_summary(self) -> str:
        """``name:dtype`` for every field, rings as ``dtype[n]``; for reprs.

        Examples
        --------
        >>> StateSpec({"c": "int64", "r": ("float64", 8)}).field_summary()
        'c:int64, r:float64[8]'
        """
        return ", ".join(f"{name}:{dtype}" + (f"[{shape[0]}]" if shape else "")
                         for name, (dtype, shape) in self._layout.items())
