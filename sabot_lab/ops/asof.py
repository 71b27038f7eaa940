"""As-of enrichment: each event joined to the version of its key valid at the event's time.

Built once per versioned reference table (and process, see :func:`~sabot_lab.ops.enrich.
cached_index`): the versions sorted by ``valid_from`` and grouped by key, so that each key's
versions lie side by side in time order, and a key :class:`~sabot_lab.ops.lookup.Lookup`
that gives each stream row its key's group. Per batch, one numba pass binary-searches each
row's time among its key's versions: ``O(log versions per key)`` a row, no sort of the
stream, no Python per row.

A row is unmatched, with a reason, when its key is null or has no versions, its time is null,
it comes before its key's first version, or the version in force has expired (past its
``valid_to``, or older than the join's tolerance).

The versions may also arrive as a stream (:class:`StreamAsOfEnrichOp` over a
:class:`~sabot_lab.reference.VersionFeed`): then the index is rebuilt whenever the versions
read for a batch of events changed.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab import Table
>>> versions = Table(pa.table({"id": [1, 1, 2], "from": [0, 10, 5], "tier": ["a", "b", "x"]}),
...                  key="id", valid_from="from")
>>> index = AsOfIndex.build(versions.data, ["id"], "from", None)
>>> rows, reasons, nulls = index.probe([pa.array([1, 1, 1, 2, 3])],
...                                    pa.array([-1, 0, 12, 4, 7]), None)
>>> rows.tolist()
[-1, 0, 1, -1, -1]
>>> [REASONS[r] for r in reasons[rows < 0]]
["before the key's first version", "before the key's first version", 'no version of the key']
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics, SideOutputs
from sabot_lab.ops.enrich import EnrichOp, cached_index
from sabot_lab.ops.lookup import Lookup
from sabot_lab.ops.window.watermark import event_times
from sabot_lab.plan.nodes import WATERMARK_COLUMN, AsOfEnrich
from sabot_lab.reference import VersionFeed

__all__ = ["REASONS", "AsOfEnrichOp", "AsOfIndex", "StreamAsOfEnrichOp", "VersionBuffer",
           "materialize_versions", "time_values"]

MATCHED, NO_VERSIONS, NULL_TIME, BEFORE_FIRST, EXPIRED = range(5)
#: Why a row found no version, by the code :meth:`AsOfIndex.probe` gives it.
REASONS = ("matched", "no version of the key", "null time", "before the key's first version",
           "no version valid at that time")
_REASON_TEXT = np.asarray(REASONS, dtype=object)
#: The same for versions that arrive as a stream: no version at all, or none yet, is one.
_STREAMED_TEXT = np.asarray([*REASONS[:1], "no version of the key by the event's time",
                             REASONS[2], "no version of the key by the event's time",
                             REASONS[4]], dtype=object)
_OPEN = np.iinfo(np.int64).max


def time_values(array: pa.Array | pa.ChunkedArray, name: str = "time"
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """A time column as comparable int64 values and its validity (``None``: no nulls).

    Timestamps and dates become nanoseconds since the epoch; integers stay as they are (a
    time in the user's own unit). Null slots hold arbitrary values.

    >>> values, valid = time_values(pa.array([1, None], pa.timestamp("us")))
    >>> int(values[0]), valid.tolist()
    (1000, [True, False])
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    t = array.type
    try:
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            tz = t.tz if pa.types.is_timestamp(t) else None
            if t != pa.timestamp("ns", tz):
                array = array.cast(pa.timestamp("ns", tz))
            array = array.view(pa.int64())
        elif pa.types.is_integer(t):
            array = array.cast(pa.int64())
        else:
            raise TypeError(f"{name} column is {t}: an as-of join needs a timestamp, a date or "
                            f"an integer time")
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{name} column ({t}) does not fit 64-bit nanoseconds: {exc}") from None
    if not len(array):  # an empty array may have no data buffer
        return np.zeros(0, dtype=np.int64), None
    values = np.frombuffer(array.buffers()[1], dtype=np.int64,
                           count=array.offset + len(array))[array.offset:]
    valid = None if not array.null_count else array.is_valid().to_numpy(zero_copy_only=False)
    return values, valid


@numba.njit(nogil=True, cache=True)
def _as_of(groups, times, valid, check_valid, starts, counts, version_times, version_rows,
           until, tolerance, rows, reasons):  # pragma: no cover - numba
    """For each stream row: the reference row of the last version of its key (group) with a
    time at or before the row's, or -1 and why not."""
    for i in range(groups.shape[0]):
        rows[i] = -1
        g = groups[i]
        if g < 0:
            reasons[i] = 1
            continue
        if check_valid and not valid[i]:
            reasons[i] = 2
            continue
        t = times[i]
        lo = starts[g]
        a, b = lo, lo + counts[g]
        while a < b:  # first version later than t
            m = (a + b) >> 1
            if version_times[m] <= t:
                a = m + 1
            else:
                b = m
        if a == lo:
            reasons[i] = 3
            continue
        p = a - 1
        if until[p] <= t or (tolerance >= 0 and t - version_times[p] > tolerance):
            reasons[i] = 4
            continue
        rows[i] = version_rows[p]
        reasons[i] = 0


@dataclass(frozen=True)
class AsOfIndex:
    """The versions of a reference table, grouped by key and sorted by time within a key.

    ``lookup`` maps stream keys to groups; group ``g``'s versions are positions
    ``lookup.group_start[g]`` onwards (``lookup.group_count[g]`` of them) in ``times`` (their
    ``valid_from``), ``until`` (their ``valid_to``, int64 max when open) and ``rows`` (their
    rows in the reference table). Versions with a null key or ``valid_from`` are left out.
    """

    lookup: Lookup
    times: np.ndarray
    until: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, table: pa.Table, keys: list[str], valid_from: str,
              valid_to: str | None) -> AsOfIndex:
        """Index ``table``'s versions on ``keys``, in ``valid_from`` order."""
        starts, valid = time_values(table.column(valid_from), f"valid_from {valid_from!r}")
        kept = np.arange(table.num_rows) if valid is None else np.flatnonzero(valid)
        order = kept[np.argsort(starts[kept], kind="stable")]
        # Lookup groups rows of a key in table order: in time order, as the table is sorted.
        lookup = Lookup.build(table.select(keys).take(order), keys, unique=False)
        rows = order[lookup.group_rows]
        until = np.full(len(rows), _OPEN, dtype=np.int64)
        if valid_to is not None:
            ends, open_ended = time_values(table.column(valid_to), f"valid_to {valid_to!r}")
            closed = np.ones(table.num_rows, np.bool_) if open_ended is None else open_ended
            until = np.where(closed[rows], ends[rows], _OPEN)
        return cls(lookup, np.ascontiguousarray(starts[rows]), until, rows)

    def probe(self, keys: list[pa.Array], times: pa.Array, tolerance: int | None
              ) -> tuple[np.ndarray, np.ndarray, int]:
        """Per stream row: its version's reference row (``-1``: none), a reason code (see
        :data:`REASONS`; a null key counts as having no versions), and the null-key count."""
        groups, nulls = self.lookup.rows(keys)
        values, valid = time_values(times)
        rows = np.empty(len(groups), dtype=np.int64)
        reasons = np.empty(len(groups), dtype=np.int8)
        starts = self.lookup.group_start
        counts = self.lookup.group_count
        _as_of(groups, values, np.ones(0, np.bool_) if valid is None else valid,
               valid is not None, starts, counts, self.times, self.rows, self.until,
               -1 if tolerance is None else tolerance, rows, reasons)
        return rows, reasons, nulls


