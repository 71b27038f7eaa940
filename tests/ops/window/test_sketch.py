"""QuantileSketches against numpy's exact lower quantiles, and its merge / batch invariance."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot_lab.ops.window.sketch import QuantileSketches

QS = [0.0, 0.01, 0.25, 0.5, 0.95, 0.99, 1.0]
N_SLOTS = 6
TINY = np.finfo(np.float64).tiny

finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)
moderate = st.floats(min_value=-1e6, max_value=1e6, allow_subnormal=False)
values_st = st.one_of(finite, moderate, st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 1e300]))
rows_st = st.lists(st.tuples(st.integers(0, N_SLOTS - 1), values_st), max_size=300)
alpha_st = st.sampled_from([0.001, 0.01, 0.1])


def _arrays(rows: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    slots = np.array([r[0] for r in rows], np.int64)
    values = np.array([r[1] for r in rows], np.float64)
    return slots, values


def _sketch(slots: np.ndarray, values: np.ndarray, **kwargs) -> QuantileSketches:
    sk = QuantileSketches(**kwargs)
    sk.update(slots, values)
    return sk


def _assert_within(estimate: float, exact: float, alpha: float) -> None:
    """``estimate`` is alpha-accurate for ``exact`` (exact for 0 and +-inf)."""
    if np.isinf(exact) or exact == 0.0:
        assert estimate == exact
    else:
        assert abs(estimate - exact) <= alpha * abs(exact) * (1 + 1e-12), (estimate, exact)


def _check_bound(sk: QuantileSketches, slots: np.ndarray, values: np.ndarray, alpha: float,
                 n_slots: int = N_SLOTS) -> None:
    est = sk.quantiles(np.arange(n_slots), QS)
    for s in range(n_slots):
        vals = values[(slots == s) & ~np.isnan(values)]
        if not vals.size:
            assert np.isnan(est[s]).all()
            continue
        exact = np.quantile(vals, QS, method="lower")
        for e, x in zip(est[s], exact, strict=True):
            _assert_within(e, x, alpha)


def _assert_same(a: QuantileSketches, b: QuantileSketches, n_slots: int = N_SLOTS) -> None:
    slots = np.arange(n_slots)
    np.testing.assert_array_equal(a.counts(slots), b.counts(slots))
    np.testing.assert_array_equal(a.nan_counts(slots), b.nan_counts(slots))
    np.testing.assert_array_equal(a.quantiles(slots, QS), b.quantiles(slots, QS))
    assert a == b


@settings(max_examples=150, deadline=None)
@given(rows=rows_st, alpha=alpha_st)
def test_relative_error_bound(rows, alpha):
    slots, values = _arrays(rows)
    sk = _sketch(slots, values, relative_error=alpha, max_buckets=None)
    _check_bound(sk, slots, values, alpha)
    np.testing.assert_array_equal(sk.counts(np.arange(N_SLOTS)),
                                  np.bincount(slots, minlength=N_SLOTS))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sigma=st.sampled_from([0.5, 2.0, 4.0]))
def test_bound_on_many_slots_with_signs_and_zeros(seed, sigma):
    rng = np.random.default_rng(seed)
    n, n_slots = 5_000, 200
    slots = rng.integers(0, n_slots, n)
    values = rng.lognormal(0, sigma, n) * rng.choice([-1.0, 1.0, 0.0], n, p=[0.3, 0.6, 0.1])
    sk = _sketch(slots, values)
    _check_bound(sk, slots, values, 0.01, n_slots)


@settings(max_examples=100, deadline=None)
@given(rows=rows_st, data=st.data(), max_buckets=st.sampled_from([None, 4, 64]))
def test_merge_of_parts_equals_one_sketch(rows, data, max_buckets):
    slots, values = _arrays(rows)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows))),
                    bool)
    whole = _sketch(slots, values, max_buckets=max_buckets, n_slots=N_SLOTS)
    left = _sketch(slots[mask], values[mask], max_buckets=max_buckets, n_slots=N_SLOTS)
    right = _sketch(slots[~mask], values[~mask], max_buckets=max_buckets, n_slots=N_SLOTS)
    left.merge(right)
    _assert_same(left, whole)


@settings(max_examples=100, deadline=None)
@given(rows=rows_st, data=st.data(), max_buckets=st.sampled_from([None, 4, 64]))
def test_batch_sizes_do_not_matter(rows, data, max_buckets):
    slots, values = _arrays(rows)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=8)))
    whole = _sketch(slots, values, max_buckets=max_buckets, n_slots=N_SLOTS)
    batched = QuantileSketches(N_SLOTS, max_buckets=max_buckets)
    for lo, hi in zip([0, *cuts], [*cuts, len(rows)], strict=True):
        batched.update(slots[lo:hi], values[lo:hi])
    _assert_same(batched, whole)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_buckets=st.sampled_from([8, 32]))
def test_collapsing_keeps_the_bound_above_the_folded_range(seed, max_buckets):
    rng = np.random.default_rng(seed)
    alpha = 0.05
    gamma = (1 + alpha) / (1 - alpha)
    n = 400
    slots = rng.integers(0, 3, n)
    values = rng.lognormal(0, 3, n) * rng.choice([-1.0, 1.0], n)
    sk = _sketch(slots, values, relative_error=alpha, max_buckets=max_buckets)
    est = sk.quantiles(np.arange(3), QS)
    for s in range(3):
        vals = values[slots == s]
        if not vals.size:
            continue
        for e, x in zip(est[s], np.quantile(vals, QS, method="lower"), strict=True):
            same_sign = vals[np.sign(vals) == np.sign(x)]
            largest = np.abs(same_sign).max()
            # one bucket of margin below the documented limit, for rounding at the edge
            if abs(x) > largest * gamma ** (2 - max_buckets):
                _assert_within(e, x, alpha)
            else:  # folded values are estimated too far from zero, never past the floor
                assert abs(e) >= abs(x) * (1 - alpha)
                assert abs(e) <= largest * gamma ** (2 - max_buckets) * (1 + alpha)


def test_collapsing_bounds_memory_of_wide_ranges():
    values = np.geomspace(1e-300, 1e300, 20_000)
    slots = np.zeros(values.size, np.int64)
    bounded = _sketch(slots, values)  # 2048 buckets: the top 17.7 decades stay exact
    unbounded = _sketch(slots, values, max_buckets=None)
    assert bounded.nbytes < 32 * 1024
    assert unbounded.nbytes > 250 * 1024  # 600 decades of 1 % buckets
    exact = np.quantile(values, [0.5, 0.99], method="lower")
    _assert_within(unbounded.quantiles([0], 0.5)[0], exact[0], 0.01)
    _assert_within(unbounded.quantiles([0], 0.99)[0], exact[1], 0.01)
    _assert_within(bounded.quantiles([0], 0.99)[0], exact[1], 0.01)
    assert bounded.quantiles([0], 0.5)[0] > exact[0]  # folded: overestimated


def test_memory_follows_each_slots_range():
    rng = np.random.default_rng(3)
    n_slots = 3_000
    slots = np.repeat(np.arange(n_slots), 20)
    # a dense [slot, bucket] array over the doubles would take ~280 KB per slot
    wide = _sketch(slots, rng.lognormal(5, 1, slots.size))  # ~200 buckets per slot
    assert wide.nbytes / n_slots < 2_500
    narrow = _sketch(slots, rng.uniform(100, 110, slots.size))  # 5 buckets per slot
    assert narrow.nbytes / n_slots < 250


def test_empty_and_unknown_slots_give_nan():
    sk = QuantileSketches(n_slots=3)
    sk.update(np.array([1]), np.array([4.0]))
    out = sk.quantiles([0, 1, 2, 10], [0.5, 0.99])
    assert np.isnan(out[[0, 2, 3]]).all()
    np.testing.assert_array_equal(out[1], [4.0, 4.0])
    np.testing.assert_array_equal(sk.counts([0, 1, 2, 10]), [0, 1, 0, 0])
    assert sk.quantiles([1], 0.5).shape == (1,)
    assert sk.quantiles([], [0.5]).shape == (0, 1)


@settings(max_examples=50, deadline=None)
@given(rows=rows_st, nan_rows=st.lists(st.integers(0, N_SLOTS - 1), max_size=30))
def test_nans_are_counted_and_ignored(rows, nan_rows):
    slots, values = _arrays(rows)
    nan_slots = np.array(nan_rows, np.int64)
    with_nans = _sketch(np.concatenate([slots, nan_slots]),
                        np.concatenate([values, np.full(nan_slots.size, np.nan)]),
                        n_slots=N_SLOTS, max_buckets=None)
    np.testing.assert_array_equal(with_nans.nan_counts(np.arange(N_SLOTS)),
                                  np.bincount(nan_slots, minlength=N_SLOTS))
    without = _sketch(slots, values, n_slots=N_SLOTS, max_buckets=None)
    np.testing.assert_array_equal(with_nans.quantiles(np.arange(N_SLOTS), QS),
                                  without.quantiles(np.arange(N_SLOTS), QS))
    np.testing.assert_array_equal(with_nans.counts(np.arange(N_SLOTS)),
                                  without.counts(np.arange(N_SLOTS)))


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 2),
                               st.one_of(moderate, st.sampled_from([np.inf, -np.inf]))),
                     min_size=1, max_size=100))
def test_infinities_rank_at_the_ends(rows):
    slots, values = _arrays(rows)
    sk = _sketch(slots, values, max_buckets=None)
    _check_bound(sk, slots, values, 0.01, 3)


def test_subnormals_count_as_zero():
    values = np.array([5e-324, -1e-310, 2e-308, 3.0])
    sk = _sketch(np.zeros(4, np.int64), values)
    est = sk.quantiles([0], [1 / 3, 2 / 3])[0]
    exact = np.quantile(values, [1 / 3, 2 / 3], method="lower")
    assert np.all(np.abs(est - exact) < TINY)


@settings(max_examples=50, deadline=None)
@given(rows=rows_st, data=st.data())
def test_reset_then_reuse(rows, data):
    slots, values = _arrays(rows)
    dropped = data.draw(st.lists(st.integers(0, N_SLOTS - 1), max_size=N_SLOTS))
    later = data.draw(rows_st)
    later_slots, later_values = _arrays(later)
    sk = _sketch(slots, values, n_slots=N_SLOTS)
    sk.reset(np.array(dropped, np.int64))
    sk.update(later_slots, later_values)
    keep = ~np.isin(slots, dropped)
    expected = _sketch(np.concatenate([slots[keep], later_slots]),
                       np.concatenate([values[keep], later_values]), n_slots=N_SLOTS)
    _assert_same(sk, expected)


def test_reset_frees_memory():
    rng = np.random.default_rng(0)
    sk = QuantileSketches()
    sk.update(np.arange(50_000) % 5_000, rng.lognormal(0, 2, 50_000))
    full = sk.nbytes
    sk.reset(np.arange(5_000))
    sk.update(np.array([0]), np.array([1.0]))
    assert sk.nbytes < full / 2
    np.testing.assert_array_equal(sk.counts([0, 1]), [1, 0])


@settings(max_examples=50, deadline=None)
@given(rows=rows_st, data=st.data())
def test_merge_with_slot_map(rows, data):
    slots, values = _arrays(rows)
    slot_map = np.array(data.draw(st.lists(st.integers(-1, 3), min_size=N_SLOTS,
                                           max_size=N_SLOTS)), np.int64)
    base_rows = data.draw(rows_st)
    base_slots, base_values = _arrays(base_rows)
    target = _sketch(base_slots, base_values, n_slots=N_SLOTS)
    target.merge(_sketch(slots, values, n_slots=N_SLOTS), slot_map)
    mapped = slot_map[slots]
    keep = mapped >= 0
    expected = _sketch(np.concatenate([base_slots, mapped[keep]]),
                       np.concatenate([base_values, values[keep]]), n_slots=N_SLOTS)
    _assert_same(target, expected)


def test_take_copies_slots_in_order():
    slots = np.array([0, 5, 5, 2, 0])
    values = np.array([1.0, 2.0, 3.0, -4.0, np.nan])
    sk = _sketch(slots, values)
    sub = sk.take([5, 0, 9])
    expected = _sketch(np.array([0, 0, 1, 1]), np.array([2.0, 3.0, 1.0, np.nan]), n_slots=3)
    _assert_same(sub, expected, 3)
    with pytest.raises(ValueError, match="distinct"):
        sk.take([0, 0])


@settings(max_examples=50, deadline=None)
@given(rows=rows_st, max_buckets=st.sampled_from([None, 16]))
def test_serialization_round_trip(rows, max_buckets):
    slots, values = _arrays(rows)
    sk = _sketch(slots, values, max_buckets=max_buckets)
    again = QuantileSketches.from_bytes(sk.to_bytes())
    _assert_same(again, sk, sk.n_slots)
    _assert_same(pickle.loads(pickle.dumps(sk)), sk, sk.n_slots)
    again.update(slots, values)  # a rebuilt set keeps working
    sk.merge(sk)
    _assert_same(again, sk, sk.n_slots)


def test_serialization_is_compact_and_checked():
    rng = np.random.default_rng(1)
    sk = _sketch(np.arange(100_000) % 1_000, rng.lognormal(3, 1, 100_000))
    data = sk.to_bytes()
    assert len(data) < 1_000 * 700  # about 400 occupied buckets per slot, one byte each
    with pytest.raises(ValueError, match="serialization"):
        QuantileSketches.from_bytes(b"nope")
    with pytest.raises(ValueError, match="serialization"):
        QuantileSketches.from_bytes(data[:-1])


def test_counts_past_int32_are_exact():
    sk = _sketch(np.array([0, 0]), np.array([2.0, 3.0]))
    for _ in range(31):
        sk.merge(sk)
    np.testing.assert_array_equal(sk.counts([0]), [2**32])
    np.testing.assert_array_equal(sk.quantiles([0], [0.0, 0.5, 1.0])[0], [2.0, 2.0, 3.0])
    assert QuantileSketches.from_bytes(sk.to_bytes()) == sk
    np.testing.assert_array_equal(sk.take([0]).counts([0]), [2**32])
    sk.reset([0])
    sk.update(np.array([0]), np.array([7.0]))  # small counts again, in a promoted set
    small = _sketch(np.array([1]), np.array([1.0]))
    small.merge(sk)
    _assert_same(small, _sketch(np.array([0, 1]), np.array([7.0, 1.0])), 2)


def test_rank_error_on_lognormal_tail():
    """Rank error of p95 / p99 on 1M lognormal values; the target is <= 1 %."""
    rng = np.random.default_rng(42)
    values = rng.lognormal(0, 1, 1_000_000)
    sk = _sketch(np.zeros(values.size, np.int64), values)
    ordered = np.sort(values)
    for q, est in zip([0.95, 0.99], sk.quantiles([0], [0.95, 0.99])[0], strict=True):
        rank = np.searchsorted(ordered, est, side="right") / values.size
        assert abs(rank - q) <= 0.01
        _assert_within(est, np.quantile(values, q, method="lower"), 0.01)


def test_invalid_arguments():
    sk = QuantileSketches()
    with pytest.raises(ValueError, match="relative_error"):
        QuantileSketches(relative_error=1.0)
    with pytest.raises(ValueError, match="max_buckets"):
        QuantileSketches(max_buckets=0)
    with pytest.raises(ValueError, match=">= 0"):
        sk.update(np.array([-1]), np.array([1.0]))
    with pytest.raises(ValueError, match="shape"):
        sk.update(np.array([0, 1]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sk.quantiles([0], 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        sk.merge(QuantileSketches(relative_error=0.02))
    with pytest.raises(ValueError, match="slot_map"):
        sk.merge(QuantileSketches(n_slots=2), slot_map=np.array([0]))
