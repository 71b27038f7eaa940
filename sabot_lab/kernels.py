"""Numba building blocks shared by operators and state backends.

:func:`prefetch` asks the CPU to start loading a row of an array that a kernel will need a
few rows later. Per-key state is read at random (each transaction touches its account's
row), so a kernel that walks a batch in order waits on memory for most rows once the state
outgrows the caches; naming the row of row ``i + distance`` while working on row ``i`` lets
those loads overlap. Numba has no prefetch of its own, so this is LLVM's
``llvm.prefetch`` intrinsic, written here.

Examples
--------
>>> import numba
>>> import numpy as np
>>> @numba.njit
... def total(table, rows):
...     s = 0.0
...     for i in range(rows.shape[0]):
...         if i + PREFETCH_DISTANCE < rows.shape[0]:
...             prefetch(table, rows[i + PREFETCH_DISTANCE])
...         s += table[rows[i], 0]
...     return s
>>> total(np.arange(12.0).reshape(6, 2), np.array([5, 0, 5]))
20.0
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["PREFETCH_DISTANCE", "prefetch"]

#: Rows ahead to prefetch: far enough for the load to arrive, near enough for the line to
#: still be in the cache (``benchmarks/fraud.py`` measures its effect on a hand kernel).
PREFETCH_DISTANCE = 8


@intrinsic
def prefetch(typingctx: object, array: types.Type, row: types.Type) -> tuple | None:
    """Start loading the cache lines that hold the first and the last value of
    ``array[row]`` (all of the row, for rows of up to two cache lines). A hint: it never
    faults and changes nothing.

    ``row`` must be a valid row index of ``array`` (1-D or 2-D, any strides); the caller
    checks it. For use inside numba-compiled functions only.
    """
    if not isinstance(array, types.Array) or array.ndim > 2 or not isinstance(
            row, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # pragma: no cover - compile time
        value, index = args
        array_type, index_type = signature.args
        view = context.make_array(array_type)(context, builder, value)
        index = context.cast(builder, index, index_type, types.intp)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        ends = [[]] if array_type.ndim == 1 else [
            [context.get_constant(types.intp, 0)],
            [builder.sub(cgutils.unpack_tuple(builder, view.shape)[1],
                         context.get_constant(types.intp, 1))]]
        for end in ends:
            pointer = cgutils.get_item_pointer(context, builder, array_type, view,
                                               [index, *end], wraparound=False)
            # (address, 1 = for writing, 3 = keep in all cache levels, 1 = data cache)
            builder.call(function, [builder.bitcast(pointer, byte_pointer),
                                    ir.Constant(i32, 1), ir.Constant(i32, 3),
                                    ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, row), codegen
