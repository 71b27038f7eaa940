"""Session windows: per key, runs of rows less than a gap apart (Flink's event-time session
windows, without allowed lateness).

A row at ``t`` stands for the proto-window ``[t, t + gap)``; a session is a maximal run of
rows of one key whose proto-windows overlap it, from its smallest event time to its largest
plus ``gap``. Each row is decided in arrival order from the watermark before it (the
``_watermark`` column), so the results do not depend on batch sizes:

1. open sessions of the row's key that the watermark has reached (``end <= watermark``) are
   closed: emitted once, never changed or reopened;
2. a row with ``t + gap <= watermark`` is late: it goes to the ``late`` side output with its
   proto-window and ``late_by = watermark - (t + gap)``;
3. otherwise the row joins every open session of its key that it overlaps, merging them when
   it bridges several, or starts a new session.

At the end of each batch, every open session the batch's watermark has reached is closed;
``finish()`` closes the rest. Emitted rows have revision 0.

The per-row decisions are one numba kernel call per batch over the key ids, event times and
watermarks. Open sessions live in slot arrays (start, end, key, next) chained per key, with a
union-find parent for sessions merged during the batch; the kernel returns a session slot per
accepted row plus the slots closed and merged. The aggregates are then updated without a
Python loop: a session slot takes the place of the key in one row of
:class:`~sabot_lab.ops.window.aggregates.PartialAggregates`, merged sessions are folded together in
one vectorized call, and the closed sessions are read, emitted and cleared together.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> clicks = pa.table({"t": [0, 10, 50, 25, 200, 5], "user": ["a"] * 6})
>>> result = (sl.Stream.from_table(clicks, batch_size=2)
...           .with_watermark("t", unit="s", max_out_of_orderness="30s")
...           .window(sl.session("30s")).group_by("user").agg(n=sl.count()).run())
>>> result.table.select(["window_start", "window_end", "user", "n"]).to_pylist()
[{'window_start': 0, 'window_end': 80, 'user': 'a', 'n': 4},
 {'window_start': 200, 'window_end': 230, 'user': 'a', 'n': 1}]
>>> result.side_outputs["late"].select(["t", "window_end", "late_by"]).to_pylist()
[{'t': 5, 'window_end': 35, 'late_by': 135}]

The row at 25 bridged the sessions [0, 40) and [50, 80); the row at 5 came after the
watermark (170) had passed its proto-window's end.
"""

from __future__ import annotations

import builtins

import numba
import numpy as np
import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics, SideOutputs
from sabot_lab.ops.snapshot import SnapshotReader, in_range
from sabot_lab.ops.window.base import WindowOperator, sort_by_window_and_keys
from sabot_lab.ops.window.watermark import event_times
from sabot_lab.plan.nodes import WATERMARK_COLUMN, PlanError, WindowAggregate
from sabot_lab.plan.windows import to_unit

__all__ = ["SessionWindowOp"]

_END_OF_TIME = np.iinfo(np.int64).max
# counters: free slots on the stack, sessions closed and sessions merged away in this batch
_FREE, _CLOSED, _MERGED = 0, 1, 2
# arrays indexed by session slot (besides the free stack)
_PER_SLOT = ("nxt", "start", "end", "owner", "parent", "closed", "merged")


@numba.njit(inline="always")
def _close_key(k, head, nxt, end, watermark, closed, n_closed):  # pragma: no cover - numba
    """Unlink the open sessions of key ``k`` that ``watermark`` has reached, appending them
    to ``closed``; returns the new count of closed sessions."""
    previous, s = -1, head[k]
    while s >= 0:
        following = nxt[s]
        if end[s] <= watermark:
            if previous < 0:
                head[k] = following
            else:
                nxt[previous] = following
            closed[n_closed] = s
            n_closed += 1
        else:
            previous = s
        s = following
    return n_closed


