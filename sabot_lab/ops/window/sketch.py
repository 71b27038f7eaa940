"""Mergeable approximate quantiles for many aggregation slots at once (DDSketch-style).

A window operator keeps one partial aggregate per (window, group key), numbered by a dense
int64 *slot*. :class:`QuantileSketches` holds one log-bucket histogram per slot and updates all
of them with one numba call per batch.

Buckets
-------
With ``gamma = (1 + alpha) / (1 - alpha)`` a value ``x != 0`` goes to bucket
``k = ceil(log(|x|) / log(gamma))``, i.e. ``gamma**(k-1) < |x| <= gamma**k``, in a positive or a
negative store by its sign; zeros are counted apart. The code decides exactly that
inequality against ``gamma**k`` as computed by ``math.pow``: for magnitudes in
``[2**-64, 2**64)`` by a table lookup on the leading bits of ``|x|`` and one comparison (no
logarithm per value), elsewhere by a logarithm checked the same way. A bucket stands for
``2 * gamma**k / (gamma + 1)``, whose relative distance to every point of the bucket is at most
``(gamma - 1) / (gamma + 1) = alpha``.

Error bound
-----------
The quantile of a slot holding ``n`` non-NaN values sorted as ``x[0] <= ... <= x[n-1]`` is the
*lower* order statistic ``x_q = x[floor(q * (n - 1))]``: ``np.quantile(x, q,
method="lower")``, and in 1-based terms ``x_(floor(1 + q(n - 1)))``, the definition of the
DDSketch paper (Masson, Rim & Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
relative-error guarantees", PVLDB 12(12), 2019). The estimate is the representative of the
bucket holding that value, clamped to the slot's exact finite minimum and maximum (which are
returned as such for ranks ``0`` and ``n - 1``), so it is *alpha-accurate* in the paper's
sense::

    |estimate - x_q| <= alpha * |x_q|

up to the rounding of ``gamma**k`` and of the estimate to doubles (a few units in the last
place), with these exact cases and limits:

* ``x_q == 0`` gives ``0.0``; ``x_q == +-inf`` gives ``+-inf`` (infinities are counted in two
  extra counters and rank below / above every finite value, as in numpy);
* magnitudes below ``2.2250738585072014e-308`` (subnormal doubles) count as zeros, so there the
  error is absolute, below that number;
* with ``max_buckets`` set (the default, 2048), a store keeps at most that many buckets below
  its highest one: buckets lower than ``top - max_buckets + 1`` are folded into that bucket
  (DDSketch's collapsing-lowest store). The bound then holds for every ``x_q`` with
  ``|x_q| > M * gamma**(1 - max_buckets)``, ``M`` the largest magnitude of the same sign in the
  slot (with the defaults a range of ``6e17``); smaller magnitudes, i.e. the values closest to
  zero, are estimated too far from zero. For positive data that touches only the lowest
  quantiles, never the tail.

Merging two sketches of the same slot gives the very counts a single sketch of all the values
would hold (folding is decided by the highest bucket alone), so results do not depend on batch
sizes or on how values were partitioned.

Storage
-------
Each store of each slot owns a segment of one shared count array (int32, promoted to int64
before any count could pass ``2**31 - 1``), covering only the buckets between its lowest and
highest value plus a quarter of slack. Memory thus follows each slot's own dynamic range, not
its number of values: a slot costs 112 bytes plus 4 bytes per bucket of its range
(``log(max/min) / log(gamma)``, about ``115 * log10(max/min)`` buckets at ``alpha = 0.01``), at
most about ``1.25 * max_buckets`` per sign. Segments that grow move to the end of the shared
array; freed ones are reclaimed when it is repacked, which leaves it at most half empty.

Examples
--------
>>> import numpy as np
>>> sk = QuantileSketches(relative_error=0.01)
>>> sk.update(np.array([0, 0, 0, 1, 1]), np.array([1.0, 2.0, 100.0, -5.0, np.nan]))
>>> sk.quantiles(np.array([0, 1, 2]), [0.5, 1.0])  # the median 2.0 is within 1 %
array([[  1.99..., 100. ],
       [ -5.    ,  -5. ],
       [   nan,     nan]])
>>> sk.counts(np.array([0, 1])).tolist(), sk.nan_counts(np.array([0, 1])).tolist()
([3, 1], [0, 1])
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np

__all__ = ["QuantileSketches"]

#: Columns of the per-store ``seg`` table: where its segment starts in the count array, the
#: bucket of its first element, its length, and the store's highest bucket (``_EMPTY``: none).
_START, _LO, _CAP, _TOP = 0, 1, 2, 3
_EMPTY = -(2**31)
_EMPTY_SEGMENT = (-1, 0, 0, _EMPTY)
_INT32_MAX = int(np.iinfo(np.int32).max)
#: Columns of the per-slot ``special`` counters.
_ZEROS, _NANS, _POS_INF, _NEG_INF = 0, 1, 2, 3
#: Smallest count array allocated (elements).
_MIN_ARENA = 1024
_MAGIC = b"SLQS"
_VERSION = 1
_HEADER = struct.Struct("<4sBBxxdqq")
_PAYLOAD_DTYPES = ("<u1", "<u2", "<u4", "<u8")
_U = np.uint64


@numba.njit(nogil=True, cache=True)
def _exact_key(m, gamma, inv_log2_gamma):  # pragma: no cover - numba
    """The bucket of a normal magnitude ``m``: the least ``k`` with ``m <= pow(gamma, k)``."""
    k = math.ceil(math.log2(m) * inv_log2_gamma)
    while m > math.pow(gamma, k):
        k += 1
    while m <= math.pow(gamma, k - 1):
        k -= 1
    return k


@numba.njit(cache=True)
def _build_mapping(gamma, inv_log2_gamma, m_bits, e0, n_exp):  # pragma: no cover - numba
    """Bucket of the lowest double in each cell of ``m_bits`` mantissa bits, over ``n_exp``
    binary exponents from ``e0`` (biased); and ``pow(gamma, k)`` for every ``k`` they reach.

    Returns ``(table, bounds, kmin, ok)``: ``ok`` is false if a cell spans two bucket
    boundaries (then one comparison per value would not do).
    """
    n_cells = n_exp << m_bits
    table = np.empty(n_cells + 1, np.int32)
    for cell in range(n_cells + 1):
        e = cell >> m_bits
        j = cell & ((1 << m_bits) - 1)
        low = math.ldexp(1.0 + j / (1 << m_bits), e0 + e - 1023)
        table[cell] = _exact_key(low, gamma, inv_log2_gamma)
    ok = True
    for cell in range(n_cells):
        if table[cell + 1] - table[cell] > 1:
            ok = False
    kmin = int(table.min())
    bounds = np.empty(int(table.max()) - kmin + 2, np.float64)
    for i in range(bounds.shape[0]):
        bounds[i] = math.pow(gamma, kmin + i)
    return table[:n_cells], bounds, kmin, ok


@numba.njit(nogil=True, cache=True)
def _fold(arena, st, lo, cp, old_floor, new_floor):  # pragma: no cover - numba
    """Move the counts of a segment's buckets below ``new_floor`` into bucket ``new_floor``."""
    a = max(lo, old_floor)
    b = min(new_floor - 1, lo + cp - 1)
    acc = 0
    for key in range(a, b + 1):
        acc += arena[st + key - lo]
        arena[st + key - lo] = 0
    if acc:
        arena[st + new_floor - lo] += acc


