"""Keyed process functions: per-key state, updated batch by batch.

``stream.key_by("account").process(fn)`` hands every batch, in arrival order, to ``fn``
together with the state of the batch's keys (a :class:`~sabot_lab.state.StateBlock`: one slot
per row, columnar arrays indexed by slot). There are two ways to write ``fn``:

* :class:`ProcessFunction` subclasses: the fast path. ``process`` gets the batch and the block
  and typically runs a numba kernel that walks the rows in order, reading and updating
  ``block.arrays[field][slot]``; see :mod:`sabot_lab.patterns.fraud`.
* :class:`PythonProcessFunction`: a plain Python function called once per row with the key,
  the row as a dict and the key's state as a dict. Easy to read and to teach with; about a
  hundred times slower.

**Event-time timers.** A function with ``timers = True`` keeps one timer per key, in the
state field ``_timer`` (:data:`NO_TIMER`: none), as a time in the unit of the stream's
watermark. A timer fires when the watermark passes it (``timer <= watermark``), as in Flink:
before the key's next row whose watermark is past it, or at the end of the batch (then
through :meth:`ProcessFunction.on_timer`), and every timer still set fires at the end of the
input. Firing clears the timer; the function may set it again, later than the time that
fired; at the end of the input a timer set again while the last ones fire is dropped (a
periodic timer would fire forever). Timers need ``with_watermark(...)`` upstream and no state
``ttl`` (an expiring key would lose its timer); they are part of the state, so they survive
checkpoints and fire in the key range that owns their key on Dask.

**Processing-time timers**, for live jobs: a function with ``processing_timers = True`` keeps
one more timer per key, ``_ptimer``, in nanoseconds of its :attr:`ProcessFunction.clock`
(the wall clock, ``time.time_ns``, unless the function brings its own). After each batch,
every such timer the clock has reached fires through
:meth:`ProcessFunction.on_processing_timer`, once per batch; at the end of the input they do
not fire (as in Flink: the wall clock says nothing about a replayed input). Their alerts
depend on when batches arrive, so they are for live runs, not for results that must repeat.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> def running_total(key, row, state):
...     state["total"] += row["amount"]
...     return [{"account": key, "total": state["total"]}] if state["total"] > 100 else []
>>> fn = sl.PythonProcessFunction(
...     running_total, state={"total": "float64"}, columns=["amount"],
...     output=pa.schema([("account", pa.int64()), ("total", pa.float64())]))
>>> payments = pa.table({"account": [1, 2, 1, 1], "amount": [60.0, 10.0, 50.0, 5.0]})
>>> sl.Stream.from_table(payments).key_by("account").process(fn).to_table().to_pylist()
[{'account': 1, 'total': 110.0}, {'account': 1, 'total': 115.0}]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from typing import Any

import numpy as np
import pyarrow as pa

from sabot_lab.plan.fingerprint import fingerprint_value
from sabot_lab.plan.nodes import WATERMARK_COLUMN
from sabot_lab.state import StateBlock, StateSpec

__all__ = ["NO_TIMER", "PTIMER_FIELD", "TIMER_FIELD", "ProcessFunction",
           "PythonProcessFunction", "with_timers"]

#: The state field holding a key's event-time timer, and its value when none is set.
TIMER_FIELD = "_timer"
#: The state field holding a key's processing-time timer (wall-clock nanoseconds).
PTIMER_FIELD = "_ptimer"
NO_TIMER = int(np.iinfo(np.int64).max)


def with_timers(spec: StateSpec, fields: tuple[str, ...]) -> StateSpec:
    """``spec`` with the timer ``fields`` (int64, no timer by default) added.

    >>> with_timers(StateSpec({"n": "int64"}), (TIMER_FIELD,)).defaults
    {'_timer': 9223372036854775807}
    """
    taken = [f for f in fields if f in spec.fields]
    if taken:
        raise ValueError(f"the state fields {taken} are reserved for timers")
    return StateSpec({**spec.fields, **dict.fromkeys(fields, "int64")},
                     {**spec.defaults, **dict.fromkeys(fields, NO_TIMER)}, spec.ttl)


class ProcessFunction:
    """Base class of keyed process functions (the fast, vectorized path).

    Subclasses set :attr:`name` and :attr:`columns`, and implement :meth:`state_spec`,
    :meth:`output_schema` and :meth:`process`; :meth:`validate` may route unusable rows to
    the ``invalid`` side output instead of letting them reach the state.
    """

    #: Shown in plans and metrics.
    name = "process"
    #: Input columns the function reads (checked when the plan is built).
    columns: tuple[str, ...] = ()
    #: Event-time column (int64 or timestamp) used as ``now`` for state time-to-live.
    time_col: str | None = None
    #: Whether the function keeps an event-time timer per key (see the module docstring).
    #: Its :meth:`process` then fires a row's due timer before the row itself, reading the
    #: ``_watermark`` column; :meth:`on_timer` fires the rest.
    timers: bool = False
    #: Whether it keeps a processing-time timer per key (fired by
    #: :meth:`on_processing_timer`), and the clock they are read against.
    processing_timers: bool = False
    clock: Callable[[], int] = staticmethod(time_ns)

    def state_spec(self) -> StateSpec:
        """The per-key state this function keeps."""
        raise NotImplementedError

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The schema of what :meth:`process` returns."""
        raise NotImplementedError

    def validate(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows this function cannot process: (bool mask, reason per masked row), or
        ``None`` when every row is fine."""
        return None

    def process(self, batch: pa.RecordBatch, keys: pa.Array, block: StateBlock
                ) -> pa.RecordBatch:
        """Read and update the state of ``batch``'s rows (``block.slots``; ``keys`` holds
        their keys) in arrival order; return the output rows, or (output rows, bool mask of
        input rows refused, reason per refused row) to send refused rows to ``invalid``."""
        raise NotImplementedError

    def on_timer(self, keys: pa.Array, times: np.ndarray, block: StateBlock
                 ) -> pa.RecordBatch:
        """Fire the timers of ``keys`` (one row each; ``block.slots`` their state) at
        ``times`` (ascending); their ``_timer`` is cleared already, and may be set again.
        Return the output rows."""
        raise NotImplementedError(f"{self.name} sets timers but defines no on_timer")

    def on_processing_timer(self, keys: pa.Array, times: np.ndarray, block: StateBlock
                            ) -> pa.RecordBatch:
        """Fire the processing-time timers of ``keys`` at ``times`` (their ``_ptimer`` is
        cleared already, and may be set again); return the output rows."""
        raise NotImplementedError(f"{self.name} sets processing-time timers but defines no "
                                  f"on_processing_timer")

    def fingerprint(self) -> dict[str, Any]:
        """What this function is, for checkpoints: its class, the code of every method its
        classes define, its public attributes (parameters) and its state layout. A resumed
        run must have the same; override to add what lives elsewhere.

        >>> fn = PythonProcessFunction(lambda k, row, s: [], {"n": "int64"}, ["v"],
        ...                            pa.schema([("k", pa.int64())]))
        >>> fn.fingerprint()["state"]["fields"]
        {'n': ['<i8', 0]}
        """
        code = {f"{klass.__qualname__}.{name}": fingerprint_value(member)
                for klass in type(self).__mro__ if klass not in (ProcessFunction, object)
                for name, member in sorted(vars(klass).items())
                if callable(member) and not name.startswith("__")}
        public = {k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}
        spec = self.state_spec()
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "code": code,
                "parameters": fingerprint_value(public),
                "state": {"fields": spec.describe(), "defaults": fingerprint_value(spec.defaults),
                          "ttl": fingerprint_value(spec.ttl)}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class PythonProcessFunction(ProcessFunction):
    """A keyed function written as plain Python, called once per row (for teaching).

    Parameters
    ----------
    fn
        ``fn(key, row: dict, state: dict) -> list[dict]``: ``state`` holds the key's fields
        (a ring field is a numpy array: assign into it); changes are kept. Returns output rows.
    state
        Field name to numpy dtype (or ``(dtype, n)`` for a ring); see
        :class:`~sabot_lab.state.StateSpec`.
    columns
        The input columns ``fn`` reads (the row dict holds these).
    output
        The schema of the rows ``fn`` returns.
    defaults, ttl, time_col
        Initial values per field; keys idle for ``ttl`` (in ``time_col``'s unit) are dropped.
    on_timer
        ``on_timer(key, time, state: dict) -> list[dict]``: called when the key's timer
        fires. Setting ``state["_timer"]`` (in ``fn`` or here) sets the key's timer;
        :data:`NO_TIMER` clears it.
    on_processing_timer, clock
        The same for processing-time timers (``state["_ptimer"]``, in nanoseconds of
        ``clock``, by default the wall clock ``time.time_ns``; ``fn`` reads the same clock to
        set one).

    Examples
    --------
    An alert when an account has been silent for 10 time units (an alert from the absence of
    events). A row's watermark is the one *before* it, so a row may arrive after its key's
    timer time before the watermark has passed it: the row function checks that case too.

    >>> def seen(key, row, state):
    ...     late = state["_timer"] <= row["t"]  # silent, though the timer has not fired yet
    ...     out = [{"account": key, "silent_since": state["_timer"] - 10}] if late else []
    ...     state["_timer"] = row["t"] + 10
    ...     return out
    >>> def silent(key, time, state):
    ...     return [{"account": key, "silent_since": time - 10}]
    >>> fn = PythonProcessFunction(seen, {"n": "int64"}, ["t"], pa.schema(
    ...     [("account", pa.int64()), ("silent_since", pa.int64())]), on_timer=silent)
    >>> import sabot_lab as sl
    >>> beats = pa.table({"account": [1, 2, 1, 2], "t": [0, 1, 5, 30]})
    >>> (sl.Stream.from_table(beats).with_watermark("t", unit="s").key_by("account")
    ...  .process(fn).to_table().to_pydict())
    {'account': [2, 1, 2], 'silent_since': [1, 5, 30]}
    """

    def __init__(self, fn: Callable[[Any, dict, dict], list[dict]],
                 state: Mapping[str, Any], columns: Sequence[str], output: pa.Schema,
                 defaults: Mapping[str, Any] | None = None, ttl: int | None = None,
                 time_col: str | None = None, name: str | None = None,
                 on_timer: Callable[[Any, int, dict], list[dict]] | None = None,
                 on_processing_timer: Callable[[Any, int, dict], list[dict]] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "python")
        self.columns = tuple(columns)
        self.output = output
        self.time_col = time_col
        self.timer_fn = on_timer
        self.timers = on_timer is not None
        self.processing_timer_fn = on_processing_timer
        self.processing_timers = on_processing_timer is not None
        if clock is not None:
            self.clock = clock
        self._spec = StateSpec(dict(state), dict(defaults or {}), ttl)

    def state_spec(self) -> StateSpec:
        return self._spec

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return self.output

    def process(self, batch: pa.RecordBatch, keys: pa.Array, block: StateBlock
                ) -> pa.RecordBatch:
        rows = batch.select(list(self.columns)).to_pylist()
        keys = keys.to_pylist()
        marks = (batch.column(WATERMARK_COLUMN).to_pylist() if self.timers
                 else [None] * len(rows))
        out: list[dict] = []
        for i, row in enumerate(rows):  # the teaching path: one Python call per row
            slot = block.slots[i]
            state = self._load(block, slot)
            if self.timers:
                out.extend(self._fire_due(keys[i], state, marks[i]))
            out.extend(self.fn(keys[i], row, state))
            self._store(block, slot, state)
        return pa.RecordBatch.from_pylist(out, schema=self.output)

    def on_timer(self, keys: pa.Array, times: np.ndarray, block: StateBlock
                 ) -> pa.RecordBatch:
        return self._fire_each(keys, times, block, self._fired)

    def on_processing_timer(self, keys: pa.Array, times: np.ndarray, block: StateBlock
                            ) -> pa.RecordBatch:
        return self._fire_each(keys, times, block, self.processing_timer_fn)

    def _fire_each(self, keys: pa.Array, times: np.ndarray, block: StateBlock,
                   fire: Callable[[Any, int, dict], list[dict]]) -> pa.RecordBatch:
        """``fire(key, time, state)`` for every timer that fired, one Python call each."""
        out: list[dict] = []
        for key, time, slot in zip(keys.to_pylist(), times.tolist(), block.slots, strict=True):
            state = self._load(block, slot)
            out.extend(fire(key, time, state))
            self._store(block, slot, state)
        return pa.RecordBatch.from_pylist(out, schema=self.output)

    def _fire_due(self, key: Any, state: dict, watermark: int) -> list[dict]:
        """Fire the key's timer while it is due at ``watermark`` (it may be set again)."""
        out: list[dict] = []
        while state[TIMER_FIELD] <= watermark:
            time = state[TIMER_FIELD]
            state[TIMER_FIELD] = NO_TIMER
            out.extend(self._fired(key, time, state))
        return out

    def _fired(self, key: Any, time: int, state: dict) -> list[dict]:
        out = self.timer_fn(key, time, state)
        if state[TIMER_FIELD] <= time:
            raise ValueError(f"{self.name}: on_timer for key {key!r} at {time} set the timer "
                             f"to {state[TIMER_FIELD]}, not later than the time that fired; "
                             f"set it after {time}, or to NO_TIMER to clear it")
        return out

    @staticmethod
    def _load(block: StateBlock, slot: int) -> dict:
        return {name: (array[slot] if array.ndim > 1 else array[slot].item())
                for name, array in block.arrays.items()}

    @staticmethod
    def _store(block: StateBlock, slot: int, state: dict) -> None:
        for name, array in block.arrays.items():
            array[slot] = state[name]