@numba.njit(nogil=True, cache=True)
def _assign(key_ids, ts, wm, gap, first, head, nxt, start, end, owner, parent, free, counters,
            session, closed, merged):  # pragma: no cover - numba
    """Rows ``first:`` in arrival order: close, mark late (session -1), join/merge or open.

    Returns the index of the first row not handled: ``len(ts)`` when done, less when a new
    session needs a slot and the free stack is empty (grow the arrays and call again).
    """
    n_free, n_closed, n_merged = counters[_FREE], counters[_CLOSED], counters[_MERGED]
    for i in range(first, ts.shape[0]):
        k, t, w = key_ids[i], ts[i], wm[i]
        # 1. the watermark before this row closes the key's sessions it has reached
        n_closed = _close_key(k, head, nxt, end, w, closed, n_closed)
        # 2. late: its proto-window has ended
        if t + gap <= w:
            session[i] = -1
            continue
        # 3. join the overlapping open sessions (the first found absorbs the others)
        root, previous, s = -1, -1, head[k]
        while s >= 0:
            following = nxt[s]
            if t < end[s] and t + gap > start[s]:
                if root < 0:
                    root = s
                    previous = s
                else:
                    start[root] = min(start[root], start[s])
                    end[root] = max(end[root], end[s])
                    nxt[previous] = following
                    parent[s] = root
                    merged[n_merged] = s
                    n_merged += 1
            else:
                previous = s
            s = following
        if root < 0:
            if n_free == 0:
                counters[_FREE], counters[_CLOSED], counters[_MERGED] = (n_free, n_closed,
                                                                         n_merged)
                return i
            n_free -= 1
            root = free[n_free]
            start[root], end[root], owner[root], parent[root] = t, t + gap, k, root
            nxt[root] = head[k]
            head[k] = root
        else:
            start[root] = min(start[root], t)
            end[root] = max(end[root], t + gap)
        session[i] = root
    counters[_FREE], counters[_CLOSED], counters[_MERGED] = n_free, n_closed, n_merged
    return ts.shape[0]


@numba.njit(nogil=True, cache=True)
def _find(parent, s):  # pragma: no cover - numba
    root = s
    while parent[root] != root:
        root = parent[root]
    while parent[s] != root:
        up = parent[s]
        parent[s] = root
        s = up
    return root


@numba.njit(nogil=True, cache=True)
def _resolve(session, merged, parent, into):  # pragma: no cover - numba
    """Point every row, and every merged-away session, at the session it ended up in."""
    for i in range(session.shape[0]):
        if session[i] >= 0:
            session[i] = _find(parent, session[i])
    for j in range(merged.shape[0]):
        into[j] = _find(parent, merged[j])


@numba.njit(nogil=True, cache=True)
def _close_due(head, nxt, end, watermark, closed, counters):  # pragma: no cover - numba
    """Close the open sessions (of every key) that ``watermark`` has reached."""
    n_closed = counters[_CLOSED]
    for k in range(head.shape[0]):
        n_closed = _close_key(k, head, nxt, end, watermark, closed, n_closed)
    counters[_CLOSED] = n_closed


def _warm_up() -> None:
    """Load (or compile) the kernels before the first batch."""
    one = np.zeros(1, dtype=np.int64)
    _assign(one, one, one, 1, 0, np.full(1, -1), one.copy(), one.copy(), one.copy(),
            one.copy(), one.copy(), one.copy(), np.array([1, 0, 0]), one.copy(), one.copy(),
            one.copy())
    _resolve(one.copy(), one.copy(), one.copy(), one.copy())
    _close_due(np.full(1, -1), one, one, 0, one.copy(), np.zeros(3, dtype=np.int64))


