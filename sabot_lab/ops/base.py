"""The physical operator protocol, per-operator metrics and side outputs.

Every operator turns ``pyarrow.RecordBatch`` into batches: ``process(batch) -> list[batch]``,
``on_watermark(ts) -> list[batch]`` and ``finish() -> list[batch]``. The runner counts rows in
and out and the time spent; the operator adds what only it knows (rows filtered, unmatched,
null keys, rows sent to a side output), so that for every operator

    rows_in == rows_out + rows_filtered + rows_side_output

(one-to-many joins aside, where ``rows_out`` counts every match; see ``rows_expanded``).

Examples
--------
>>> m = OperatorMetrics("1:filter", "Filter[...]")
>>> m.add(rows_in=10, rows_out=7, rows_filtered=3)
>>> m.balanced()
True
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import pyarrow as pa

from sabot_lab.plan.nodes import Node

__all__ = ["COUNTERS", "Operator", "OperatorMetrics", "SideOutputs", "finish_counted",
           "run_chain"]

COUNTERS = (
    "rows_in",
    "rows_out",
    "rows_filtered",
    "rows_side_output",
    "rows_expanded",
    "unmatched",
    "null_keys",
    "batches_in",
    "batches_out",
    "seconds",
    "rows_aggregated",
    "watermark_moves",
    "rows_watermark_stalled",
)


@dataclass
class OperatorMetrics:
    """Counters of one operator; safe to update from several threads."""

    op_id: str
    label: str
    rows_in: int = 0
    rows_out: int = 0
    rows_filtered: int = 0
    rows_side_output: int = 0
    rows_expanded: int = 0
    unmatched: int = 0
    null_keys: int = 0
    batches_in: int = 0
    batches_out: int = 0
    seconds: float = 0.0
    #: Input rows absorbed into aggregates (window operators; ``aggregates`` is then true).
    rows_aggregated: int = 0
    aggregates: bool = False
    #: The operator's current event-time watermark, in the time column's unit.
    watermark: int | None = None
    #: Batches after which its watermark had moved (the first value it takes counts).
    watermark_moves: int = 0
    #: Input rows in batches after which its watermark had not moved: when these are most
    #: rows, windows downstream cannot fire and their state grows until the input ends.
    rows_watermark_stalled: int = 0
    #: Keyed state held (keyed operators; summed over agents): keys and bytes.
    state_keys: int | None = None
    state_bytes: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        """Add to counters by name."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def note_watermark(self, before: int | None, rows: int) -> None:
        """After a batch of ``rows`` input rows, during which the watermark went from
        ``before`` to :attr:`watermark`: count a move, or the rows as stalled.

        >>> m = OperatorMetrics("1:watermark", "Watermark[...]")
        >>> for rows in (10, 10, 10):
        ...     before, m.watermark = m.watermark, 5  # a watermark stuck at 5
        ...     m.note_watermark(before, rows)
        >>> m.watermark_moves, m.rows_watermark_stalled
        (1, 20)
        """
        if self.watermark is None:
            return
        if self.watermark != before:
            self.add(watermark_moves=1)
        else:
            self.add(rows_watermark_stalled=rows)

    def merge(self, other: OperatorMetrics | Mapping[str, object]) -> None:
        """Add the counters of another run of this operator (a partition, a key range, a
        stage), or their :meth:`as_dict`: counters and state gauges add up; the watermark is
        the latest, since the parts are pieces of one stream in order and every row carries
        the stream's watermark.

        >>> a = OperatorMetrics("2:window", "Window", rows_in=3, watermark=10, state_keys=2)
        >>> a.merge({"rows_in": 4, "watermark": 25, "state_keys": 5, "aggregates": True})
        >>> a.rows_in, a.watermark, a.state_keys, a.aggregates
        (7, 25, 7, True)
        """
        row = other.as_dict() if isinstance(other, OperatorMetrics) else other
        self.add(**{name: row[name] for name in COUNTERS if name in row})
        self.aggregates = self.aggregates or bool(row.get("aggregates"))
        for gauge in ("state_keys", "state_bytes"):  # each key range holds its own keys
            if row.get(gauge) is not None:
                setattr(self, gauge, (getattr(self, gauge) or 0) + row[gauge])
        if row.get("watermark") is not None:
            self.watermark = row["watermark"] if self.watermark is None else max(
                self.watermark, row["watermark"])

    def balanced(self) -> bool:
        """Whether every input row is accounted for: out + filtered + side output (+ expanded);
        for aggregations, absorbed + filtered + side output (per window a row belongs to)."""
        if self.aggregates:
            return self.rows_in + self.rows_expanded == (
                self.rows_aggregated + self.rows_filtered + self.rows_side_output)
        accounted = self.rows_out - self.rows_expanded + self.rows_filtered + self.rows_side_output
        return self.rows_in == accounted

    def as_dict(self) -> dict[str, object]:
        """Counters as a plain dict (one metrics-table row)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


class SideOutputs:
    """Named side outputs (``late``, ``unmatched``, ``malformed``…), collected thread-safely."""

    def __init__(self) -> None:
        self._batches: dict[str, list[pa.RecordBatch]] = defaultdict(list)
        self._schemas: dict[str, pa.Schema] = {}
        self._lock = threading.Lock()

    def declare(self, name: str, schema: pa.Schema) -> None:
        """Announce a side output an operator may write, so that it shows up (empty) even
        when no row went to it."""
        with self._lock:
            self._schemas.setdefault(name, schema)

    def emit(self, name: str, batch: pa.RecordBatch) -> None:
        """Append rows to side output ``name``."""
        if batch.num_rows:
            with self._lock:
                self._batches[name].append(batch)

    def batches(self) -> dict[str, list[pa.RecordBatch]]:
        """The batches of every side output so far (a copy of the lists)."""
        with self._lock:
            return {name: list(b) for name, b in self._batches.items()}

    def schema(self, name: str) -> pa.Schema:
        """The schema of side output ``name``."""
        return self._schemas.get(name) or self._batches[name][0].schema

    def tables(self) -> dict[str, pa.Table]:
        """Every side output as one table."""
        names = sorted(set(self._batches) | set(self._schemas))
        return {name: pa.Table.from_batches(self._batches[name], schema=self._schemas.get(name))
                if self._batches.get(name) else self._schemas[name].empty_table()
                for name in names}


class Operator:
    """Base class: a stateless pass-through that subclasses specialise.

    Parameters
    ----------
    node
        The plan node this operator executes.
    metrics
        Where the operator adds its own counters.
    side_outputs
        Where rows that leave the main stream with a reason go.
    """

    #: Whether batches may be processed concurrently by several threads (stateless ops).
    parallel_safe = True
    #: Whether the operator keeps state across batches (it must then implement
    #: :meth:`snapshot` and :meth:`restore` to be checkpointed).
    stateful = False

    def __init__(self, node: Node, metrics: OperatorMetrics, side_outputs: SideOutputs) -> None:
        self.node = node
        self.metrics = metrics
        self.side_outputs = side_outputs

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Transform one batch."""
        return [batch]

    def on_watermark(self, timestamp: int) -> list[pa.RecordBatch]:
        """React to event time advancing to ``timestamp``."""
        return []

    def finish(self) -> list[pa.RecordBatch]:
        """Flush at the end of a bounded input."""
        return []

    def snapshot(self) -> bytes | None:
        """The operator's state as bytes (``None``: stateless)."""
        return None

    def restore(self, state: bytes) -> None:
        """Continue from a :meth:`snapshot`."""
        raise TypeError(f"{self.metrics.label} is stateless: there is nothing to restore")

    def state_size(self) -> tuple[int, int] | None:
        """The state held now, as (keys, bytes), for live views (``None``: none to show).
        Read-only, cheap enough to call between batches."""
        return None


