"""Event-time vocabulary: durations, window shapes and aggregate functions.

Durations are read once, where the user gives them (``"5min"``, ``"1h30min"``, a
``datetime.timedelta``, or an int of nanoseconds), and travel as integer nanoseconds in plan
nodes; :func:`format_duration` shows them again.

Examples
--------
>>> parse_duration("5min"), parse_duration("1h30min"), parse_duration("250ms")
(300000000000, 5400000000000, 250000000)
>>> tumbling("5min"), tumbling(timedelta(minutes=5)) == tumbling("5min")
(tumbling('5min'), True)
>>> hopping("10min", "5min").windows_per_row
2
>>> quantile("delay", 0.95)
quantile('delay', 0.95)
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import pyarrow as pa

from sabot_lab.expr import ExprError

__all__ = [
    "AggSpec",
    "DurationLike",
    "Hopping",
    "Session",
    "Tumbling",
    "approx_quantile",
    "count",
    "format_duration",
    "hopping",
    "max",
    "mean",
    "min",
    "parse_duration",
    "quantile",
    "session",
    "sum",
    "to_unit",
    "tumbling",
]

#: What the API accepts as a duration: text, a timedelta, or nanoseconds.
DurationLike = str | timedelta | int

_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "min": 60_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
             "d": 86_400_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|ms|min|s|m|h|d)")
_SHOWN = (("d", _UNITS_NS["d"]), ("h", _UNITS_NS["h"]), ("min", _UNITS_NS["min"]),
          ("s", _UNITS_NS["s"]), ("ms", _UNITS_NS["ms"]), ("us", _UNITS_NS["us"]), ("ns", 1))


def parse_duration(value: DurationLike) -> int:
    """A duration in nanoseconds: text such as ``"10s"``, ``"5min"``, ``"1h30min"``, a
    ``datetime.timedelta``, or an int (nanoseconds already).

    >>> parse_duration("2 d"), parse_duration(timedelta(milliseconds=3))
    (172800000000000, 3000000)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    ValueError: cannot read duration 'soon': use a number and a unit (ns, us, ms, s, min, h, d), ...
    """
    if isinstance(value, bool):
        raise TypeError(f"a duration is text, a timedelta or nanoseconds, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000_000 \
            + value.microseconds * 1_000
    if not isinstance(value, str):
        raise TypeError(f"a duration is text ('5min'), a timedelta or nanoseconds, got "
                        f"{type(value).__name__} {value!r}")
    compact = value.replace(" ", "")
    parts = _PART.findall(compact)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != compact:
        raise ValueError(f"cannot read duration {value!r}: use a number and a unit "
                         f"(ns, us, ms, s, min, h, d), e.g. '5min' or '1h30min'")
    return round(builtins.sum(float(n) * _UNITS_NS[u] for n, u in parts))


def format_duration(nanoseconds: int) -> str:
    """A nanosecond duration as the shortest text :func:`parse_duration` reads back.

    >>> format_duration(5_400_000_000_000), format_duration(0), format_duration(-1_500_000)
    ('1h30min', '0s', '-1ms500us')
    """
    if nanoseconds == 0:
        return "0s"
    sign, rest, parts = "-" if nanoseconds < 0 else "", abs(nanoseconds), []
    for unit, size in _SHOWN:
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return sign + "".join(parts)


def non_negative(name: str, value: DurationLike | None) -> int | None:
    """``value`` in nanoseconds, refusing a negative duration (``None`` stays ``None``)."""
    if value is None:
        return None
    ns = parse_duration(value)
    if ns < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return ns


def to_unit(nanoseconds: int, unit: str) -> int:
    """A nanosecond duration in the time unit of a column (``s``, ``ms``, ``us``, ``ns``)."""
    return nanoseconds // _UNITS_NS[unit]


@dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows of ``size_ns`` (aligned to the epoch)."""

    size_ns: int
    #: Sessions end with their keys' rows; fixed windows (this) at fixed times.
    is_session: ClassVar[bool] = False

    @property
    def slide_ns(self) -> int:
        return self.size_ns

    windows_per_row = 1

    def __repr__(self) -> str:
        return f"tumbling({format_duration(self.size_ns)!r})"


@dataclass(frozen=True)
class Hopping:
    """Windows of ``size_ns`` starting every ``slide_ns``: each row is in ``size / slide``
    windows."""

    size_ns: int
    slide_ns: int
    is_session: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.size_ns % self.slide_ns:
            raise ValueError(f"hopping window size {format_duration(self.size_ns)} must be a "
                             f"whole multiple of its slide {format_duration(self.slide_ns)}")

    @property
    def windows_per_row(self) -> int:
        return self.size_ns // self.slide_ns

    def __repr__(self) -> str:
        return f"hopping({format_duration(self.size_ns)!r}, {format_duration(self.slide_ns)!r})"