def _check_sessions(reader: SnapshotReader, arrays: dict[str, np.ndarray], n_keys: int,
                    key_slots: int) -> None:
    """Refuse session slots that the kernels could not use safely: indices out of range, a
    free stack that overlaps the open sessions, or a key's chain that loops or is shared."""
    slots = len(arrays["start"])
    counters, free, head = arrays["counters"], arrays["free"], arrays["head"]
    reader.check(all(len(arrays[n]) == slots for n in (*_PER_SLOT, "free"))
                 and len(counters) == 3 and slots <= key_slots
                 and 0 <= counters[_FREE] <= slots and counters[_CLOSED] == 0
                 and 0 <= counters[_MERGED] <= slots and not (head[n_keys:] >= 0).any()
                 and in_range(free[:counters[_FREE]], 0, slots)
                 and in_range(head, -1, slots) and in_range(arrays["nxt"], -1, slots)
                 and in_range(arrays["owner"], 0, builtins.max(n_keys, 1))
                 and in_range(arrays["parent"], 0, builtins.max(slots, 1)),
                 "session slots out of range")
    seen = np.zeros(slots, dtype=np.bool_)
    seen[free[:counters[_FREE]]] = True
    reader.check(int(seen.sum()) == counters[_FREE], "a free session slot is listed twice")
    nxt, owner = arrays["nxt"].tolist(), arrays["owner"].tolist()
    for key, s in enumerate(head.tolist()):  # once per open session: restore only
        while s >= 0:
            reader.check(not seen[s] and owner[s] == key,
                         f"the open sessions of key {key} loop or overlap the free slots")
            seen[s] = True
            s = nxt[s]