def run_chain(ops: Sequence[Operator], batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Send ``batches`` through ``ops`` in order, counting rows, batches and time per operator.

    >>> op = Operator(None, OperatorMetrics("0:x", "x"), SideOutputs())
    >>> [b.num_rows for b in run_chain([op, op], [pa.record_batch({"a": [1, 2]})])]
    [2]
    >>> op.metrics.rows_in, op.metrics.batches_in
    (4, 2)
    """
    for op in ops:
        out: list[pa.RecordBatch] = []
        for batch in batches:
            start = time.perf_counter()
            watermark = op.metrics.watermark
            try:
                produced = op.process(batch)
            except Exception as exc:
                exc.add_note(f"raised in operator {op.metrics.op_id} {op.metrics.label}")
                raise
            op.metrics.add(rows_in=batch.num_rows, rows_out=sum(b.num_rows for b in produced),
                           batches_in=1, batches_out=len(produced),
                           seconds=time.perf_counter() - start)
            op.metrics.note_watermark(watermark, batch.num_rows)
            out.extend(b for b in produced if b.num_rows)
        batches = out
    return batches


def finish_counted(op: Operator) -> list[pa.RecordBatch]:
    """``op.finish()``, with the rows it flushes counted as its output."""
    start = time.perf_counter()
    produced = [b for b in op.finish() if b.num_rows]
    op.metrics.add(rows_out=sum(b.num_rows for b in produced), batches_out=len(produced),
                   seconds=time.perf_counter() - start)
    return produced
