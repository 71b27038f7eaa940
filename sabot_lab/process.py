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
from typing import Any

import numpy as np
import pyarrow as pa

from sabot_lab.plan.fingerprint import fingerprint_value
from sabot_lab.state import StateBlock, StateSpec

__all__ = ["ProcessFunction", "PythonProcessFunction"]


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
    """

    def __init__(self, fn: Callable[[Any, dict, dict], list[dict]],
                 state: Mapping[str, Any], columns: Sequence[str], output: pa.Schema,
                 defaults: Mapping[str, Any] | None = None, ttl: int | None = None,
                 time_col: str | None = None, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "python")
        self.columns = tuple(columns)
        self.output = output
        self.time_col = time_col
        self._spec = StateSpec(dict(state), dict(defaults or {}), ttl)

    def state_spec(self) -> StateSpec:
        return self._spec

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return self.output

    def process(self, batch: pa.RecordBatch, keys: pa.Array, block: StateBlock
                ) -> pa.RecordBatch:
        rows = batch.select(list(self.columns)).to_pylist()
        keys = keys.to_pylist()
        out: list[dict] = []
        for i, row in enumerate(rows):  # the teaching path: one Python call per row
            slot = block.slots[i]
            state = {name: (array[slot] if array.ndim > 1 else array[slot].item())
                     for name, array in block.arrays.items()}
            out.extend(self.fn(keys[i], row, state))
            for name, array in block.arrays.items():
                array[slot] = state[name]
        return pa.RecordBatch.from_pylist(out, schema=self.output)