class SessionWindowOp(WindowOperator):
    """Session-window aggregation per key; see the module docstring for the rules.

    Output schema, ``late`` side output and metrics are those of
    :class:`~sabot_lab.ops.window.fixed.WindowAggregateOp`. Memory is bounded by the open
    sessions: a closed or merged session's slot is cleared and reused.
    """

    kind = "session"

    def __init__(self, node: WindowAggregate, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        if node.allowed_lateness_ns:
            raise PlanError(f"{node.label}: allowed lateness is not supported for session "
                            f"windows; rows after the watermark go to the late side output "
                            f"(use with_watermark(..., allowed_lateness='0s'))")
        unit = node.time_unit
        self.gap = to_unit(node.window.gap_ns, unit)
        if self.gap < 1:
            raise PlanError(f"{node.label}: the session gap is below one {unit}, the unit "
                            f"of {node.time_col!r}")
        super().__init__(node, metrics, side_outputs)
        self.row = self.partials.new_row()  # one row: a session slot stands for the key
        self.head = np.full(0, -1, dtype=np.int64)  # per key id: first open session, or -1
        self.counters = np.zeros(3, dtype=np.int64)
        for name in (*_PER_SLOT, "free"):
            setattr(self, name, np.zeros(0, dtype=np.int64))
        _warm_up()

    def _grow(self) -> None:
        """Double the session slots; the new ones go on the free stack."""
        old = len(self.start)
        new = builtins.max(64, 2 * old)
        for name in _PER_SLOT:
            grown = np.zeros(new, dtype=np.int64)
            grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        n_free = int(self.counters[_FREE])
        free = np.zeros(new, dtype=np.int64)
        free[:n_free] = self.free[:n_free]
        free[n_free:n_free + new - old] = np.arange(new - 1, old - 1, -1)
        self.free = free
        self.counters[_FREE] = n_free + new - old
        self.partials.ensure_keys(new)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        n = batch.num_rows
        if not n:
            return []
        ts = event_times(batch.column(self.node.time_col))
        wm = batch.column(WATERMARK_COLUMN).to_numpy()
        key_ids = self.keys.encode(batch.select(list(self.node.keys)))
        if len(self.keys) > len(self.head):
            head = np.full(builtins.max(len(self.keys), 2 * len(self.head)), -1, np.int64)
            head[:len(self.head)] = self.head
            self.head = head
        self.counters[_CLOSED:] = 0
        session = np.empty(n, dtype=np.int64)
        done = 0
        while done < n:
            done = _assign(key_ids, ts, wm, self.gap, done, self.head, self.nxt, self.start,
                           self.end, self.owner, self.parent, self.free, self.counters,
                           session, self.closed, self.merged)
            if done < n:
                self._grow()
        merged = self.merged[:self.counters[_MERGED]].copy()
        into = np.empty_like(merged)
        _resolve(session, merged, self.parent, into)
        if len(merged):  # rare: rows that bridged sessions
            self.partials.merge_keys(self.row, into, merged)
            self.parent[merged] = merged
            self._release(merged)
        accepted = session >= 0
        n_late = n - int(accepted.sum())
        self.partials.accumulate(self.row, session, self.partials.prepare(batch),
                                 accepted if n_late else None)
        self.metrics.add(rows_aggregated=n - n_late)
        if n_late:
            self._side_output_late(batch, np.flatnonzero(~accepted), ts, wm)
        return self._close(self.advance(ts, wm))

    def own_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The session slots: chains per key, the free stack and the counters."""
        return {}, {f"slots.{name}": getattr(self, name)
                    for name in (*_PER_SLOT, "free", "head", "counters")}

    def load_own_state(self, reader: SnapshotReader) -> None:
        arrays = {name: reader.array(f"slots.{name}", np.int64)
                  for name in (*_PER_SLOT, "free", "head", "counters")}
        _check_sessions(reader, arrays, len(self.keys), self.partials.key_capacity)
        for name, array in arrays.items():
            setattr(self, name, array)

    def on_watermark(self, timestamp: int) -> list[pa.RecordBatch]:
        self.watermark = builtins.max(self.watermark, timestamp)
        return self._close(self.watermark)

    def state_size(self) -> tuple[int, int]:
        """Session slots in use (open sessions) and the bytes of their slots and partial
        aggregates."""
        arrays = sum(getattr(self, name).nbytes for name in (*_PER_SLOT, "free", "head"))
        return len(self.start) - int(self.counters[_FREE]), arrays + self.partials.nbytes

    def finish(self) -> list[pa.RecordBatch]:
        """End of a bounded input: every open session closes."""
        return self._close(_END_OF_TIME)

    def _close(self, watermark: int) -> list[pa.RecordBatch]:
        """Emit the sessions closed so far in this batch and those ``watermark`` reached."""
        if len(self.start):
            _close_due(self.head, self.nxt, self.end, watermark, self.closed, self.counters)
        slots = self.closed[:self.counters[_CLOSED]].copy()
        self.counters[_CLOSED] = 0
        if not len(slots):
            return []
        starts, ends = self.start[slots], self.end[slots]
        columns = {"window_start": pa.array(starts).cast(self.time_type),
                   "window_end": pa.array(ends).cast(self.time_type),
                   **dict(zip(self.node.keys, self.keys.values(self.owner[slots]),
                              strict=True)),
                   **self.partials.arrays(self.row, slots),
                   "revision": pa.array(np.zeros(len(slots), dtype=np.int32)),
                   "is_update": pa.array(np.zeros(len(slots), dtype=np.bool_))}
        self.partials.clear_keys(self.row, slots)
        self._release(slots)
        table = pa.table([columns[f.name].cast(f.type) for f in self.schema], schema=self.schema)
        return sort_by_window_and_keys(table, self.node.keys).combine_chunks().to_batches()

    def _release(self, slots: np.ndarray) -> None:
        """Put session slots back on the free stack."""
        n_free = int(self.counters[_FREE])
        self.free[n_free:n_free + len(slots)] = slots
        self.counters[_FREE] = n_free + len(slots)

    def _side_output_late(self, batch: pa.RecordBatch, rows: np.ndarray, ts: np.ndarray,
                          wm: np.ndarray) -> None:
        self.side_output_late(batch, rows, ts[rows], ts[rows] + self.gap, wm,
                              "the watermark had passed event time + gap: its session had "
                              "closed")
