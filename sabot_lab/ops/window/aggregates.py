"""Partial aggregates per (window, key) slot, updated incrementally with numba kernels.

A window operator keeps one row of slots per open window and one slot per key id in that row
(flat slot = ``row * key_capacity + key``). Each batch updates the slots of its rows with one
kernel call per input column; a window's results are read when it fires, and its row is reset
and reused once the window can no longer change. Memory is bounded by the open windows times
the keys seen, never by the rows.

Exact quantiles keep the (key, value) pairs of their window until it fires, then select the
needed order statistics per key (numba ``np.partition``: linear time, no full sort), and
interpolate between them as DuckDB's ``quantile_cont`` does, infinities included.

Integer columns are summed, and their minimum and maximum kept, as int64, uint64 columns as
uint64 (exact past ``2**63 - 1``); a sum that a ``sum`` or ``mean`` reads and that leaves that
range raises ``OverflowError`` naming the column, as does a uint64 sum beyond the int64 result
of ``sum``.

Examples
--------
>>> import numpy as np
>>> import pyarrow as pa
>>> from sabot_lab.plan.windows import count, mean, quantile
>>> schema = pa.schema([("v", pa.float64())])
>>> partials = PartialAggregates((("n", count()), ("avg", mean("v")),
...                               ("p50", quantile("v", 0.5))), schema)
>>> row = partials.new_row()
>>> partials.accumulate(row, np.array([0, 1, 0]), pa.record_batch({"v": [1.0, 5.0, 3.0]}))
>>> {name: a.to_pylist() for name, a in partials.arrays(row, np.array([0, 1])).items()}
{'n': [2, 1], 'avg': [2.0, 5.0], 'p50': [2.0, 5.0]}
>>> partials.results(row, 0)
{'n': 2, 'avg': 2.0, 'p50': 2.0}
"""

from __future__ import annotations

import builtins
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.snapshot import SnapshotReader, in_range
from sabot_lab.ops.window.sketch import QuantileSketches

__all__ = ["PartialAggregates"]


@numba.njit(nogil=True, cache=True)
def _count(slots, counts):  # pragma: no cover - numba
    for i in range(slots.shape[0]):
        if slots[i] >= 0:
            counts[slots[i]] += 1


