"""Key-range agents: long-lived owners of a stateful job's key ranges on Dask workers.

An agent is a Dask actor pinned to one worker for a whole job. It holds the stateful
operators of its key range (windows, keyed state; a persistent store of its own) in memory,
receives its rows of every partition pushed by the exchange tasks, and processes them in
partition order, whatever order they arrive in: a piece that arrives early waits in its
inbox, a piece it has already processed (a replay after a failure) is ignored.

Every ``every`` partitions it takes a *cut*: the state of its operators, the output and side
output rows since the previous cut and its counters, aligned on a partition boundary (like
Flink's barriers). The job manager collects the cuts of all agents at the same boundary into
a consistent checkpoint; an agent lost with its worker starts again elsewhere from the last
one, and the partitions after it are replayed.

Its methods are coroutines that run the work on a thread of the agent's own: the worker's
event loop stays free to receive pushes, and agents on one worker do not wait for each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sabot_lab.ops.batches import table_batches
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.ops.sources import TableScan
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import NO_WATERMARK, WATERMARK_COLUMN, Node, Sink, Source
from sabot_lab.runtime.local import OperatorChain
from sabot_lab.runtime.tasks import rebase

__all__ = ["AgentCut", "KeyRangeAgent", "with_watermark_floor"]


@dataclass
class AgentCut:
    """What an agent hands over at a partition boundary: enough to start it again there.

    ``states`` are its operators' snapshots; ``output`` and ``side_outputs`` the rows made
    since the previous cut; ``metrics`` its operators' counters so far (``as_dict`` rows by
    operator id); ``carry`` the largest event time of the partitions before the boundary
    (for the watermark of the next one)."""

    position: int
    states: dict[str, bytes]
    carry: int
    metrics: dict[str, dict]
    output: pa.Table | None = None
    side_outputs: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def state_bytes(self) -> int:
        """Bytes of the operators' state."""
        return sum(len(s) for s in self.states.values())


def with_watermark_floor(table: pa.Table, floor: int) -> pa.Table:
    """``table`` with its watermark column raised to at least ``floor``.

    An exchange task assigns watermarks from its own partition only; the rows of earlier
    partitions raise them (the watermark is a running maximum), which the agent, seeing
    every partition in order, knows.

    >>> t = pa.table({"_watermark": [NO_WATERMARK, 5, 20]})
    >>> with_watermark_floor(t, 10)["_watermark"].to_pylist()
    [10, 10, 20]
    """
    if floor == NO_WATERMARK or not table.num_rows:
        return table
    column = table.column(WATERMARK_COLUMN)
    raised = np.maximum(column.to_numpy(), np.int64(floor))
    return table.set_column(table.schema.get_field_index(WATERMARK_COLUMN),
                            WATERMARK_COLUMN, pa.array(raised))


