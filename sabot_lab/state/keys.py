"""Key columns for keyed state: one Arrow array of int64 or string keys, never null.

Integer keys of any width become int64; uint64 keys keep their bits (a key above
``2**63 - 1`` is held as the negative int64 with the same bits, so every uint64 key stays
distinct; ``to_table`` shows such keys as those negative numbers); ``large_string``,
``string_view`` and dictionary columns become ``string``/``large_string`` values; numpy
arrays and Python sequences go through ``pyarrow.array``. Null keys are refused with
:class:`NullKeyError`: the operator routes them to a side output before state.

Examples
--------
>>> import numpy as np
>>> key_array(np.array([3, 1], dtype=np.int32)).type
DataType(int64)
>>> key_kind(key_array(["a", "b"]))
'string'
>>> key_array(pa.array([7, 2**64 - 1], pa.uint64())).to_pylist()
[7, -1]
>>> key_array([1, None, None])
Traceback (most recent call last):
...
sabot_lab.state.keys.NullKeyError: 2 of 3 keys are null; keyed state takes no null keys: ...
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

__all__ = ["KeyKind", "NullKeyError", "int_values", "key_array", "key_kind", "string_buffers"]

KeyKind = Literal["int64", "string"]


class NullKeyError(ValueError):
    """Keys given to keyed state contained nulls; ``null_count`` says how many."""

    def __init__(self, null_count: int, total: int) -> None:
        super().__init__(f"{null_count} of {total} keys are null; keyed state takes no null "
                         "keys: route them to a side output before the stateful operator")
        self.null_count = null_count


def key_array(keys: Any) -> pa.Array:
    """``keys`` as one non-null Arrow array of type int64, string or large_string.

    Parameters
    ----------
    keys
        A ``pyarrow.Array`` or ``ChunkedArray``, a numpy array or a Python sequence of
        integers or strings.

    Raises
    ------
    NullKeyError
        If any key is null (``None`` in a numpy or Python sequence).
    TypeError
        If the keys are neither integers nor strings.

    Examples
    --------
    >>> key_array(pa.array(["x", "y"]).dictionary_encode()).to_pylist()
    ['x', 'y']
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    elif not isinstance(keys, pa.Array):
        keys = pa.array(keys)
    if keys.null_count:
        raise NullKeyError(keys.null_count, len(keys))
    t = keys.type
    if pa.types.is_dictionary(t):
        return key_array(keys.dictionary_decode())
    if t == pa.uint64():
        return keys.view(pa.int64())  # all 2**64 values, one to one (a cast would overflow)
    if pa.types.is_integer(t):
        return keys if t == pa.int64() else keys.cast(pa.int64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return keys
    if pa.types.is_string_view(t):
        return keys.cast(pa.string())
    if pa.types.is_null(t) and len(keys) == 0:
        return pa.array([], type=pa.int64())
    raise TypeError(f"keys are integers or strings, got {t}")


def key_kind(keys: pa.Array) -> KeyKind:
    """``"int64"`` or ``"string"`` for an array from :func:`key_array`."""
    return "int64" if pa.types.is_integer(keys.type) else "string"


def int_values(keys: pa.Array) -> np.ndarray:
    """The int64 values of a non-null int64 array, zero-copy and read-only.

    Examples
    --------
    >>> int_values(pa.array([5, 6, 7]).slice(1)).tolist()
    [6, 7]
    """
    values = np.frombuffer(keys.buffers()[1], dtype=np.int64, count=keys.offset + len(keys))
    values = values[keys.offset:]
    values.flags.writeable = False
    return values


def string_buffers(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a string or large_string array: int64 offsets (``len + 1``) into
    the uint8 UTF-8 bytes, read-only; key ``i`` is ``data[offsets[i]:offsets[i + 1]]``.

    Examples
    --------
    >>> offsets, data = string_buffers(pa.array(["ab", "", "c"]))
    >>> offsets.tolist(), bytes(data[offsets[0]:offsets[-1]])
    ([0, 2, 2, 3], b'abc')
    """
    width = np.int64 if pa.types.is_large_string(keys.type) else np.int32
    buffers = keys.buffers()
    offsets = np.frombuffer(buffers[1], dtype=width, count=keys.offset + len(keys) + 1)
    offsets = offsets[keys.offset:].astype(np.int64)
    data = (np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None
            else np.zeros(0, dtype=np.uint8))
    offsets.flags.writeable = False
    data.flags.writeable = False
    return offsets, data