@numba.njit(nogil=True, cache=True)
def _accumulate(slots, values, valid, sums, nonnull, mins, maxs, checked, low,
                high):  # pragma: no cover - numba
    """Sum, non-null count, min and max per slot; NaN counts as missing (like pandas).
    Returns False if ``checked`` and a sum would leave ``[low, high]`` (it is then not added)."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0 or not valid[i]:
            continue
        v = values[i]
        if v != v:
            continue
        if checked and ((v > 0 and sums[s] > high - v) or (v < 0 and sums[s] < low - v)):
            return False
        sums[s] += v
        nonnull[s] += 1
        if v < mins[s]:
            mins[s] = v
        if v > maxs[s]:
            maxs[s] = v
    return True


@numba.njit(nogil=True, cache=True)
def _accumulate_row(offset, keys, values, valid, all_valid, counts, count, sums, nonnull,
                    mins, maxs, extrema, checked, low, high):  # pragma: no cover - numba
    """:func:`_accumulate` (and, when ``count``, :func:`_count`) for every row of a batch
    into one row of slots, slot ``offset + keys[i]``: one pass, no slot array. Returns the
    row at which a checked sum would leave ``[low, high]`` (everything before it is added,
    that row is not), or -1."""
    for i in range(keys.shape[0]):
        s = offset + keys[i]
        if count:
            counts[s] += 1
        if not all_valid and not valid[i]:
            continue
        v = values[i]
        if v != v:
            continue
        if checked and ((v > 0 and sums[s] > high - v) or (v < 0 and sums[s] < low - v)):
            return i
        sums[s] += v
        nonnull[s] += 1
        if extrema:
            if v < mins[s]:
                mins[s] = v
            if v > maxs[s]:
                maxs[s] = v
    return -1


@numba.njit(nogil=True, cache=True)
def _accumulate_window(ts, wm, period, period_end, end, offset, keys, table, base, values,
                       valid, all_valid, has_values, counts, sums, nonnull, mins, maxs,
                       extrema, checked, low, high):  # pragma: no cover - numba
    """Count (and, when ``has_values``, :func:`_accumulate` one column) the leading rows of a
    batch that fall in one window and that the watermark has not passed: event time in
    ``[period, period_end)``, row watermark below ``end``. Fuses classification and
    aggregation into one pass. Returns (rows taken, their largest event time and row
    watermark, whether a checked sum stopped it: that row is counted but not summed).

    With a ``table`` (not empty), ``keys`` are integer key values and their ids are
    ``table[key - base]``; a key not in it (-1 or out of range) stops the run too."""
    t_max, wm_max = np.iinfo(np.int64).min, np.iinfo(np.int64).min
    size = table.shape[0]
    for i in range(ts.shape[0]):
        t = ts[i]
        w = wm[i]
        if t < period or t >= period_end or w >= end:
            return i, t_max, wm_max, False
        k = keys[i]
        if size:
            j = k - base
            if j < 0 or j >= size:
                return i, t_max, wm_max, False
            k = table[j]
            if k < 0:
                return i, t_max, wm_max, False
        t_max = max(t_max, t)
        wm_max = max(wm_max, w)
        s = offset + k
        counts[s] += 1
        if not has_values or (not all_valid and not valid[i]):
            continue
        v = values[i]
        if v != v:
            continue
        if checked and ((v > 0 and sums[s] > high - v) or (v < 0 and sums[s] < low - v)):
            return i, t_max, wm_max, True
        sums[s] += v
        nonnull[s] += 1
        if extrema:
            if v < mins[s]:
                mins[s] = v
            if v > maxs[s]:
                maxs[s] = v
    return ts.shape[0], t_max, wm_max, False


@numba.njit(nogil=True, cache=True)
def _merge_slots(into, source, sums, nonnull, mins, maxs, checked, low,
                 high):  # pragma: no cover - numba
    """Fold slot ``source[j]`` into slot ``into[j]`` for every ``j``, in order. Returns False
    if ``checked`` and a sum would leave ``[low, high]`` (nothing is changed from that pair on)."""
    for j in range(into.shape[0]):
        t, s = into[j], source[j]
        v = sums[s]
        if checked and ((v > 0 and sums[t] > high - v) or (v < 0 and sums[t] < low - v)):
            return False
        sums[t] += v
        nonnull[t] += nonnull[s]
        if mins[s] < mins[t]:
            mins[t] = mins[s]
        if maxs[s] > maxs[t]:
            maxs[t] = maxs[s]
    return True


@numba.njit(nogil=True, cache=True)
def _interpolate(a, b, fraction):  # pragma: no cover - numba
    """``a + fraction * (b - a)`` for order statistics ``a <= b``, as DuckDB's
    ``quantile_cont``: exactly ``a`` at a whole rank or between equal values (also
    infinities), and weighted (``a * (1 - fraction) + b * fraction``) where ``b - a``
    overflows or is infinite, so ``[1, inf]`` gives ``inf`` and ``[-1e308, 1e308]`` ``0``."""
    if fraction == 0.0 or a == b:
        return a
    spread = b - a
    if math.isinf(spread):
        return a * (1.0 - fraction) + b * fraction
    return a + fraction * spread


@numba.njit(nogil=True, cache=True)
def _select(a, lo, hi, k):  # pragma: no cover - numba
    """Rearrange ``a[lo:hi]`` in place so that ``a[k]`` is its k-th smallest element, smaller
    ones before it and larger ones after (quickselect, median-of-three pivots)."""
    hi -= 1
    while hi > lo:
        mid = (lo + hi) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


def _group_quantiles_impl(keys, values, wanted, qs, out):  # pragma: no cover - numba
    """Linear-interpolation quantiles ``qs`` (ascending) of ``values`` per key in ``wanted``.

    Values are counting-sorted by key; in each group the needed ranks are selected in place
    from the lowest up, each selection working only on what lies above the previous one
    (linear time; for p95/p99 the second pass touches 5% of the group).
    """
    n_keys = 0
    for k in wanted:
        n_keys = max(n_keys, k + 1)
    for k in keys:
        n_keys = max(n_keys, k + 1)
    starts = np.zeros(n_keys + 1, dtype=np.int64)
    for k in keys:
        starts[k + 1] += 1
    for k in range(n_keys):
        starts[k + 1] += starts[k]
    fill = starts[:-1].copy()
    ordered = np.empty(values.shape[0], dtype=np.float64)
    for i in range(values.shape[0]):
        k = keys[i]
        ordered[fill[k]] = values[i]
        fill[k] += 1
    for j in numba.prange(wanted.shape[0]):  # groups are disjoint slices: one per thread
        k = wanted[j]
        begin, stop = starts[k], starts[k + 1]
        n = stop - begin
        if n == 0:
            out[j, :] = np.nan
            continue
        done = begin  # everything below ``done`` is in its final place
        for c in range(qs.shape[0]):
            h = (n - 1) * qs[c]
            lo = int(np.floor(h))
            if begin + lo >= done:
                _select(ordered, done, stop, begin + lo)
                done = begin + lo + 1
            a = ordered[begin + lo]
            b = a
            if lo + 1 < n:  # the next order statistic: the smallest of what lies above
                b = ordered[begin + lo + 1]
                for i in range(begin + lo + 2, stop):
                    if ordered[i] < b:
                        b = ordered[i]
            out[j, c] = _interpolate(a, b, h - lo)


@numba.njit(nogil=True, cache=True)
def _bucket_move(k, begin, ends, data, used):  # pragma: no cover - numba
    """Move full bucket ``k`` to the end of ``data`` with twice the room; False when there
    is no room for it."""
    b = begin[k]
    n = ends[k, 0] - b
    room = max(8, 2 * n)
    at = used[0]
    if at + room > data.shape[0]:
        return False
    for j in range(n):
        data[at + j] = data[b + j]
    begin[k] = at
    ends[k, 0] = at + n
    ends[k, 1] = at + room
    used[0] = at + room
    return True


@numba.njit(nogil=True, cache=True)
def _bucket_append(keys, values, valid, all_valid, first, begin, ends, data, used, pivots,
                   tail_begin, tail_ends, tail_data, tail_used):  # pragma: no cover - numba
    """Append ``values[i]`` (skipping null and NaN) to the bucket of key ``keys[i]`` for
    ``i >= first``: bucket ``k`` is ``data[begin[k]:ends[k, 0]]`` with room up to
    ``ends[k, 1]`` (next write position and end side by side: one cache line per row); a
    full bucket moves to the end of ``data`` (``used[0]`` slots in use) with twice the room.
    With ``pivots`` (not empty), a value at or above ``pivots[k]`` also goes to the tail
    buckets (laid out the same way). Returns -1 when done, or the row at which an array is
    full (grow it and call again from there)."""
    filtered = pivots.shape[0] > 0
    for i in range(first, keys.shape[0]):
        if not all_valid and not valid[i]:
            continue
        v = values[i]
        if v != v:
            continue
        k = keys[i]
        if ends[k, 0] == ends[k, 1] and not _bucket_move(k, begin, ends, data, used):
            return i
        tail = filtered and v >= pivots[k]
        if tail and tail_ends[k, 0] == tail_ends[k, 1] and not _bucket_move(
                k, tail_begin, tail_ends, tail_data, tail_used):
            return i
        p = ends[k, 0]
        data[p] = v
        ends[k, 0] = p + 1
        if tail:
            p = tail_ends[k, 0]
            tail_data[p] = v
            tail_ends[k, 0] = p + 1
    return -1


@numba.njit(nogil=True, cache=True)
def _bucket_pairs(begin, length, data, ids, values):  # pragma: no cover - numba
    """The buckets as (key id, value) pairs, key by key."""
    at = 0
    for k in range(length.shape[0]):
        b = begin[k]
        for j in range(length[k]):
            ids[at] = k
            values[at] = data[b + j]
            at += 1


@numba.njit(nogil=True, cache=True)
def _ranks(a, begin, stop, n, skipped, qs, out, j):  # pragma: no cover - numba
    """Quantiles ``qs`` (ascending) of ``n`` values into ``out[j]``, of which ``a[begin:stop]``
    holds all but the ``skipped`` smallest (each needed rank at least ``skipped``): the
    needed ranks selected in place from the lowest up, as :func:`_group_quantiles_impl`."""
    done = begin
    for c in range(qs.shape[0]):
        h = (n - 1) * qs[c]
        lo = int(np.floor(h))
        at = begin + lo - skipped
        if at >= done:
            _select(a, done, stop, at)
            done = at + 1
        x = a[at]
        y = x
        if lo + 1 < n:  # the next order statistic: the smallest of what lies above
            y = a[at + 1]
            for i in range(at + 2, stop):
                if a[i] < y:
                    y = a[i]
        out[j, c] = _interpolate(x, y, h - lo)


def _bucket_quantiles_impl(begin, length, data, tail_begin, tail_length, tail_data,
                           old_pivots, wanted, qs, out, pivots):  # pragma: no cover - numba
    """:func:`_group_quantiles_impl` over values already grouped by key (buckets): no sort.

    The tail buckets (``tail_length`` empty: none) hold each key's values at or above the
    pivot it had when the window opened; when every needed rank lies in a key's tail (the
    values below the pivot, ``length - tail_length``, are no more than the lowest needed
    rank), only its tail is selected among. Otherwise, for a large bucket, a pivot taken
    from a strided sample of 64 values (a little below the lowest needed rank) splits the
    bucket in one pass, checked the same way; else the whole bucket is selected in place.
    ``pivots[j]`` is set to the pivot of key ``wanted[j]`` for the windows to come (NaN:
    none): ``old_pivots[k]`` (its pivot in this window) when its tail served, else sampled."""
    for j in range(wanted.shape[0]):
        k = wanted[j]
        pivots[j] = np.nan
        n = length[k] if k < length.shape[0] else 0
        if n == 0:
            out[j, :] = np.nan
            continue
        first = begin[k]
        stop = first + n
        lowest = int(np.floor((n - 1) * qs[0]))  # the lowest rank needed
        pick = (64 * lowest) // n - 6  # a sample rank a little below it
        if n < 256 or pick < 1:
            _ranks(data, first, stop, n, 0, qs, out, j)
            continue
        if k < tail_length.shape[0]:
            kept = tail_length[k]
            if kept and n - kept <= lowest:  # only the tail: a few values per key
                _ranks(tail_data, tail_begin[k], tail_begin[k] + kept, n, n - kept, qs, out,
                       j)
                pivots[j] = old_pivots[k]
                continue
        sample = np.empty(64)
        for i in range(64):
            sample[i] = data[first + (i * n) // 64]
        _select(sample, 0, 64, pick)
        pivot = sample[pick]
        pivots[j] = pivot
        scratch = np.empty(n)
        kept = 0
        for i in range(first, stop):  # branch-free: every value written, kept counted
            v = data[i]
            scratch[kept] = v
            kept += v >= pivot
        below = n - kept
        if below <= lowest:
            _ranks(scratch, 0, kept, n, below, qs, out, j)
            continue
        _ranks(data, first, stop, n, 0, qs, out, j)


_bucket_quantiles = numba.njit(nogil=True, cache=True)(_bucket_quantiles_impl)


class _Arena:
    """Values grouped by key id in one array: bucket ``k`` is
    ``data[begin[k]:ends[k, 0]]`` with room up to ``ends[k, 1]``; full buckets move to the
    end with twice the room (see :func:`_bucket_append`)."""

    def __init__(self, n_keys: int, expected: np.ndarray | None = None,
                 spare: np.ndarray | None = None) -> None:
        """``expected``: values per key expected (e.g. the previous window's), to lay the
        buckets out once instead of growing them; ``spare``: memory to reuse (its contents
        are overwritten)."""
        room = np.zeros(n_keys, np.int64)
        if expected is not None and len(expected):
            m = min(n_keys, len(expected))
            room[:m] = expected[:m] + expected[:m] // 4 + 8
        self.begin = np.zeros(n_keys, np.int64)
        self.begin[1:] = np.cumsum(room)[:-1]
        self.ends = np.stack([self.begin, self.begin + room], axis=1)
        size = int(room.sum()) * 9 // 8 + (1 << 12)  # and slack for buckets that outgrow it
        self.data = spare if spare is not None and len(spare) >= size else np.empty(size)
        self.used = np.array([int(room.sum())], np.int64)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.begin.nbytes + self.ends.nbytes

    @property
    def length(self) -> np.ndarray:
        return self.ends[:, 0] - self.begin

    def make_room(self, n_keys: int, rows: int | None) -> None:
        """Buckets for key ids below ``n_keys``, and (unless ``None``) room for ``rows``
        more values (with their buckets moved once)."""
        if n_keys > len(self.begin):  # new keys: empty buckets, to be placed when first full
            grow = max(n_keys, 2 * len(self.begin)) - len(self.begin)
            at = np.full(grow, int(self.used[0]), np.int64)
            self.begin = np.concatenate([self.begin, at])
            self.ends = np.concatenate([self.ends, np.stack([at, at], axis=1)])
        if rows is None:
            return
        used = int(self.used[0])
        largest = int((self.ends[:, 1] - self.begin).max()) if len(self.begin) else 0
        needed = used + 2 * rows + 2 * largest + 8
        if needed > len(self.data):
            data = np.empty(max(needed, 2 * len(self.data)))
            data[:used] = self.data[:used]
            self.data = data


class _Buckets:
    """The values kept for an exact quantile of one row of slots, grouped by key id as they
    arrive (so that firing only selects, it does not sort), and, for keys with a pivot (the
    previous window's, see :func:`_bucket_quantiles`), those at or above it once more, in a
    tail arena: firing then selects among a few values per key. Turned into
    ``(ids, values)`` chunks (:meth:`pairs`) whenever anything but appending and firing
    needs them."""

    def __init__(self, n_keys: int, expected: np.ndarray | None = None,
                 spare: np.ndarray | None = None, pivots: np.ndarray | None = None,
                 expected_tail: np.ndarray | None = None) -> None:
        self.all = _Arena(n_keys, expected, spare)
        self.pivots = np.zeros(0)
        self.tail = _Arena(0)
        if pivots is not None and len(pivots):
            self.pivots = np.full(max(n_keys, len(pivots)), np.inf)
            self.pivots[:len(pivots)] = np.where(np.isnan(pivots), np.inf, pivots)
            self.tail = _Arena(n_keys, expected_tail)

    @property
    def nbytes(self) -> int:
        return self.all.nbytes + self.tail.nbytes + self.pivots.nbytes

    @property
    def length(self) -> np.ndarray:
        return self.all.length

    def append(self, keys: np.ndarray, values: np.ndarray, valid: np.ndarray) -> None:
        all_valid = bool(valid.all())
        n_keys = int(keys.max()) + 1 if len(keys) else 0
        self.all.make_room(n_keys, None)
        if len(self.pivots):
            if n_keys > len(self.pivots):  # keys new in this window: no pivot (inf)
                self.pivots = np.concatenate(
                    [self.pivots, np.full(max(n_keys, 2 * len(self.pivots)) - len(self.pivots),
                                          np.inf)])
            self.tail.make_room(n_keys, None)
        first = 0
        while True:
            first = _bucket_append(keys, values, valid, all_valid, first, self.all.begin,
                                   self.all.ends, self.all.data, self.all.used, self.pivots,
                                   self.tail.begin, self.tail.ends, self.tail.data,
                                   self.tail.used)
            if first < 0:
                return
            self.all.make_room(n_keys, len(keys) - first)
            if len(self.pivots):
                self.tail.make_room(n_keys, len(keys) - first)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        length = self.all.length
        total = int(length.sum())
        ids, values = np.empty(total, np.int64), np.empty(total)
        _bucket_pairs(self.all.begin, length, self.all.data, ids, values)
        return ids, values

    def quantiles(self, keys: np.ndarray, qs: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Quantiles ``qs`` of ``keys`` into ``out``; returns each key's sampled pivot (NaN:
        none), to open the next window with."""
        pivots = np.empty(len(keys))
        # One thread: after the per-batch grouping the work is small, and a parallel region
        # costs more than it saves on a busy machine (measured: spikes of 10-30 ms).
        _bucket_quantiles(self.all.begin, self.all.length, self.all.data, self.tail.begin,
                          self.tail.length, self.tail.data, self.pivots, keys, qs, out, pivots)
        return pivots


_group_quantiles_serial = numba.njit(nogil=True, cache=True)(_group_quantiles_impl)
_group_quantiles_parallel = numba.njit(nogil=True, cache=True, parallel=True)(
    _group_quantiles_impl)
#: Below this many values a window's quantiles are computed in one thread: starting the
#: parallel region costs more than it saves (measured: ~5-25 ms per call on a busy 2-core
#: machine, against ~0.5 ms of work for 30K values).
PARALLEL_QUANTILES_FROM = 250_000


def _group_quantiles(keys, values, wanted, qs, out) -> None:
    """:func:`_group_quantiles_impl`, on all cores for large windows."""
    kernel = (_group_quantiles_parallel if len(values) >= PARALLEL_QUANTILES_FROM
              else _group_quantiles_serial)
    kernel(keys, values, wanted, qs, out)


def warm_up() -> None:
    """Load (or compile) the kernels before the first batch."""
    slots = np.zeros(1, dtype=np.int64)
    _count(slots, np.zeros(1, dtype=np.int64))
    # Validity is writable (columns with nulls) or the shared read-only one: two types.
    for valid, dtype in itertools.product((np.ones(1, dtype=np.bool_), _all_valid(1)),
                                          (np.float64, np.int64, np.uint64)):
        one = np.zeros(1, dtype=dtype)
        state = _ColumnState(dtype)
        _accumulate_window(slots, slots, 0, 1, 1, 0, slots, np.zeros(0, np.int64), 0, one,
                           valid, True, True, np.zeros(1, dtype=np.int64), one.copy(),
                           np.zeros(1, dtype=np.int64), one.copy(), one.copy(), True,
                           state.checked, state.low, state.high)
        _accumulate_row(0, slots, one, valid, True, np.zeros(1, dtype=np.int64), True,
                        one.copy(), np.zeros(1, dtype=np.int64), one.copy(), one.copy(), True,
                        state.checked, state.low, state.high)
    for dtype in (np.float64, np.int64):
        one = np.zeros(1, dtype=dtype)
        state = _ColumnState(dtype)
        _accumulate(slots, one, np.ones(1, dtype=np.bool_), one.copy(),
                    np.zeros(1, dtype=np.int64), one.copy(), one.copy(), state.checked,
                    state.low, state.high)
    _group_quantiles_serial(slots, np.zeros(1), slots, np.array([0.5]), np.empty((1, 1)))
    for pivots in (None, np.zeros(1)):
        buckets = _Buckets(1, pivots=pivots)
        buckets.append(slots, np.zeros(1), np.ones(1, dtype=np.bool_))
        buckets.append(slots, np.zeros(1), _all_valid(1))
        buckets.quantiles(slots, np.array([0.5]), np.empty((1, 1)))
        buckets.pairs()


def _dtype(t: pa.DataType) -> type:
    """The numpy type a column of type ``t`` is aggregated in: float64 for floats and
    decimals, uint64 for uint64 (whose values pass int64's range), int64 otherwise."""
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return np.float64
    return np.uint64 if t == pa.uint64() else np.int64


def _signed_sums(column: str, sums: np.ndarray) -> np.ndarray:
    """Integer sums as int64, the type of ``sum()``'s result; a uint64 sum beyond it is
    refused, naming the column."""
    if sums.dtype.kind == "u" and len(sums) and sums.max() > np.iinfo(np.int64).max:
        raise OverflowError(
            f"the sum of uint64 column {column!r} in one group passes the int64 range of "
            f"sum()'s result; cast the column to float64 first (with_columns({column}="
            f"sl.col({column!r}).cast(pa.float64())))")
    return sums.astype(np.int64, copy=False)


def _quantile(values: np.ndarray, q: float) -> float:
    """Quantile ``q`` of ``values`` as the window kernel computes it (NaN when empty)."""
    out = np.empty((1, 1))
    _group_quantiles_serial(np.zeros(len(values), np.int64), values, np.zeros(1, np.int64),
                            np.array([q]), out)
    return float(out[0, 0])


def _numeric(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values as int64, uint64 or float64, validity) of a numeric, temporal or boolean
    column."""
    t = column.type
    if pa.types.is_temporal(t):  # timestamps, durations, dates, times: their integer values
        column = column.view(pa.int64() if t.bit_width == 64 else pa.int32())
    wanted = pa.from_numpy_dtype(_dtype(t))
    if column.type != wanted:
        column = column.cast(wanted)
    if column.null_count:
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        return column.fill_null(0).to_numpy(zero_copy_only=False), valid
    return column.to_numpy(zero_copy_only=False), _all_valid(len(column))


_ALL_VALID = np.ones(0, dtype=np.bool_)
#: Batches of at least this many rows into one row of slots keep exact-quantile values in
#: buckets by key (:class:`_Buckets`); smaller ones as (ids, values) chunks.
_BUCKETS_FROM = 256


def _all_valid(n: int) -> np.ndarray:
    """A read-only validity of ``n`` rows, all valid (one shared array, not one per batch)."""
    global _ALL_VALID
    if len(_ALL_VALID) < n:
        _ALL_VALID = np.ones(max(n, 1 << 16), dtype=np.bool_)
        _ALL_VALID.flags.writeable = False
    return _ALL_VALID[:n]


class _ColumnState:
    """Sum, non-null count, min and max of one input column, per slot.

    Integer sums that a ``sum`` or ``mean`` reads (``summed``) are checked against the range
    of ``dtype``, ``[low, high]``; unread ones (only min/max asked) may wrap around.
    """

    def __init__(self, dtype: type, summed: bool = True, extrema: bool = True) -> None:
        self.dtype = np.dtype(dtype)
        self.integers = self.dtype.kind in "iu"
        self.checked = self.integers and summed
        # Whether a min or max reads mins/maxs: the fused kernels skip them otherwise (they
        # then keep whatever the other kernels wrote; nothing reads them).
        self.extrema = extrema
        if self.integers:
            info = np.iinfo(self.dtype)
            self.low, self.high = self.dtype.type(info.min), self.dtype.type(info.max)
        else:
            self.low, self.high = self.dtype.type(-np.inf), self.dtype.type(np.inf)
        self.sums = np.zeros(0, self.dtype)
        self.nonnull = np.zeros(0, np.int64)
        self.mins = np.zeros(0, self.dtype)
        self.maxs = np.zeros(0, self.dtype)

    def arrays(self) -> list[str]:
        return ["sums", "nonnull", "mins", "maxs"]

    def empty_value(self, name: str) -> object:
        """What an empty slot of array ``name`` holds."""
        return {"mins": self.high, "maxs": self.low}.get(name, 0)

    def fresh(self, name: str, size: int) -> np.ndarray:
        return np.full(size, self.empty_value(name),
                       dtype=np.int64 if name == "nonnull" else self.dtype)

    def overflow(self, name: str) -> OverflowError:
        """The error for a sum of column ``name`` that leaves the range of ``dtype``."""
        return OverflowError(
            f"the sum of integer column {name!r} in one group passes the {self.dtype} range; "
            f"cast the column to float64 first (with_columns({name}=sl.col({name!r})"
            f".cast(pa.float64())))")


class PartialAggregates:
    """Incremental count, sum, mean, min, max and exact quantiles per slot.

    Parameters
    ----------
    aggs
        ``(output name, AggSpec)`` pairs.
    schema
        The input schema (types of the aggregated columns).
    """

    def __init__(self, aggs: Sequence[tuple[str, Any]], schema: pa.Schema) -> None:
        self.aggs = tuple(aggs)
        self.schema = schema
        self.columns: dict[str, _ColumnState] = {}
        self.quantile_columns: list[str] = []
        # Approximate quantiles: one sketch set per (column, relative error), by flat slot.
        self.sketches: dict[tuple[str, float], QuantileSketches] = {}
        for _, agg in self.aggs:
            if agg.column is None:
                continue
            if agg.function == "quantile":
                if agg.column not in self.quantile_columns:
                    self.quantile_columns.append(agg.column)
            elif agg.function == "approx_quantile":
                self.sketches.setdefault((agg.column, agg.relative_error),
                                         QuantileSketches(relative_error=agg.relative_error))
            elif agg.column not in self.columns:
                summed = any(a.column == agg.column and a.function in ("sum", "mean")
                             for _, a in self.aggs)
                extrema = any(a.column == agg.column and a.function in ("min", "max")
                              for _, a in self.aggs)
                self.columns[agg.column] = _ColumnState(_dtype(schema.field(agg.column).type),
                                                        summed, extrema)
        self.key_capacity = 1
        self.row_capacity = 0
        self.rows = 0
        self.free_rows: list[int] = []
        self.counts = np.zeros(0, np.int64)
        # Exact quantiles: per row, per column, the (key ids, values) chunks seen so far.
        self.kept: dict[int, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
        self.sorted_kept: set[tuple[int, str]] = set()  # (row, column) whose chunk 0 is sorted
        # Values appended to a single row, grouped by key as they arrive, by (row, column);
        # part of ``kept`` (moved there by _flush before anything else reads it).
        self.buckets: dict[tuple[int, str], _Buckets] = {}
        # Per column, of the last window fired: values per key, values per key at or above
        # the pivot, and each key's pivot for the windows to come (by key id, NaN: none).
        self.bucket_sizes: dict[str, np.ndarray] = {}
        self.tail_sizes: dict[str, np.ndarray] = {}
        self.pivots: dict[str, np.ndarray] = {}
        self.spare_buckets: list[np.ndarray] = []  # memory of released rows' buckets
        # Per row, the lowest and highest key id it may hold (a row without an entry: any).
        # Firing and releasing a window scan only that span of its row: when key ids keep
        # growing (new auctions, accounts) a window holds recent ones, not all seen so far.
        self.spans: dict[int, tuple[int, int]] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held: slot arrays, sketches, and values kept for exact quantiles."""
        arrays = self.counts.nbytes + sum(
            getattr(c, a).nbytes for c in self.columns.values() for a in c.arrays()) + sum(
            s.nbytes for s in self.sketches.values())
        kept = sum(k.nbytes + v.nbytes for row in self.kept.values() for chunks in row.values()
                   for k, v in chunks) + sum(b.nbytes for b in self.buckets.values())
        return arrays + kept

    def _arrays(self) -> list[tuple[object, str]]:
        return [(self, "counts")] + [(c, a) for c in self.columns.values() for a in c.arrays()]

    def _fresh(self, owner: object, name: str, size: int) -> np.ndarray:
        if owner is self:
            return np.zeros(size, np.int64)
        return owner.fresh(name, size)

    def _empty_value(self, owner: object, name: str) -> object:
        """The value of an empty slot of array ``name`` (what :meth:`_fresh` fills)."""
        return 0 if owner is self else owner.empty_value(name)

    def _flush(self, row: int | None = None) -> None:
        """Move the bucketed values of ``row`` (of every row when ``None``) to ``kept`` as
        one (ids, values) chunk per column."""
        for (r, column) in [k for k in self.buckets if row is None or k[0] == row]:
            ids, values = self.buckets.pop((r, column)).pairs()
            if len(ids):
                self.kept[r][column].append((ids, values))

    def ensure_keys(self, n_keys: int) -> None:
        """Make room for key ids below ``n_keys`` (doubling; existing slots keep their data)."""
        if n_keys <= self.key_capacity:
            return
        capacity = max(n_keys, 2 * self.key_capacity)
        for owner, name in self._arrays():
            old = getattr(owner, name).reshape(self.row_capacity, self.key_capacity)
            new = self._fresh(owner, name, self.row_capacity * capacity).reshape(
                self.row_capacity, capacity)
            new[:, :self.key_capacity] = old
            setattr(owner, name, new.reshape(-1))
        for index, sketches in self.sketches.items():  # flat slots move: row * capacity + key
            old_slots = np.arange(sketches.n_slots)
            moved = QuantileSketches(relative_error=sketches.relative_error)
            moved.merge(sketches, (old_slots // self.key_capacity) * capacity
                        + old_slots % self.key_capacity)
            self.sketches[index] = moved
        self.key_capacity = capacity

    def new_row(self) -> int:
        """A fresh row of slots (for a newly opened window)."""
        if self.free_rows:
            row = self.free_rows.pop()
        else:
            row = self.rows
            self.rows += 1
            if self.rows > self.row_capacity:
                self.row_capacity = max(4, 2 * self.row_capacity)
                for owner, name in self._arrays():
                    old = getattr(owner, name)
                    new = self._fresh(owner, name, self.row_capacity * self.key_capacity)
                    new[:len(old)] = old
                    setattr(owner, name, new)
        self.kept[row] = {c: [] for c in self.quantile_columns}
        self.spans[row] = (self.key_capacity, -1)  # empty
        return row

    def _span(self, row: int) -> tuple[int, int]:
        """The key ids ``row`` may hold, as a range (empty when ``low > high``)."""
        return self.spans.get(row, (0, self.key_capacity - 1))

    def _widen(self, row: int | np.ndarray, keys: np.ndarray) -> None:
        """Note that ``row`` (or each of the rows) now holds some of ``keys``."""
        if not len(keys):
            return
        low, high = int(keys.min()), int(keys.max())
        rows = np.flatnonzero(np.bincount(row)).tolist() if np.ndim(row) else [int(row)]
        for r in rows:
            if r in self.spans:
                old_low, old_high = self.spans[r]
                self.spans[r] = (min(old_low, low), max(old_high, high))

    def release(self, row: int) -> None:
        """Reset a row's slots and make it reusable."""
        low, high = self._span(row)
        high = max(high, low - 1)
        window = slice(row * self.key_capacity + low, row * self.key_capacity + high + 1)
        for owner, name in self._arrays():
            getattr(owner, name)[window] = self._empty_value(owner, name)
        self.kept.pop(row, None)
        self.sorted_kept -= {(row, c) for c in self.quantile_columns}
        for column in self.quantile_columns:
            buckets = self.buckets.pop((row, column), None)
            if buckets is not None and len(self.spare_buckets) < 2:
                self.spare_buckets.append(buckets.all.data)
        for sketches in self.sketches.values():
            sketches.reset(np.arange(window.start, window.stop))
        self.spans.pop(row, None)
        self.free_rows.append(row)

    def compact(self, live: Sequence[int]) -> dict[int, int]:
        """Keep only the rows ``live`` (renumbered ``0 ..``, in that order) and let go of the
        memory of every other row; returns old row -> new row.

        Rows are reused as windows come and go, but a batch that spans many windows leaves
        as many rows behind; compacting drops them (and keeps snapshots small).

        >>> from sabot_lab.plan.windows import count
        >>> partials = PartialAggregates((("n", count()),), pa.schema([]))
        >>> rows = [partials.new_row() for _ in range(3)]
        >>> partials.accumulate(2, np.array([0]), pa.record_batch({}), None)
        >>> partials.compact([2])
        {2: 0}
        >>> partials.arrays(0, np.array([0]))["n"].to_pylist(), partials.row_capacity
        ([1], 1)
        """
        live = [int(r) for r in live]
        mapping = {old: new for new, old in enumerate(live)}
        self.buckets = {(mapping[r], c): b for (r, c), b in self.buckets.items() if r in mapping}
        kc = self.key_capacity
        for owner, name in self._arrays():
            grid = getattr(owner, name).reshape(self.row_capacity, kc)
            setattr(owner, name, np.ascontiguousarray(grid[live]).reshape(-1))
        for index, sketches in self.sketches.items():
            slots = np.arange(sketches.n_slots)
            row = np.array([mapping.get(r, -1) for r in range(self.row_capacity)]
                           + [-1], dtype=np.int64)[np.minimum(slots // kc, self.row_capacity)]
            moved = QuantileSketches(relative_error=sketches.relative_error)
            moved.merge(sketches, np.where(row >= 0, row * kc + slots % kc, -1))
            self.sketches[index] = moved
        self.kept = {mapping[r]: chunks for r, chunks in self.kept.items() if r in mapping}
        self.spans = {mapping[r]: span for r, span in self.spans.items() if r in mapping}
        self.sorted_kept = {(mapping[r], c) for r, c in self.sorted_kept if r in mapping}
        self.rows = self.row_capacity = len(live)
        self.free_rows = []
        return mapping

    def save(self, prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) for a snapshot: every slot array, sketch and kept value.

        >>> from sabot_lab.ops.snapshot import SnapshotReader, pack
        >>> from sabot_lab.plan.windows import count, quantile
        >>> aggs = (("n", count()), ("p50", quantile("v", 0.5)))
        >>> schema = pa.schema([("v", pa.float64())])
        >>> partials = PartialAggregates(aggs, schema)
        >>> batch = pa.record_batch({"v": [1.0, 3.0]})
        >>> partials.accumulate(partials.new_row(), np.array([0, 0]), batch)
        >>> again = PartialAggregates(aggs, schema)
        >>> again.load(SnapshotReader(pack("p", *partials.save("aggs")), "p"), "aggs")
        >>> {name: a.to_pylist() for name, a in again.arrays(0, np.array([0])).items()}
        {'n': [2], 'p50': [2.0]}
        """
        self._flush()
        meta = {f"{prefix}.shape": [self.row_capacity, self.key_capacity, self.rows],
                f"{prefix}.free_rows": [int(r) for r in self.free_rows]}
        arrays = {f"{prefix}.{i}.{name}": getattr(owner, name)
                  for i, (owner, name) in enumerate(self._arrays())}
        for i, sketches in enumerate(self.sketches.values()):
            arrays[f"{prefix}.sketch{i}"] = np.frombuffer(sketches.to_bytes(), np.uint8)
        index, ids, values = [], [], []
        for row, by_column in sorted(self.kept.items()):
            for c, column in enumerate(self.quantile_columns):
                chunks = by_column[column]
                length = sum(len(k) for k, _ in chunks)
                index.append((row, c, length))
                ids.extend(k for k, _ in chunks)
                values.extend(v for _, v in chunks)
        arrays[f"{prefix}.kept.index"] = np.array(index, np.int64).reshape(-1, 3)
        arrays[f"{prefix}.kept.ids"] = np.concatenate(ids or [np.zeros(0, np.int64)])
        arrays[f"{prefix}.kept.values"] = np.concatenate(values or [np.zeros(0)])
        return meta, arrays

    def load(self, reader: SnapshotReader, prefix: str) -> None:
        """Replace all slots by those of a snapshot written by :meth:`save`, checking every
        size and index against the others before any kernel sees them."""
        shape = reader.integers(f"{prefix}.shape")
        reader.check(len(shape) == 3, f"{prefix}.shape has {len(shape)} values")
        row_capacity, key_capacity, rows = shape
        reader.check(0 <= rows <= row_capacity and key_capacity >= 1,
                     f"{rows} rows of {row_capacity} with {key_capacity} keys each")
        free_rows = reader.integers(f"{prefix}.free_rows")
        reader.check(in_range(np.array(free_rows, np.int64), 0, rows)
                     and len(set(free_rows)) == len(free_rows), "free rows out of range")
        size = row_capacity * key_capacity
        loaded = []
        for i, (owner, name) in enumerate(self._arrays()):
            array = reader.array(f"{prefix}.{i}.{name}", self._fresh(owner, name, 0).dtype)
            reader.check(len(array) == size, f"{prefix}.{i}.{name} has {len(array)} slots, "
                                             f"expected {size}")
            loaded.append((owner, name, array))
        sketches = {}
        for i, (spec, old) in enumerate(self.sketches.items()):
            raw = reader.array(f"{prefix}.sketch{i}", np.uint8).tobytes()
            try:
                sketches[spec] = QuantileSketches.from_bytes(raw)
            except ValueError as exc:
                raise reader.error(f"sketch {i}: {exc}") from None
            reader.check(sketches[spec].relative_error == old.relative_error,
                         f"sketch {i} has relative error {sketches[spec].relative_error}")
        index = reader.array(f"{prefix}.kept.index", np.int64, ndim=2)
        ids = reader.array(f"{prefix}.kept.ids", np.int64)
        values = reader.array(f"{prefix}.kept.values", np.float64)
        reader.check(index.shape[1:] == (3,) and len(ids) == len(values) == index[:, 2].sum()
                     and (index[:, 2] >= 0).all() and in_range(index[:, 0], 0, row_capacity)
                     and in_range(index[:, 1], 0, len(self.quantile_columns))
                     and in_range(ids, 0, key_capacity), "kept quantile values out of range")
        kept: dict[int, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
        bounds = np.cumsum(index[:, 2])
        for (row, c, length), end in zip(index.tolist(), bounds.tolist(), strict=True):
            kept.setdefault(row, {column: [] for column in self.quantile_columns})[
                self.quantile_columns[c]].append((ids[end - length:end], values[end - length:end]))
        for owner, name, array in loaded:
            setattr(owner, name, array)
        self.row_capacity, self.key_capacity, self.rows = row_capacity, key_capacity, rows
        self.free_rows = free_rows
        self.sketches = sketches
        self.kept = kept
        self.sorted_kept = set()
        self.buckets = {}
        self.spans = {}  # unknown: a loaded row may hold any key

    def merge_keys(self, row: int, into: np.ndarray, source: np.ndarray) -> None:
        """Add the slots ``(row, source)`` to ``(row, into)`` pairwise (counts, sums, minima,
        maxima, sketches and kept values) and clear the sources (e.g. two sessions joined by a
        row between them). A source must not also be a target. An integer sum that would
        leave its range raises ``OverflowError`` naming the column.

        >>> from sabot_lab.plan.windows import count, max
        >>> partials = PartialAggregates((("n", count()), ("hi", max("v"))),
        ...                              pa.schema([("v", pa.int64())]))
        >>> row = partials.new_row()
        >>> partials.ensure_keys(3)
        >>> partials.accumulate(row, np.array([0, 1, 2]), pa.record_batch({"v": [4, 9, 1]}))
        >>> partials.merge_keys(row, np.array([0, 0]), np.array([1, 2]))
        >>> {name: a.to_pylist() for name, a in partials.arrays(row, np.array([0])).items()}
        {'n': [3], 'hi': [9]}
        >>> partials.present(row).tolist()
        [0]
        """
        self._widen(row, np.asarray(into, dtype=np.int64))
        base = row * self.key_capacity
        target = base + np.asarray(into, dtype=np.int64)
        origin = base + np.asarray(source, dtype=np.int64)
        np.add.at(self.counts, target, self.counts[origin])
        for name, state in self.columns.items():
            if not _merge_slots(target, origin, state.sums, state.nonnull, state.mins,
                                state.maxs, state.checked, state.low, state.high):
                raise state.overflow(name)
        for sketches in self.sketches.values():
            if len(origin):
                sketches.merge(sketches.take(origin), target)
        self._reset(origin)
        if self.quantile_columns and len(origin):
            self._flush(row)
            relabel = np.arange(self.key_capacity)
            relabel[source] = into
            for column in self.quantile_columns:
                chunks = self.kept[row][column]
                chunks[:] = [(relabel[k], v) for k, v in chunks]
                self.sorted_kept.discard((row, column))

    def clear_keys(self, row: int, keys: np.ndarray) -> None:
        """Reset the slots ``(row, keys)`` (and empty their sketches and forget their values
        kept for quantiles), leaving the rest of the row as it is.

        >>> from sabot_lab.plan.windows import quantile
        >>> partials = PartialAggregates((("p50", quantile("v", 0.5)),),
        ...                              pa.schema([("v", pa.float64())]))
        >>> row = partials.new_row()
        >>> partials.ensure_keys(2)
        >>> partials.accumulate(row, np.array([0, 1, 1]), pa.record_batch({"v": [1.0, 2., 4.]}))
        >>> partials.clear_keys(row, np.array([0]))
        >>> partials.present(row).tolist()
        [1]
        >>> partials.arrays(row, np.array([0, 1]))["p50"].to_pylist()
        [None, 3.0]
        """
        self._reset(row * self.key_capacity + np.asarray(keys, dtype=np.int64))
        if self.quantile_columns and len(keys):
            self._flush(row)
            drop = np.zeros(self.key_capacity, dtype=np.bool_)
            drop[keys] = True
            for column in self.quantile_columns:
                chunks = self.kept[row][column]
                for i, (k, v) in enumerate(chunks):
                    keep = ~drop[k]
                    chunks[i] = (k[keep], v[keep])

    def _reset(self, slots: np.ndarray) -> None:
        """Empty the flat ``slots``: counts, column states and sketches."""
        for owner, name in self._arrays():
            getattr(owner, name)[slots] = self._empty_value(owner, name)
        for sketches in self.sketches.values():
            sketches.reset(slots)

    def prepare(self, batch: pa.RecordBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The aggregated columns of ``batch`` as (values, validity) numpy arrays."""
        names = [*self.columns, *self.quantile_columns, *(c for c, _ in self.sketches)]
        return {name: _numeric(batch.column(name)) for name in dict.fromkeys(names)}

    def accumulate(self, row: int | np.ndarray, keys: np.ndarray,
                   data: pa.RecordBatch | dict[str, tuple[np.ndarray, np.ndarray]],
                   take: np.ndarray | None = None) -> None:
        """Add the rows selected by ``take`` (all when ``None``) to the slots of
        ``(row, keys)``; ``row`` may be one row for all or one per input row. ``data`` is a
        batch or its :meth:`prepare`-d columns."""
        if isinstance(data, pa.RecordBatch):
            data = self.prepare(data)
        self._widen(row, keys)
        if take is None and np.ndim(row) == 0 and self.columns and not self.sketches:
            self._accumulate_row(int(row), keys, data)
            return
        slots = np.asarray(row, dtype=np.int64) * self.key_capacity + keys
        if take is not None:
            slots = np.where(take, slots, -1)
        _count(slots, self.counts)
        for name, state in self.columns.items():
            values, valid = data[name]
            if not _accumulate(slots, values.astype(state.dtype, copy=False), valid,
                               state.sums, state.nonnull, state.mins, state.maxs,
                               state.checked, state.low, state.high):
                raise state.overflow(name)
        for (name, _), sketches in self.sketches.items():
            values, valid = data[name]
            keep = valid & (slots >= 0)  # NaN: the sketch skips (and counts) it
            if keep.all():
                sketches.update(slots, values.astype(np.float64, copy=False))
            else:
                sketches.update(slots[keep], values[keep].astype(np.float64, copy=False))
        self._keep_quantile_values(row, keys, data, take)

    def _keep_quantile_values(self, row: int | np.ndarray, keys: np.ndarray,
                              data: dict[str, tuple[np.ndarray, np.ndarray]],
                              take: np.ndarray | None) -> None:
        """Keep the (key, value) pairs of the exact-quantile columns, per row of slots."""
        for name in self.quantile_columns:
            values, valid = data[name]
            values = values.astype(np.float64, copy=False)
            buckets = self.buckets.get((int(row), name)) if np.ndim(row) == 0 else None
            if take is None and (buckets is not None or (np.ndim(row) == 0
                                                         and len(keys) >= _BUCKETS_FROM)):
                # Grouped by key now, so that firing need not sort (a few rows, such as an
                # update's, are kept as they come: buckets are laid out for a whole window).
                if buckets is None:
                    expected = self.bucket_sizes.get(name)
                    if expected is None:  # no window fired yet: one open now is the guide
                        expected = next((b.length for (_, c), b in self.buckets.items()
                                         if c == name), None)
                    buckets = self.buckets[(int(row), name)] = _Buckets(
                        self.key_capacity, expected,
                        self.spare_buckets.pop() if self.spare_buckets else None,
                        self.pivots.get(name), self.tail_sizes.get(name))
                buckets.append(np.asarray(keys, dtype=np.int64), values, valid)
                continue
            keep = valid & ~np.isnan(values)
            if take is not None:
                keep &= take
            all_kept = bool(keep.all())
            if np.ndim(row) == 0:
                chunk = (keys, values) if all_kept else (keys[keep], values[keep])
                self.kept[int(row)][name].append(chunk)
                continue
            rows = row if all_kept else row[keep]
            kept_keys, kept_values = (keys, values) if all_kept else (keys[keep], values[keep])
            for r in np.unique(rows):
                mine = rows == r
                self.kept[int(r)][name].append((kept_keys[mine], kept_values[mine]))

    def _accumulate_row(self, row: int, keys: np.ndarray,
                        data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """:meth:`accumulate` of every row into one row of slots (the usual batch): counts
        with the first column, one kernel pass per column."""
        offset = row * self.key_capacity
        keys = np.asarray(keys, dtype=np.int64)
        count = True
        for name, state in self.columns.items():
            values, valid = data[name]
            stop = _accumulate_row(offset, keys, values.astype(state.dtype, copy=False), valid,
                                   bool(valid.all()), self.counts, count, state.sums,
                                   state.nonnull, state.mins, state.maxs, state.extrema,
                                   state.checked, state.low, state.high)
            if stop >= 0:
                if count:  # as _count would have: every row counted
                    _count(offset + keys[stop:], self.counts)
                raise state.overflow(name)
            count = False
        self._keep_quantile_values(row, keys, data, None)

    def accumulate_window(self, row: int, keys: np.ndarray,
                          data: dict[str, tuple[np.ndarray, np.ndarray]], ts: np.ndarray,
                          wm: np.ndarray, period: int, period_end: int, end: int,
                          table: tuple[np.ndarray, int] | None = None
                          ) -> tuple[int, int, int]:
        """Add the leading rows of a batch whose event time lies in ``[period, period_end)``
        and whose row watermark is below ``end`` (a window's end) to ``(row, keys)``, in one
        fused pass for counts and the first column; returns (rows taken, their largest event
        time and row watermark). Sketch columns are not handled here (``(0, ..)``).

        With ``table`` (a key dictionary's dense table and base, see
        :meth:`~sabot_lab.ops.window.keys.KeyDictionary.integer_table`), ``keys`` are key
        values, looked up in the same pass (the run also stops at a key not in the table);
        only for jobs with no other column and no exact quantile (they need the ids)."""
        if self.sketches or (table is not None and (len(self.columns) > 1
                                                    or self.quantile_columns)):
            return 0, 0, 0
        lookup, base = table if table is not None else (np.zeros(0, np.int64), 0)
        offset = row * self.key_capacity
        columns = list(self.columns.items())
        if columns:
            name, state = columns[0]
            values, valid = data[name]
            values = values.astype(state.dtype, copy=False)
            first = (values, valid, bool(valid.all()), True, state.sums, state.nonnull,
                     state.mins, state.maxs, state.extrema, state.checked, state.low,
                     state.high)
        else:
            none = np.zeros(1, np.int64)
            first = (none, np.ones(1, np.bool_), True, False, none, none, none, none, False,
                     False, np.int64(0), np.int64(0))
        stop, t_max, wm_max, overflow = _accumulate_window(
            ts, wm, period, period_end, end, offset, keys, lookup, base, first[0], first[1],
            first[2], first[3], self.counts, *first[4:])
        if overflow:
            raise columns[0][1].overflow(columns[0][0])
        if not stop:
            return 0, 0, 0
        keys = keys[:stop]
        self._widen(row, keys if table is None else lookup[keys - base])
        for name, state in columns[1:]:
            values, valid = data[name]
            values, valid = values[:stop], valid[:stop]
            if _accumulate_row(offset, keys, values.astype(state.dtype, copy=False), valid,
                               bool(valid.all()), self.counts, False, state.sums,
                               state.nonnull, state.mins, state.maxs, state.extrema,
                               state.checked, state.low, state.high) >= 0:
                raise state.overflow(name)
        if self.quantile_columns:
            self._keep_quantile_values(row, keys, {name: (values[:stop], valid[:stop])
                                                   for name, (values, valid) in data.items()},
                                       None)
        return stop, int(t_max), int(wm_max)

    def present(self, row: int) -> np.ndarray:
        """Key ids with at least one row in ``row``'s slots."""
        low, high = self._span(row)
        if high < low:
            return np.zeros(0, dtype=np.int64)
        counts = self.counts[row * self.key_capacity + low:row * self.key_capacity + high + 1]
        return np.flatnonzero(counts) + low

    def results(self, row: int, key: int) -> dict[str, object]:
        """Aggregates of one slot as Python values (None for no values), without building
        Arrow arrays: the per-row path of updates."""
        slot = row * self.key_capacity + key
        out: dict[str, object] = {}
        for name, agg in self.aggs:
            if agg.function == "count":
                out[name] = int(self.counts[slot])
            elif agg.function == "quantile":
                value = _quantile(self._values_of(row, agg.column, key), agg.q)
                out[name] = None if np.isnan(value) else value
            elif agg.function == "approx_quantile":
                value = self._approx(row, np.array([key]), agg)[0]
                out[name] = None if np.isnan(value) else float(value)
            else:
                state = self.columns[agg.column]
                n = int(state.nonnull[slot])
                if not n:
                    out[name] = None
                elif agg.function == "mean":
                    out[name] = float(state.sums[slot] / n)
                elif agg.function == "sum":
                    out[name] = int(_signed_sums(agg.column, state.sums[slot:slot + 1])[0]) \
                        if state.integers else float(state.sums[slot])
                else:
                    attribute = {"sum": "sums", "min": "mins", "max": "maxs"}[agg.function]
                    out[name] = getattr(state, attribute)[slot].item()
        return out

    def _values_of(self, row: int, column: str, key: int) -> np.ndarray:
        """The kept values of one slot. The row's values are sorted by key once (and again
        after every 64 single-row additions), so each look-up is a binary search."""
        self._flush(row)
        chunks = self.kept[row][column]
        if (row, column) not in self.sorted_kept or len(chunks) > 64:
            ids = np.concatenate([k for k, _ in chunks] or [np.zeros(0, np.int64)])
            values = np.concatenate([v for _, v in chunks] or [np.zeros(0)])
            order = np.argsort(ids, kind="stable")
            chunks[:] = [(ids[order], values[order])]
            self.sorted_kept.add((row, column))
        ids, values = chunks[0]
        low, high = np.searchsorted(ids, key, "left"), np.searchsorted(ids, key, "right")
        return np.concatenate([values[low:high], *(v[k == key] for k, v in chunks[1:])])

    def arrays(self, row: int | np.ndarray, keys: np.ndarray) -> dict[str, pa.Array]:
        """Aggregates of the slots ``(row, keys)``, one Arrow array per output column;
        ``row`` is one row or a row per key (several windows at once)."""
        rows = np.broadcast_to(np.asarray(row, dtype=np.int64), np.shape(keys))
        slots = rows * self.key_capacity + keys
        quantiles = self._quantiles_of_rows(rows, keys)
        out = {}
        for name, agg in self.aggs:
            if agg.function == "count":
                out[name] = pa.array(self.counts[slots])
                continue
            if agg.function in ("quantile", "approx_quantile"):
                values = quantiles[agg.column][agg.q] if agg.function == "quantile" \
                    else self._approx(row, keys, agg)
                out[name] = pa.array(values, mask=np.isnan(values))
                continue
            state = self.columns[agg.column]
            empty = state.nonnull[slots] == 0
            if agg.function == "mean":
                with np.errstate(invalid="ignore", divide="ignore"):
                    values = state.sums[slots] / state.nonnull[slots]
            elif agg.function == "sum":
                values = _signed_sums(agg.column, state.sums[slots]) if state.integers \
                    else state.sums[slots]
            else:
                values = getattr(state, {"min": "mins", "max": "maxs"}[agg.function])[slots]
            array = pa.array(values, mask=empty)
            out[name] = array if agg.function in ("sum", "mean") else array.cast(
                self.schema.field(agg.column).type)
        return out

    def _approx(self, row: int | np.ndarray, keys: np.ndarray, agg: Any) -> np.ndarray:
        """Sketch estimates of quantile ``agg.q`` for the slots ``(row, keys)``."""
        sketches = self.sketches[(agg.column, agg.relative_error)]
        slots = row * self.key_capacity + np.asarray(keys, dtype=np.int64)
        out = np.full(len(slots), np.nan)
        known = slots < sketches.n_slots
        if known.any():
            out[known] = sketches.quantiles(slots[known], agg.q)
        return out

    def _quantiles_of_rows(self, rows: np.ndarray, keys: np.ndarray
                           ) -> dict[str, dict[float, np.ndarray]]:
        """:meth:`_quantiles` for keys of several rows (a row per key)."""
        if not self.quantile_columns:
            return {}
        if len(rows) == 0 or (rows == rows[0]).all():
            return self._quantiles(int(rows[0]) if len(rows) else 0, keys)
        out: dict[str, dict[float, np.ndarray]] = {}
        for row in np.unique(rows):
            at = np.flatnonzero(rows == row)
            for column, by_q in self._quantiles(int(row), keys[at]).items():
                for q, values in by_q.items():
                    out.setdefault(column, {}).setdefault(q, np.empty(len(keys)))[at] = values
        return out

    def _quantiles(self, row: int, keys: np.ndarray) -> dict[str, dict[float, np.ndarray]]:
        out: dict[str, dict[float, np.ndarray]] = {}
        for column in self.quantile_columns:
            qs = sorted({a.q for _, a in self.aggs
                         if a.function == "quantile" and a.column == column})
            chunks = self.kept[row][column]
            buckets = self.buckets.get((row, column))
            if buckets is not None and not chunks:  # the usual window: values by key already
                result = np.empty((len(keys), len(qs)))
                keys = np.asarray(keys, dtype=np.int64)
                pivots = buckets.quantiles(keys, np.array(qs), result)
                self.bucket_sizes[column] = buckets.length.copy()
                if len(keys):
                    known = np.full(int(keys.max()) + 1, np.nan)
                    known[keys] = pivots
                    self.pivots[column] = known
                    length = buckets.length
                    # Room for what lies above the new pivots: a sample of 64 puts them near
                    # rank (lowest q - 6/64), give or take 5% of the values.
                    fraction = builtins.min(1.0, 1.0 - min(qs) + 0.16)
                    self.tail_sizes[column] = (length * fraction).astype(np.int64)
                out[column] = {q: result[:, i] for i, q in enumerate(qs)}
                continue
            self._flush(row)
            chunks = self.kept[row][column]
            ids = np.concatenate([k for k, _ in chunks]) if chunks else np.zeros(0, np.int64)
            values = np.concatenate([v for _, v in chunks]) if chunks else np.zeros(0)
            if len(chunks) > 1:  # keep one chunk: updates re-read the window
                self.kept[row][column] = [(ids, values)]
            self.sorted_kept.discard((row, column))
            result = np.empty((len(keys), len(qs)))
            _group_quantiles(ids, values, np.asarray(keys, dtype=np.int64), np.array(qs),
                             result)
            out[column] = {q: result[:, i] for i, q in enumerate(qs)}
        return out