class KeyRangeAgent:
    """The owner of key range ``key_range`` for one job (a Dask actor).

    Parameters
    ----------
    reducer
        The stateful chain (top to bottom) on an empty source of its input's schema.
    op_ids
        The job's operator ids of the chain's operators, in data-flow order: states,
        counters and cuts are reported under them.
    key_range
        Which range of keys it owns.
    every
        Partitions between two cuts.
    bound
        The watermark's bound on out-of-orderness (in the time column's unit) when the agent
        raises the watermarks the exchange assigned (see :func:`with_watermark_floor`);
        ``None`` when they are final already.
    cut
        The cut to start from (``None``: the beginning of the input).
    """

    def __init__(self, reducer: tuple[Node, ...], op_ids: tuple[str, ...], key_range: int,
                 every: int, bound: int | None, cut: AgentCut | None = None) -> None:
        source = Source(TableScan(reducer[-1].children[0].schema.empty_table()))
        self.chain = OperatorChain(JobGraph(Sink(rebase(reducer, source), CollectSink())))
        self.job_ids = dict(zip((m.op_id for m in self.chain.metrics), op_ids, strict=True))
        self.own_ids = {job: own for own, job in self.job_ids.items()}
        self.key_range = key_range
        self.every = every
        self.bound = bound
        self.next = 0
        self.final: dict | None = None
        self.carry = NO_WATERMARK
        self.inbox: dict[int, tuple[pa.Table, int]] = {}
        self.cuts: dict[int, AgentCut] = {}
        self.output: list[pa.RecordBatch] = []
        self.side_marks: dict[str, int] = {}
        self.counts = {"rows_in": 0, "bytes_in": 0, "rows_out": 0, "bytes_out": 0,
                       "busy_seconds": 0.0}
        if cut is not None:
            self.chain.restore({self.own_ids[k]: v for k, v in cut.states.items()})
            by_id = {m.op_id: m for m in self.chain.metrics}
            for op_id, row in cut.metrics.items():
                by_id[self.own_ids[op_id]].merge(row)
            self.next, self.carry = cut.position, cut.carry
        #: Cuts are taken every ``every`` partitions from here, at the same boundaries as
        #: the other agents' (they all start at the same cut).
        self.start = self.next
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"sabot-agent-{key_range}")

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def push(self, partition: int, piece: pa.Table, carry: int) -> int:
        """Deliver this range's rows of ``partition`` and the largest event time of the whole
        partition; returns the number of partitions processed so far."""
        return await self._run(self._push, partition, piece, carry)

    def push_here(self, partition: int, piece: pa.Table, carry: int) -> Future:
        """:meth:`push` from a task on the agent's own worker: the piece is handed over in
        memory, not serialized through the worker's own connection."""
        return self._pool.submit(self._push, partition, piece, carry)

    async def take_cut(self, position: int) -> AgentCut | None:
        """The cut at ``position`` (handed over once), or ``None`` if not reached yet."""
        return self.cuts.pop(position, None)

    async def finish(self, partitions: int, flush: bool = True) -> dict:
        """The end of the input (``partitions`` in all): flush (unless a stopped job asks not
        to: only final rows then), and return what is left."""
        return await self._run(self._finish, partitions, flush)

    async def ping(self) -> int:
        """Partitions processed so far: an answer says the agent is alive."""
        return self.next

    def _push(self, partition: int, piece: pa.Table, carry: int) -> int:
        if partition >= self.next and partition not in self.inbox:  # else: a replay
            self.inbox[partition] = (piece, carry)
            while self.next in self.inbox:
                self._process(*self.inbox.pop(self.next))
                self.next += 1
                if (self.next - self.start) % self.every == 0:
                    self.cuts[self.next] = self._cut()
        return self.next

    def _process(self, piece: pa.Table, carry: int) -> None:
        start = time.perf_counter()
        if self.bound is not None:
            floor = NO_WATERMARK if self.carry == NO_WATERMARK else self.carry - self.bound
            piece = with_watermark_floor(piece, floor)
            self.carry = max(self.carry, carry)
        self.counts["rows_in"] += piece.num_rows
        self.counts["bytes_in"] += piece.nbytes
        self.output += self.chain.push(list(table_batches(piece)))
        self.counts["busy_seconds"] += time.perf_counter() - start

    def _deltas(self) -> tuple[pa.Table | None, dict[str, pa.Table]]:
        """Output and side-output rows since the previous cut (and forget them here)."""
        output = pa.Table.from_batches(self.output) if self.output else None
        self.counts["rows_out"] += 0 if output is None else output.num_rows
        self.counts["bytes_out"] += 0 if output is None else output.nbytes
        self.output = []
        side = {}
        for name, batches in self.chain.side_outputs.batches().items():
            new = batches[self.side_marks.get(name, 0):]
            if new:
                side[name] = pa.Table.from_batches(new)
            self.side_marks[name] = len(batches)
        return output, side

    def _cut(self) -> AgentCut:
        output, side = self._deltas()
        states = {self.job_ids[k]: v for k, v in self.chain.snapshot().items()}
        return AgentCut(self.next, states, self.carry, self._metrics(), output, side)

    def _metrics(self) -> dict[str, dict]:
        return {self.job_ids[m.op_id]: m.as_dict() for m in self.chain.metrics}

    def _finish(self, partitions: int, flush: bool = True) -> dict:
        """Flush once; asked again (the job recovering another agent lost meanwhile), the
        same answer: the rows flushed are not made twice, nor lost."""
        if self.final is not None:
            return self.final
        if self.next != partitions:
            raise RuntimeError(f"key range {self.key_range} processed {self.next} of "
                               f"{partitions} partitions; {sorted(self.inbox)} wait in its "
                               f"inbox")
        start = time.perf_counter()
        if flush:
            self.output += self.chain.finish()
        self.counts["busy_seconds"] += time.perf_counter() - start
        output, side = self._deltas()
        for name, table in self.chain.side_outputs.tables().items():  # declared, even empty
            side.setdefault(name, table.schema.empty_table())
        self.final = {"output": output, "side_outputs": side, "metrics": self._metrics(),
                      "counts": dict(self.counts)}
        return self.final