@dataclass(frozen=True)
class Session:
    """Per-key sessions: a row at ``t`` opens (or extends) a session to ``t + gap``; rows
    whose ``[t, t + gap)`` overlap join it, so a session ends ``gap`` after its last row."""

    gap_ns: int
    is_session: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"session({format_duration(self.gap_ns)!r})"


def _positive(name: str, value: DurationLike) -> int:
    ns = parse_duration(value)
    if ns <= 0:
        raise ValueError(f"a {name} must be positive, got {value!r}")
    return ns


def tumbling(size: DurationLike) -> Tumbling:
    """Tumbling windows, e.g. ``tumbling("5min")``."""
    return Tumbling(_positive("window size", size))


def hopping(size: DurationLike, slide: DurationLike) -> Hopping:
    """Hopping (sliding) windows, e.g. ``hopping("10min", "5min")``."""
    return Hopping(_positive("window size", size), _positive("window slide", slide))


def session(gap: DurationLike) -> Session:
    """Session windows per key that close after ``gap`` without rows, e.g. ``session("30s")``.

    >>> session("30min")
    session('30min')
    >>> session("0s")
    Traceback (most recent call last):
    ...
    ValueError: a session gap must be positive, got '0s'
    """
    return Session(_positive("session gap", gap))


@dataclass(frozen=True)
class AggSpec:
    """One aggregate of a window: ``function`` over ``column`` (``None`` for count)."""

    function: str
    column: str | None = None
    q: float | None = None
    relative_error: float | None = None

    def output_type(self, schema: pa.Schema) -> pa.DataType:
        """The type of the aggregate's result."""
        if self.function == "count":
            return pa.int64()
        if self.column not in schema.names:
            raise KeyError(f"aggregate column {self.column!r} not found; available columns: "
                           f"{schema.names}")
        t = schema.field(self.column).type
        if self.function in ("min", "max"):
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                    or pa.types.is_temporal(t)):
                raise ExprError(f"{self.function}({self.column!r}) needs a numeric, boolean or "
                                f"time column, {self.column!r} is {t}")
            return t
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise ExprError(f"{self.function}({self.column!r}) needs a numeric column, "
                             f"{self.column!r} is {t}")
        if self.function == "sum":
            return pa.int64() if pa.types.is_integer(t) else pa.float64()
        return pa.float64()

    def __repr__(self) -> str:
        if self.function == "count":
            return "count()"
        if self.function == "quantile":
            return f"quantile({self.column!r}, {self.q})"
        if self.function == "approx_quantile":
            return f"approx_quantile({self.column!r}, {self.q}, {self.relative_error})"
        return f"{self.function}({self.column!r})"


def count() -> AggSpec:
    """Rows per window (and key)."""
    return AggSpec("count")


def sum(column: str) -> AggSpec:
    """Sum of a numeric column (nulls ignored)."""
    return AggSpec("sum", column)


def mean(column: str) -> AggSpec:
    """Mean of a numeric column (nulls ignored)."""
    return AggSpec("mean", column)


def min(column: str) -> AggSpec:
    """Smallest value (nulls ignored)."""
    return AggSpec("min", column)


def max(column: str) -> AggSpec:
    """Largest value (nulls ignored)."""
    return AggSpec("max", column)


def quantile(column: str, q: float) -> AggSpec:
    """Exact quantile ``q`` with linear interpolation between the closest ranks (the
    definition of DuckDB's ``quantile_cont`` and numpy's default); nulls ignored."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile q must be within [0, 1], got {q}")
    return AggSpec("quantile", column, q)


def approx_quantile(column: str, q: float, relative_error: float = 0.01) -> AggSpec:
    """Approximate quantile ``q`` from a mergeable log-bucket sketch (DDSketch-style, see
    :mod:`sabot_lab.ops.window.sketch`): the estimate is within ``relative_error`` of the exact
    *lower* quantile (``np.quantile(x, q, method="lower")``), whatever the data, with memory
    per group that grows with the log of the values' range, not with the rows. Nulls and NaN
    are ignored.

    >>> approx_quantile("latency_ms", 0.99)
    approx_quantile('latency_ms', 0.99, 0.01)
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile q must be within [0, 1], got {q}")
    if not 0 < relative_error < 1:
        raise ValueError(f"relative_error must be within (0, 1), got {relative_error}")
    return AggSpec("approx_quantile", column, q, relative_error)