@numba.njit(nogil=True, cache=True)
def _ingest(slots, values, bits, table, bounds, kmin, m_bits, e0, n_exp, gamma, inv_log2_gamma,
            max_buckets, special, extremes, seg, arena, pend_sub, pend_key
            ):  # pragma: no cover - numba
    """Count a batch in one pass over it, a chunk at a time: first the buckets (and the
    special values), then the increments, which keeps the dependent memory accesses apart.

    Values whose bucket lies outside their store's segment are written to
    ``pend_sub``/``pend_key`` for the caller to place; returns how many. (Indices are cast
    to unsigned where they are known non-negative: numba then skips its negative-index
    wraparound, a third of the instructions of this loop.)
    """
    chunk = 1024
    chunk_sub = np.empty(chunk, np.uint64)
    chunk_key = np.empty(chunk, np.int64)
    mask = (1 << m_bits) - 1
    n = values.shape[0]
    n_pending = 0
    for c0 in range(0, n, chunk):
        m = _U(0)
        for i in range(_U(c0), _U(min(n, c0 + chunk))):
            s = _U(slots[i])
            x = values[i]
            b = bits[i] & 0x7FFFFFFFFFFFFFFF
            biased = b >> 52
            if biased == 0x7FF:
                if b > 0x7FF0000000000000:
                    special[s, _NANS] += 1
                elif x > 0.0:
                    special[s, _POS_INF] += 1
                else:
                    special[s, _NEG_INF] += 1
                continue
            if x == 0.0:
                x = 0.0
            if x < extremes[s, 0]:
                extremes[s, 0] = x
            if x > extremes[s, 1]:
                extremes[s, 1] = x
            if biased == 0:
                special[s, _ZEROS] += 1
                continue
            e = _U(biased - e0)
            if e < _U(n_exp):
                k = np.int64(table[(e << _U(m_bits)) | _U((b >> (52 - m_bits)) & mask)])
                if abs(x) > bounds[_U(k - kmin)]:
                    k += 1
            else:
                k = _exact_key(abs(x), gamma, inv_log2_gamma)
            chunk_sub[m] = _U(2) * s + _U(bits[i] < 0)
            chunk_key[m] = k
            m += _U(1)
        for j in range(m):
            sub = chunk_sub[j]
            k = chunk_key[j]
            t = seg[sub, _TOP]
            kk = max(k, t - max_buckets + 1) if max_buckets > 0 else k
            off = _U(kk - seg[sub, _LO])
            if off >= _U(seg[sub, _CAP]):
                pend_sub[n_pending] = sub
                pend_key[n_pending] = k
                n_pending += 1
                continue
            if kk > t:
                if max_buckets > 0:
                    _fold(arena, seg[sub, _START], seg[sub, _LO], seg[sub, _CAP],
                          t - max_buckets + 1, kk - max_buckets + 1)
                seg[sub, _TOP] = kk
            arena[_U(seg[sub, _START]) + off] += 1
    return n_pending