def build_index(node: AsOfEnrich) -> AsOfIndex:
    """The index of ``node``'s versioned table, built once per table and process."""
    ref = node.reference
    keys = [r for _, r in node.on]
    return cached_index(ref.data, ("as-of", tuple(keys), ref.valid_from, ref.valid_to),
                        lambda: AsOfIndex.build(ref.data, keys, ref.valid_from, ref.valid_to))


class AsOfEnrichOp(EnrichOp):
    """Executes an :class:`~sabot_lab.plan.nodes.AsOfEnrich` node."""

    node: AsOfEnrich

    def __init__(self, node: AsOfEnrich, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        self.index = build_index(node)
        super().__init__(node, metrics, side_outputs, lookup=self.index.lookup)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        found, reasons, nulls = self.index.probe(
            [batch.column(k) for k in self.keys], batch.column(self.node.as_of),
            self.node.tolerance)
        matched = found >= 0
        self.metrics.add(null_keys=nulls, unmatched=batch.num_rows - int(matched.sum()))
        if self.node.how == "left":
            return [self._assemble(batch, np.where(matched, found, 0), ~matched)]
        if matched.all():
            return [self._assemble(batch, found)]
        text = _STREAMED_TEXT if self.node.streamed else _REASON_TEXT
        side = self.node.unmatched_side_output
        self._leave(batch, matched, text[reasons[~matched]] if side else "")
        positions = np.flatnonzero(matched)
        return [self._assemble(batch.take(positions), found[positions])]


class VersionBuffer:
    """The versions of a :class:`~sabot_lab.reference.VersionFeed` read so far: the ones that
    count, the late ones set aside, and the versions watermark after them.

    :meth:`read_past` reads the feed until its watermark is past a time (every version that
    will ever count for an event up to that time is then in), and :meth:`table` is the
    versions that count, a later correction of a (key, ``valid_from``) replacing the earlier.
    """

    def __init__(self, feed: VersionFeed) -> None:
        self.feed = feed
        self.source = feed.batches()
        self.done = False
        self.kept: list[pa.RecordBatch] = []
        self.late: list[pa.RecordBatch] = []
        self.high: int | None = None  # largest valid_from read, in the watermark's unit
        self.changed = True

    @property
    def watermark(self) -> float:
        """The versions watermark after what was read, in the join's comparison unit."""
        if self.done:
            return float("inf")
        if self.high is None:
            return float("-inf")
        return float((self.high - self.feed.bound) * self.feed.per_unit)

    def read_past(self, time: float) -> None:
        """Read versions until the watermark is past ``time`` or the feed ends."""
        while self.watermark <= time:
            batch = next(self.source, None)
            if batch is None:
                self.done = True
                self._set_aside_rejected()
                return
            self._take(batch)

    def _set_aside_rejected(self) -> None:
        """Versions the versions stream itself set aside (a null ``valid_from``, a bad
        clock), with their reasons, among the late ones: none is lost."""
        side = getattr(self.source, "side_outputs", None)
        if side is None:
            return
        names = [*self.feed.schema.names, "reason"]
        for table in side.tables().values():
            if table.num_rows and set(names) <= set(table.column_names):
                self.late += table.select(names).cast(
                    self.feed.schema.append(pa.field("reason", pa.string()))).to_batches()

    def _take(self, batch: pa.RecordBatch) -> None:
        starts = event_times(batch.column(self.feed.valid_from))
        marks = batch.column(WATERMARK_COLUMN).to_numpy()
        late = starts < marks
        rows = batch.drop_columns([WATERMARK_COLUMN])
        if late.any():
            why = pa.array(np.full(int(late.sum()), "valid_from before the versions watermark",
                                   dtype=object), pa.string())
            self.late.append(rows.filter(pa.array(late)).append_column("reason", why))
            rows = rows.filter(pa.array(~late))
        if len(starts):
            top = int(starts.max())
            self.high = top if self.high is None else max(self.high, top)
        if rows.num_rows:
            self.kept.append(rows)
            self.changed = True

    def table(self) -> pa.Table:
        """The versions that count: the last one read of each (key, ``valid_from``)."""
        kept = pa.Table.from_batches(self.kept, schema=self.feed.schema)
        identity = [*self.feed.key, self.feed.valid_from]
        last = (kept.append_column("_row", pa.array(np.arange(kept.num_rows)))
                .group_by(identity, use_threads=False).aggregate([("_row", "max")]))
        rows = np.sort(last.column("_row_max").to_numpy())
        return kept.take(pa.array(rows)) if len(rows) < kept.num_rows else kept

    def late_table(self) -> pa.Table:
        schema = self.feed.schema.append(pa.field("reason", pa.string()))
        return pa.Table.from_batches(self.late, schema=schema)


def materialize_versions(feed: VersionFeed) -> tuple[pa.Table, pa.Table]:
    """Read the whole (bounded) feed: the versions that count, and the late ones."""
    buffer = VersionBuffer(feed)
    buffer.read_past(float("inf"))
    return buffer.table(), buffer.late_table()


class StreamAsOfEnrichOp(AsOfEnrichOp):
    """An as-of join whose versions arrive as a stream (a
    :class:`~sabot_lab.reference.VersionFeed`). A batch of events is joined once the
    versions watermark is past its latest event time: the versions read until then are all
    the versions that will ever count for it, so the rows do not depend on how the two
    streams' batches interleave. Runs serially: it reads the feed as events need it, and the
    rest of it at the end of the events (a feed that never ends suits a live job, which is
    stopped)."""

    parallel_safe = False

    def __init__(self, node: AsOfEnrich, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        EnrichOp.__init__(self, node, metrics, side_outputs)
        self.buffer = VersionBuffer(node.reference)
        self.late_seen = 0
        side_outputs.declare("late_versions", node.reference.schema.append(
            pa.field("reason", pa.string())))

    def _read_past(self, time: float) -> None:
        self.buffer.read_past(time)
        for late in self.buffer.late[self.late_seen:]:
            self.side_outputs.emit("late_versions", late)
        self.late_seen = len(self.buffer.late)

    def finish(self) -> list[pa.RecordBatch]:
        """The end of the events: the rest of the versions is read, so that every late
        version is reported (as a run on Dask, which reads them all first, does)."""
        self._read_past(float("inf"))
        return []

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        times, valid = time_values(batch.column(self.node.as_of))
        if valid is not None:
            times = times[valid]
        self._read_past(float(times.max()) if len(times) else float("-inf"))
        if self.buffer.changed:
            table = self.buffer.table()
            keys = [r for _, r in self.node.on]
            ref = self.node.reference
            self.index = AsOfIndex.build(table, keys, ref.valid_from, ref.valid_to)
            self.lookup = self.index.lookup
            self.ref_columns = self._reference_columns(table)
            self.buffer.changed = False
        return super().process(batch)