@numba.njit(nogil=True, cache=True)
def _extent(subs, keys, bmin, bmax):  # pragma: no cover - numba
    """Per store: the lowest and highest key among ``keys``."""
    for i in range(subs.shape[0]):
        sub = subs[i]
        k = keys[i]
        if k < bmin[sub]:
            bmin[sub] = k
        if k > bmax[sub]:
            bmax[sub] = k


@numba.njit(nogil=True, cache=True)
def _occupied_lo(arena, seg, sub):  # pragma: no cover - numba
    """The lowest key with a non-zero count in a store's segment (past its end when none)."""
    st = seg[sub, _START]
    for j in range(seg[sub, _CAP]):
        if arena[st + j] != 0:
            return seg[sub, _LO] + j
    return seg[sub, _LO] + seg[sub, _CAP]


@numba.njit(nogil=True, cache=True)
def _plan(bmin, bmax, arena, seg, max_buckets, new_lo, new_cap):  # pragma: no cover - numba
    """For each store gaining keys ``bmin..bmax``: the segment it needs, if it must move.

    Sets ``new_lo``/``new_cap`` (``new_cap == 0``: the segment stays) and returns the total
    number of elements to allocate.
    """
    extra = 0
    for sub in range(bmin.shape[0]):
        if bmin[sub] > bmax[sub]:
            continue
        lo = seg[sub, _LO]
        cap = seg[sub, _CAP]
        t = max(seg[sub, _TOP], bmax[sub])
        need_lo = bmin[sub]
        if cap > 0:
            need_lo = min(need_lo, _occupied_lo(arena, seg, sub))
        if max_buckets > 0:
            need_lo = max(need_lo, t - max_buckets + 1)
        if cap > 0 and lo <= need_lo and t < lo + cap:
            continue
        pad = (t - need_lo + 1) // 4 + 2
        seg_lo = need_lo - pad
        if max_buckets > 0:
            seg_lo = max(seg_lo, t - max_buckets + 1)
        new_lo[sub] = seg_lo
        new_cap[sub] = t + pad - seg_lo + 1
        extra += new_cap[sub]
    return extra


@numba.njit(nogil=True, cache=True)
def _relocate(bmin, bmax, arena, seg, max_buckets, new_lo, new_cap, used
              ):  # pragma: no cover - numba
    """Apply a plan: move segments (folding below the new floor), raise tops.

    Returns ``(used, freed)``: the new end of the used part of ``arena`` and the number of
    elements of abandoned segments.
    """
    freed = 0
    for sub in range(bmin.shape[0]):
        if bmin[sub] > bmax[sub]:
            continue
        st = seg[sub, _START]
        lo = seg[sub, _LO]
        cap = seg[sub, _CAP]
        top = seg[sub, _TOP]
        t = max(top, bmax[sub])
        floor = t - max_buckets + 1
        if new_cap[sub] > 0:
            nlo = new_lo[sub]
            for j in range(cap):
                c = arena[st + j]
                if c != 0:
                    key = lo + j
                    if max_buckets > 0 and key < floor:
                        key = floor
                    arena[used + key - nlo] += c
                    arena[st + j] = 0
            freed += cap
            seg[sub, _START] = used
            seg[sub, _LO] = nlo
            seg[sub, _CAP] = new_cap[sub]
            used += new_cap[sub]
        elif max_buckets > 0 and t > top:
            _fold(arena, st, lo, cap, top - max_buckets + 1, floor)
        seg[sub, _TOP] = t
    return used, freed


@numba.njit(nogil=True, cache=True)
def _add_keys(arena, seg, max_buckets, subs, keys):  # pragma: no cover - numba
    """Count one value per ``(subs[i], keys[i])`` into segments known to hold them."""
    for i in range(subs.shape[0]):
        sub = subs[i]
        k = keys[i]
        if max_buckets > 0:
            k = max(k, seg[sub, _TOP] - max_buckets + 1)
        arena[seg[sub, _START] + k - seg[sub, _LO]] += 1


@numba.njit(nogil=True, cache=True)
def _compact(arena, seg, out):  # pragma: no cover - numba
    """Copy every live segment to the front of ``out`` (in store order); returns its end."""
    pos = 0
    for sub in range(seg.shape[0]):
        cap = seg[sub, _CAP]
        if cap == 0:
            continue
        st = seg[sub, _START]
        for j in range(cap):
            out[pos + j] = arena[st + j]
        seg[sub, _START] = pos
        pos += cap
    return pos


@numba.njit(nogil=True, cache=True)
def _source_extent(arena, seg, slot_map, bmin, bmax):  # pragma: no cover - numba
    """Per target store: the key range that merging a source set's stores will add."""
    for sub in range(2 * slot_map.shape[0]):
        dst = slot_map[sub // 2]
        if dst < 0 or seg[sub, _TOP] == _EMPTY:
            continue
        tsub = 2 * dst + sub % 2
        bmin[tsub] = min(bmin[tsub], _occupied_lo(arena, seg, sub))
        bmax[tsub] = max(bmax[tsub], seg[sub, _TOP])


@numba.njit(nogil=True, cache=True)
def _merge_into(arena, seg, special, extremes, max_buckets, src_arena, src_seg, src_special,
                src_extremes, slot_map):  # pragma: no cover - numba
    """Add a source set's counts into mapped slots whose segments already cover them."""
    for s in range(slot_map.shape[0]):
        dst = slot_map[s]
        if dst < 0:
            continue
        for j in range(4):
            special[dst, j] += src_special[s, j]
        extremes[dst, 0] = min(extremes[dst, 0], src_extremes[s, 0])
        extremes[dst, 1] = max(extremes[dst, 1], src_extremes[s, 1])
        for sign in range(2):
            sub = 2 * s + sign
            tsub = 2 * dst + sign
            floor = seg[tsub, _TOP] - max_buckets + 1
            for j in range(src_seg[sub, _CAP]):
                c = src_arena[src_seg[sub, _START] + j]
                if c != 0:
                    key = src_seg[sub, _LO] + j
                    if max_buckets > 0 and key < floor:
                        key = floor
                    arena[seg[tsub, _START] + key - seg[tsub, _LO]] += c


@numba.njit(nogil=True, cache=True)
def _segment_total(arena, seg, sub):  # pragma: no cover - numba
    total = 0
    st = seg[sub, _START]
    for j in range(seg[sub, _CAP]):
        total += arena[st + j]
    return total


@numba.njit(nogil=True, cache=True)
def _counts(arena, seg, special, n_slots, slots, out):  # pragma: no cover - numba
    """Per requested slot: how many non-NaN values it holds."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if s >= n_slots:
            out[i] = 0
            continue
        out[i] = (special[s, _ZEROS] + special[s, _POS_INF] + special[s, _NEG_INF]
                  + _segment_total(arena, seg, 2 * s) + _segment_total(arena, seg, 2 * s + 1))


@numba.njit(nogil=True, cache=True)
def _exact_ends(est, rank, n, lo_v, hi_v):  # pragma: no cover - numba
    """The exact minimum / maximum for the first / last rank of the finite values."""
    if rank == 0:
        return lo_v
    if rank == n - 1:
        return hi_v
    return est


@numba.njit(nogil=True, cache=True)
def _quantiles(arena, seg, special, extremes, n_slots, slots, qs, gamma, out
               ):  # pragma: no cover - numba
    """Per slot: the bucket estimates of the lower order statistics for ascending ``qs``."""
    scale = 2.0 / (gamma + 1.0)
    nq = qs.shape[0]
    for i in range(slots.shape[0]):
        s = slots[i]
        if s >= n_slots:
            out[i, :] = np.nan
            continue
        pos = 2 * s
        neg = 2 * s + 1
        n = (special[s, _NEG_INF] + _segment_total(arena, seg, neg) + special[s, _ZEROS]
             + _segment_total(arena, seg, pos) + special[s, _POS_INF])
        if n == 0:
            out[i, :] = np.nan
            continue
        lo_v = extremes[s, 0]
        hi_v = extremes[s, 1]
        iq = 0
        rank = math.floor((n - 1) * qs[0])
        seen = special[s, _NEG_INF]
        while iq < nq and rank < seen:
            out[i, iq] = -np.inf
            iq += 1
            if iq < nq:
                rank = math.floor((n - 1) * qs[iq])
        if seg[neg, _CAP] > 0:
            for key in range(seg[neg, _TOP], seg[neg, _LO] - 1, -1):
                if iq == nq:
                    break
                c = arena[seg[neg, _START] + key - seg[neg, _LO]]
                if c == 0:
                    continue
                seen += c
                if rank < seen:
                    est = min(max(-scale * math.pow(gamma, key), lo_v), hi_v)
                    while iq < nq and rank < seen:
                        out[i, iq] = _exact_ends(est, rank, n, lo_v, hi_v)
                        iq += 1
                        if iq < nq:
                            rank = math.floor((n - 1) * qs[iq])
        seen += special[s, _ZEROS]
        while iq < nq and rank < seen:
            out[i, iq] = _exact_ends(0.0, rank, n, lo_v, hi_v)
            iq += 1
            if iq < nq:
                rank = math.floor((n - 1) * qs[iq])
        if seg[pos, _CAP] > 0:
            for key in range(seg[pos, _LO], seg[pos, _TOP] + 1):
                if iq == nq:
                    break
                c = arena[seg[pos, _START] + key - seg[pos, _LO]]
                if c == 0:
                    continue
                seen += c
                if rank < seen:
                    est = min(max(scale * math.pow(gamma, key), lo_v), hi_v)
                    while iq < nq and rank < seen:
                        out[i, iq] = _exact_ends(est, rank, n, lo_v, hi_v)
                        iq += 1
                        if iq < nq:
                            rank = math.floor((n - 1) * qs[iq])
        while iq < nq:
            out[i, iq] = np.inf
            iq += 1


@numba.njit(nogil=True, cache=True)
def _gather(arena, seg, n_sub, ranges, out):  # pragma: no cover - numba
    """Write each store's occupied buckets to ``out`` back to back; ``ranges`` gets
    ``(lowest key, length)`` per store. Returns the number of counts written."""
    pos = 0
    for sub in range(n_sub):
        if seg[sub, _TOP] == _EMPTY:
            ranges[sub, 0] = 0
            ranges[sub, 1] = 0
            continue
        k_lo = _occupied_lo(arena, seg, sub)
        length = seg[sub, _TOP] - k_lo + 1
        ranges[sub, 0] = k_lo
        ranges[sub, 1] = length
        st = seg[sub, _START] + k_lo - seg[sub, _LO]
        for j in range(length):
            out[pos + j] = arena[st + j]
        pos += length
    return pos


class _Mapping(NamedTuple):
    """Value -> bucket lookup for one ``gamma`` (see :func:`_mapping`)."""

    table: np.ndarray
    bounds: np.ndarray
    kmin: int
    m_bits: int
    e0: int
    n_exp: int
    inv_log2_gamma: float


@functools.lru_cache(maxsize=8)
def _mapping(alpha: float) -> _Mapping:
    """The bucket lookup of ``alpha``, shared by every set using it.

    A magnitude's bucket is the least ``k`` with ``m <= pow(gamma, k)``. For the binary
    exponents of ``[2**-64, 2**64)`` (fewer when ``alpha`` is tiny) a table gives the bucket of
    the lowest double of each cell of ``m_bits`` leading mantissa bits; cells are narrower
    than buckets, so one comparison with ``pow(gamma, k)`` finishes the job. Other magnitudes
    take a logarithm, corrected the same way.
    """
    gamma = (1.0 + alpha) / (1.0 - alpha)
    inv = 1.0 / math.log2(gamma)
    m_bits = max(1, math.ceil(math.log2(2.0 / (gamma - 1.0))))
    n_exp = min(128, (1 << 20) >> m_bits) if m_bits <= 20 else 0
    e0 = 1023 - n_exp // 2
    table, bounds, kmin, ok = _build_mapping(gamma, inv, m_bits, e0, n_exp)
    if not ok:
        n_exp = 0
    return _Mapping(table, bounds, int(kmin), m_bits, e0, n_exp, inv)


def _as_slots(slots: np.ndarray | Sequence[int]) -> np.ndarray:
    """Slots as a 1-D int64 array, checked non-negative."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    if slots.ndim != 1:
        raise ValueError(f"slots must be one-dimensional, got shape {slots.shape}")
    if slots.size and slots.min() < 0:
        raise ValueError(f"slots must be >= 0, got {int(slots.min())}")
    return slots


class QuantileSketches:
    """One mergeable relative-error quantile sketch per slot (see the module docstring).

    Parameters
    ----------
    n_slots : int
        Slots to allocate up front; more appear as :meth:`update` or :meth:`merge` use them.
    relative_error : float
        ``alpha`` in ``(0, 1)``: every quantile is within ``alpha * |exact|`` (see the
        module docstring for the precise statement).
    max_buckets : int or None
        Buckets kept per sign and slot below the highest one before the lowest are folded
        together; ``None`` never folds (memory then follows the data's full range).

    Notes
    -----
    The caller owns slot numbering: slots are dense ids, :meth:`reset` frees a slot for reuse.
    Not thread-safe; the numba kernels release the GIL.

    Examples
    --------
    >>> sk = QuantileSketches()
    >>> sk.update(np.zeros(1000, np.int64), np.arange(1.0, 1001.0))
    >>> p95 = float(sk.quantiles(np.array([0]), 0.95)[0])  # exact lower quantile: 950.0
    >>> abs(p95 - 950.0) <= 0.01 * 950.0
    True
    >>> sk.n_slots, sk.relative_error
    (1, 0.01)
    """

    def __init__(self, n_slots: int = 0, relative_error: float = 0.01,
                 max_buckets: int | None = 2048) -> None:
        if not 0.0 < relative_error < 1.0:
            raise ValueError(f"relative_error must be in (0, 1), got {relative_error!r}")
        if max_buckets is not None and max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1 or None, got {max_buckets!r}")
        self._alpha = float(relative_error)
        self._gamma = (1.0 + self._alpha) / (1.0 - self._alpha)
        self._map = _mapping(self._alpha)
        self._max_buckets = max_buckets
        self._mb = 0 if max_buckets is None else int(max_buckets)
        self._n_slots = 0
        self._special = np.zeros((0, 4), np.int64)
        self._extremes = np.zeros((0, 2), np.float64)
        self._seg = np.zeros((0, 4), np.int64)
        self._arena = np.zeros(_MIN_ARENA, np.int32)
        self._used = 0
        self._waste = 0
        self._headroom = _INT32_MAX
        self._ensure_slots(int(n_slots))

    # -- properties ------------------------------------------------------------------------

    @property
    def relative_error(self) -> float:
        """The relative-error guarantee ``alpha``."""
        return self._alpha

    @property
    def gamma(self) -> float:
        """Bucket growth factor ``(1 + alpha) / (1 - alpha)``."""
        return self._gamma

    @property
    def max_buckets(self) -> int | None:
        """Buckets kept per sign and slot before the lowest are folded (``None``: never)."""
        return self._max_buckets

    @property
    def n_slots(self) -> int:
        """One more than the highest slot seen (or allocated up front)."""
        return self._n_slots

    @property
    def nbytes(self) -> int:
        """Bytes held by the count array and the per-slot arrays (capacity, not just use).

        Examples
        --------
        >>> sk = QuantileSketches()
        >>> sk.update(np.arange(100), np.ones(100))
        >>> sk.nbytes < 100 * 200
        True
        """
        arrays = (self._special, self._extremes, self._seg, self._arena)
        return int(sum(a.nbytes for a in arrays))

    # -- updates ---------------------------------------------------------------------------

    def update(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Add ``values[i]`` to slot ``slots[i]`` for every ``i``: one numba pass per call.

        NaN values are not sketched; :meth:`nan_counts` reports them. ``+-inf`` are kept
        exactly (they rank below / above every finite value).

        Examples
        --------
        >>> sk = QuantileSketches()
        >>> sk.update(np.array([0, 1, 0]), np.array([1.0, 2.0, np.inf]))
        >>> sk.counts(np.array([0, 1])).tolist()
        [2, 1]
        """
        slots = _as_slots(slots)
        values = np.ascontiguousarray(values, dtype=np.float64)
        if values.shape != slots.shape:
            raise ValueError(f"slots and values differ in shape: {slots.shape} vs "
                             f"{values.shape}")
        if not values.size:
            return
        self._ensure_slots(int(slots.max()) + 1)
        self._reserve_counts(values.size)
        pend_sub = np.empty(values.size, np.int64)
        pend_key = np.empty(values.size, np.int64)
        mp = self._map
        n_pending = _ingest(slots, values, values.view(np.int64), mp.table, mp.bounds, mp.kmin,
                            mp.m_bits, mp.e0, mp.n_exp, self._gamma, mp.inv_log2_gamma,
                            self._mb, self._special, self._extremes, self._seg, self._arena,
                            pend_sub, pend_key)
        if n_pending:
            subs, keys = pend_sub[:n_pending], pend_key[:n_pending]
            bmin, bmax = self._empty_extent()
            _extent(subs, keys, bmin, bmax)
            self._reserve(bmin, bmax)
            _add_keys(self._arena, self._seg, self._mb, subs, keys)

    def merge(self, other: QuantileSketches, slot_map: np.ndarray | None = None) -> None:
        """Add another set's counts: ``other``'s slot ``i`` into this set's ``slot_map[i]``.

        ``slot_map`` defaults to the identity; ``-1`` skips a slot, and several slots may map
        to one. The result is exactly the sketch of all the values together.

        Examples
        --------
        >>> a, b = QuantileSketches(), QuantileSketches()
        >>> a.update(np.array([0]), np.array([1.0]))
        >>> b.update(np.array([0, 1]), np.array([3.0, 5.0]))
        >>> a.merge(b, slot_map=np.array([1, 0]))
        >>> a.counts(np.array([0, 1])).tolist()
        [2, 1]
        """
        if (other._alpha, other._max_buckets) != (self._alpha, self._max_buckets):
            raise ValueError("cannot merge sketches with different parameters: "
                             f"(relative_error, max_buckets) {(self._alpha, self._max_buckets)}"
                             f" vs {(other._alpha, other._max_buckets)}")
        if other is self:
            other = self.copy()
        if slot_map is None:
            slot_map = np.arange(other._n_slots, dtype=np.int64)
        slot_map = np.ascontiguousarray(slot_map, dtype=np.int64)
        if slot_map.shape != (other._n_slots,):
            raise ValueError(f"slot_map needs one entry per slot of other ({other._n_slots}), "
                             f"got shape {slot_map.shape}")
        if slot_map.size and slot_map.min() < -1:
            raise ValueError("slot_map entries must be >= 0, or -1 to skip a slot")
        if not slot_map.size or slot_map.max() < 0:
            return
        self._ensure_slots(int(slot_map.max()) + 1)
        self._reserve_counts(int(other.counts(np.arange(other._n_slots)).sum()))
        bmin, bmax = self._empty_extent()
        _source_extent(other._arena, other._seg, slot_map, bmin, bmax)
        self._reserve(bmin, bmax)
        _merge_into(self._arena, self._seg, self._special, self._extremes, self._mb,
                    other._arena, other._seg, other._special, other._extremes, slot_map)

    def reset(self, slots: np.ndarray | Sequence[int]) -> None:
        """Empty the given slots (e.g. of fired windows) so their ids can be reused.

        Examples
        --------
        >>> sk = QuantileSketches()
        >>> sk.update(np.array([0, 1]), np.array([1.0, 2.0]))
        >>> sk.reset([0])
        >>> sk.counts(np.array([0, 1])).tolist()
        [0, 1]
        """
        slots = _as_slots(slots)
        slots = np.unique(slots[slots < self._n_slots])
        subs = np.concatenate([2 * slots, 2 * slots + 1])
        self._waste += int(self._seg[subs, _CAP].sum())
        self._seg[subs] = _EMPTY_SEGMENT
        self._special[slots] = 0
        self._extremes[slots] = (np.inf, -np.inf)
        live = self._used - self._waste
        if self._arena.size > _MIN_ARENA and self._waste > live:
            self._repack(0)

    # -- queries ---------------------------------------------------------------------------

    def quantiles(self, slots: np.ndarray | Sequence[int],
                  q: float | Sequence[float]) -> np.ndarray:
        """Estimated lower quantiles ``q`` of each slot; NaN for slots holding no value.

        Returns shape ``(len(slots),)`` for a scalar ``q``, else ``(len(slots), len(q))``.

        Examples
        --------
        >>> sk = QuantileSketches()
        >>> sk.update(np.zeros(4, np.int64), np.array([-3.0, 0.0, 10.0, 10.0]))
        >>> sk.quantiles([0], [0.0, 0.5, 0.7, 1.0])  # ranks 0, 1, 2, 3
        array([[-3.,  0.,  10.0..., 10.]])
        """
        slots = _as_slots(slots)
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if qs.ndim != 1 or not np.all((qs >= 0.0) & (qs <= 1.0)):
            raise ValueError(f"q must be a number or a sequence of numbers in [0, 1], got {q!r}")
        order = np.argsort(qs, kind="stable")
        out = np.empty((slots.size, qs.size), np.float64)
        if qs.size:
            _quantiles(self._arena, self._seg, self._special, self._extremes, self._n_slots,
                       slots, np.ascontiguousarray(qs[order]), self._gamma, out)
        result = np.empty_like(out)
        result[:, order] = out
        return result[:, 0] if np.ndim(q) == 0 else result

    def counts(self, slots: np.ndarray | Sequence[int]) -> np.ndarray:
        """Number of non-NaN values (including zeros and infinities) per slot, int64."""
        slots = _as_slots(slots)
        out = np.empty(slots.size, np.int64)
        _counts(self._arena, self._seg, self._special, self._n_slots, slots, out)
        return out

    def nan_counts(self, slots: np.ndarray | Sequence[int]) -> np.ndarray:
        """Number of NaN values seen (and ignored) per slot, int64."""
        slots = _as_slots(slots)
        out = np.zeros(slots.size, np.int64)
        inside = slots < self._n_slots
        out[inside] = self._special[slots[inside], _NANS]
        return out

    # -- copies and serialization -------------------------------------------------------------

    def take(self, slots: np.ndarray | Sequence[int]) -> QuantileSketches:
        """A new set whose slot ``i`` is a copy of this set's ``slots[i]`` (distinct slots).

        Examples
        --------
        >>> sk = QuantileSketches()
        >>> sk.update(np.array([0, 5, 5]), np.array([1.0, 2.0, 3.0]))
        >>> sub = sk.take([5, 0])
        >>> sub.n_slots, sub.counts([0, 1]).tolist()
        (2, [2, 1])
        """
        slots = _as_slots(slots)
        if np.unique(slots).size != slots.size:
            raise ValueError("take() needs distinct slots")
        out = QuantileSketches(slots.size, self._alpha, self._max_buckets)
        slot_map = np.full(self._n_slots, -1, np.int64)
        inside = slots < self._n_slots
        slot_map[slots[inside]] = np.flatnonzero(inside)
        out.merge(self, slot_map)
        return out

    def copy(self) -> QuantileSketches:
        """An independent copy."""
        return QuantileSketches.from_bytes(self.to_bytes())

    def to_bytes(self) -> bytes:
        """A compact, canonical serialization: equal sketches give equal bytes.

        Stores only each slot's occupied buckets, as the narrowest unsigned integers that hold
        the largest count.

        Examples
        --------
        >>> sk = QuantileSketches()
        >>> sk.update(np.array([0, 1]), np.array([1.5, -2.0]))
        >>> QuantileSketches.from_bytes(sk.to_bytes()) == sk
        True
        """
        n = self._n_slots
        ranges = np.zeros((2 * n, 2), np.int32)
        payload = np.empty(self._used, self._arena.dtype)
        length = _gather(self._arena, self._seg, 2 * n, ranges, payload)
        payload = payload[:length]
        largest = int(payload.max()) if length else 0
        code = next(i for i, dt in enumerate(_PAYLOAD_DTYPES) if largest <= np.iinfo(dt).max)
        header = _HEADER.pack(_MAGIC, _VERSION, code, self._alpha, self._mb, n)
        parts = (self._special[:n].astype("<i8"), self._extremes[:n].astype("<f8"),
                 ranges.astype("<i4"), payload.astype(_PAYLOAD_DTYPES[code]))
        return header + b"".join(p.tobytes() for p in parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketches:
        """Rebuild a set from :meth:`to_bytes` output."""
        if len(data) < _HEADER.size:
            raise ValueError("not a QuantileSketches serialization: too short")
        magic, version, code, alpha, mb, n = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION or code >= len(_PAYLOAD_DTYPES):
            raise ValueError("not a QuantileSketches serialization (bad magic or version)")
        out = cls(0, alpha, mb or None)
        offset = _HEADER.size
        arrays = []
        for dtype, shape in (("<i8", (n, 4)), ("<f8", (n, 2)), ("<i4", (2 * n, 2))):
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if len(data) < offset + size:
                raise ValueError("truncated QuantileSketches serialization")
            arrays.append(np.frombuffer(data, dtype, int(np.prod(shape)), offset).reshape(shape))
            offset += size
        special, extremes, ranges = arrays
        lengths = ranges[:, 1].astype(np.int64)
        itemsize = np.dtype(_PAYLOAD_DTYPES[code]).itemsize
        if (lengths < 0).any() or len(data) - offset != lengths.sum() * itemsize:
            raise ValueError("corrupt QuantileSketches serialization: payload size mismatch")
        payload = np.frombuffer(data, _PAYLOAD_DTYPES[code], offset=offset)
        largest = int(payload.max()) if payload.size else 0
        dtype = np.int32 if largest <= _INT32_MAX else np.int64
        out._ensure_slots(int(n))
        out._special[:n] = special
        out._extremes[:n] = extremes
        live = lengths > 0
        seg = out._seg[:2 * n]
        seg[:, _START] = np.where(live, np.cumsum(lengths) - lengths, -1)
        seg[:, _LO] = np.where(live, ranges[:, 0], 0)
        seg[:, _CAP] = lengths
        seg[:, _TOP] = np.where(live, ranges[:, 0] + lengths - 1, _EMPTY)
        out._arena = np.zeros(max(payload.size, _MIN_ARENA), dtype)
        out._arena[:payload.size] = payload
        out._used = int(payload.size)
        out._headroom = _INT32_MAX - largest if dtype == np.int32 else 0
        return out

    def __reduce__(self) -> tuple:
        return (QuantileSketches.from_bytes, (self.to_bytes(),))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketches):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"QuantileSketches(n_slots={self._n_slots}, relative_error={self._alpha}, "
                f"max_buckets={self._max_buckets}, nbytes={self.nbytes})")

    # -- storage management ------------------------------------------------------------------

    def _ensure_slots(self, n: int) -> None:
        """Grow the per-slot arrays (doubling) to hold ``n`` slots."""
        if n <= self._n_slots:
            return
        have = self._special.shape[0]
        if n > have:
            new = max(n, 2 * have, 16)
            self._special = np.concatenate([self._special, np.zeros((new - have, 4), np.int64)])
            extremes = np.empty((new - have, 2), np.float64)
            extremes[:] = (np.inf, -np.inf)
            self._extremes = np.concatenate([self._extremes, extremes])
            seg = np.empty((2 * (new - have), 4), np.int64)
            seg[:] = _EMPTY_SEGMENT
            self._seg = np.concatenate([self._seg, seg])
        self._n_slots = n

    def _empty_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-store key ranges that contain nothing yet (``min > max``)."""
        n_sub = self._seg.shape[0]
        return (np.full(n_sub, np.iinfo(np.int64).max, np.int64),
                np.full(n_sub, np.iinfo(np.int64).min, np.int64))

    def _reserve_counts(self, n: int) -> None:
        """Promote counts to int64 before adding ``n`` values could overflow int32."""
        if self._arena.dtype == np.int64:
            return
        if n > self._headroom:
            self._headroom = _INT32_MAX - int(self._arena[:self._used].max(initial=0))
        if n > self._headroom:
            self._arena = self._arena.astype(np.int64)
            return
        self._headroom -= n

    def _reserve(self, bmin: np.ndarray, bmax: np.ndarray) -> None:
        """Make every store's segment cover its current data and keys ``bmin..bmax``."""
        new_lo = np.zeros(bmin.size, np.int64)
        new_cap = np.zeros(bmin.size, np.int64)
        extra = _plan(bmin, bmax, self._arena, self._seg, self._mb, new_lo, new_cap)
        if self._used + extra > self._arena.size:
            self._repack(extra)
        self._used, freed = _relocate(bmin, bmax, self._arena, self._seg, self._mb, new_lo,
                                      new_cap, self._used)
        self._waste += freed

    def _repack(self, extra: int) -> None:
        """Copy live segments into a fresh array with room for ``extra`` more elements."""
        live = self._used - self._waste
        need = live + extra
        out = np.zeros(max(need + need // 2, _MIN_ARENA), self._arena.dtype)
        self._used = _compact(self._arena, self._seg, out)
        self._arena = out
        self._waste = 0
