"""LocalRunner: executes a JobGraph in this process, pulling batches through the operators.

A chain of operators between a source (or union) and the next union/sink is one *pipeline*:
each batch goes through the whole chain in one pass. When every operator of a pipeline is
stateless, batches are processed by a small thread pool (pyarrow kernels and the numba
lookup release the GIL) while the output order stays the input order.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> stream = sl.Stream.from_table(pa.table({"a": list(range(10))}), batch_size=3)
>>> LocalRunner(threads=2).run(stream.filter(sl.col("a") >= 5).graph()).table["a"].to_pylist()
[5, 6, 7, 8, 9]
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from sabot_lab.ops.base import (
    COUNTERS,
    Operator,
    OperatorMetrics,
    SideOutputs,
    finish_counted,
    run_chain,
)
from sabot_lab.ops.enrich import fuse_scan_filter_into_enrich
from sabot_lab.ops.fused import FusedOp
from sabot_lab.ops.keyed import KeyedProcessOp
from sabot_lab.ops.registry import make_operator
from sabot_lab.ops.snapshot import SnapshotError
from sabot_lab.ops.sources import ScanFilterOp, pushes_down, read_source
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import Fused, Node, Sink, Source, Union
from sabot_lab.result import Result
from sabot_lab.runtime.checkpoint import CheckpointError, Checkpoints, CheckpointSpec, Epoch
from sabot_lab.runtime.collect import collect_result
from sabot_lab.runtime.gcpause import paused as gc_paused
from sabot_lab.runtime.protocol import RunListener, StopSignal

__all__ = ["LocalRunner", "OperatorChain", "run_versions"]

log = logging.getLogger(__name__)

def _ordered_parallel_map(
    fn: Callable[[pa.RecordBatch], list[pa.RecordBatch]],
    items: Iterable[pa.RecordBatch],
    pool: ThreadPoolExecutor,
    max_in_flight: int,
) -> Iterator[pa.RecordBatch]:
    """``fn`` over ``items`` on ``pool`` in input order, with at most ``max_in_flight`` queued."""
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max_in_flight:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class _Execution:
    """The state of one run: operators, metrics and side outputs."""

    def __init__(self, graph: JobGraph, pool: ThreadPoolExecutor | None, threads: int) -> None:
        self.graph = graph
        self.pool = pool
        self.threads = threads
        self.side_outputs = SideOutputs()
        ids = graph.node_ids()
        self.metrics = {id(n): OperatorMetrics(ids[id(n)], n.label) for n in graph.operators()}
        self.operators: dict[int, Operator] = {}
        self.checkpoints: Checkpoints | None = None
        self.finish = True  # False: the end of the input is a pause (see LocalRunner.run)
        self.stop: StopSignal | None = None  # a live job's: read no more once it is asked
        self.positions: dict[str, int] = {}  # source op id -> batches delivered
        self.resume_positions: dict[str, int] = {}  # to skip, when resuming a checkpoint
        self.saved_metrics: dict[str, dict] = {}
        self.output_delta: list[pa.RecordBatch] = []  # written to the sink since a checkpoint
        for n in graph.nodes:
            if isinstance(n, Fused):
                stages = [self._operator(s) for s in n.stages]
                self.operators[id(n)] = FusedOp(n, stages, self.side_outputs)
            elif not isinstance(n, Source | Union | Sink):
                self.operators[id(n)] = self._operator(n)

    # --- checkpoints ---------------------------------------------------------------------

    def enable_checkpoints(self, checkpoints: Checkpoints, sink_schema: pa.Schema) -> Epoch | None:
        """Checkpoint this run; returns the epoch it resumes from, if any."""
        for op in self.by_id().values():
            if op.stateful and type(op).snapshot is Operator.snapshot:
                raise NotImplementedError(f"{op.metrics.label} cannot be checkpointed yet")
        self.checkpoints = checkpoints
        self.sink_schema = sink_schema
        operators = self.by_id()
        sources = {self.metrics[id(n)].op_id for n in self.graph.nodes if isinstance(n, Source)}
        epoch = checkpoints.load({op_id for op_id, op in operators.items() if op.stateful},
                                 sources)
        if epoch is not None:
            for op_id, state in epoch.states.items():
                try:
                    operators[op_id].restore(state)
                except (SnapshotError, ValueError, KeyError, TypeError, pa.ArrowException
                        ) as exc:
                    raise CheckpointError(
                        f"the state of {op_id} in {checkpoints.directory} cannot be restored: "
                        f"{exc}") from None
            self.positions = dict(epoch.positions)
            self.resume_positions = dict(epoch.positions)
            self.saved_metrics = epoch.metrics
            self.restore_metrics([m for m in self.metrics.values()
                                  if m.op_id not in self.positions])
            for name, tables in epoch.side_outputs.items():
                for table in tables:
                    for batch in table.to_batches():
                        self.side_outputs.emit(name, batch)
        self.side_marks = {name: len(b) for name, b in self.side_outputs.batches().items()}
        return epoch

    def restore_metrics(self, metrics: list[OperatorMetrics]) -> None:
        for m in metrics:
            saved = self.saved_metrics.get(m.op_id)
            if saved:
                for name in COUNTERS:
                    setattr(m, name, saved.get(name, 0))

    def checkpoint(self) -> None:
        """Write an epoch: nothing is in flight between two source batches (serial run)."""
        states = {op_id: op.snapshot() for op_id, op in self.by_id().items()}
        batches = self.side_outputs.batches()
        side = {name: (b[self.side_marks.get(name, 0):], self.side_outputs.schema(name))
                for name, b in batches.items()}
        self.checkpoints.write(
            dict(self.positions),
            {m.op_id: {name: getattr(m, name) for name in COUNTERS}
             for m in self.metrics.values()},
            {k: v for k, v in states.items() if v is not None}, self.output_delta,
            self.sink_schema, side)
        self.output_delta = []
        self.side_marks = {name: len(b) for name, b in batches.items()}

    def by_id(self) -> dict[str, Operator]:
        """Every operator (fused stages too) by its operator id."""
        out = {}
        for op in self.operators.values():
            for one in op.stages if isinstance(op, FusedOp) else (op,):
                out[one.metrics.op_id] = one
        return out

    def _operator(self, node: Node) -> Operator:
        return make_operator(node, self.metrics[id(node)], self.side_outputs)

    def source(self, node: Source) -> Iterator[pa.RecordBatch]:
        metrics = self.metrics[id(node)]
        batches = read_source(node, metrics, self.side_outputs)
        skip = self.resume_positions.pop(metrics.op_id, 0)
        for _ in range(skip):  # resuming: delivered before the checkpoint
            next(batches)
        if skip:
            self.restore_metrics([metrics])
        while True:
            if self.checkpoints is not None and self.checkpoints.due():
                self.checkpoint()
            if self.stop is not None and self.stop.requested:
                self.finish = self.stop.flush  # not flushed: only final rows come out
                return
            start = time.perf_counter()
            batch = next(batches, None)
            metrics.add(seconds=time.perf_counter() - start)
            if batch is None:
                return
            self.positions[metrics.op_id] = self.positions.get(metrics.op_id, 0) + 1
            yield batch

    def union(self, node: Union) -> Iterator[pa.RecordBatch]:
        metrics = self.metrics[id(node)]
        for child in node.inputs:
            for batch in self.stream(child):
                metrics.add(rows_in=batch.num_rows, rows_out=batch.num_rows,
                            batches_in=1, batches_out=1)
                yield batch

    def chain(self, node: Node) -> tuple[list[Operator], Node]:
        """The operators from ``node`` down to its base (source or union), in data-flow
        order, and that base."""
        chain: list[Operator] = []
        while id(node) in self.operators:
            chain.append(self.operators[id(node)])
            node = node.children[0]
        chain.reverse()
        return chain, node

    def stream(self, node: Node) -> Iterator[pa.RecordBatch]:
        """Batches produced by ``node``: its base (source or union) through its operator chain."""
        chain, node = self.chain(node)
        if isinstance(node, Source):
            base = self.source(node)
            if not pushes_down(node):
                chain.insert(0, ScanFilterOp(node, self.metrics[id(node)], self.side_outputs))
                chain = fuse_scan_filter_into_enrich(chain)
        else:
            base = self.union(node)
        if not chain:
            yield from base
            return

        def one_batch(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
            return run_chain(chain, [batch])

        parallel = self.pool is not None and all(op.parallel_safe for op in chain)
        if parallel:
            yield from _ordered_parallel_map(one_batch, base, self.pool, 2 * self.threads)
        else:
            for batch in base:
                yield from one_batch(batch)
        if self.finish:
            yield from _flush(chain)


def _flush(chain: list[Operator]) -> Iterator[pa.RecordBatch]:
    """The end of the input: every operator of ``chain`` flushed, its output through the
    operators after it (open windows fire)."""
    for i, op in enumerate(chain):
        yield from run_chain(chain[i + 1:], finish_counted(op))


class _VersionRun:
    """The batches of a plan run here one at a time, and its side outputs (a stream of
    versions read by an as-of join as its events need them)."""

    def __init__(self, graph: JobGraph) -> None:
        from sabot_lab.plan.optimizer import PlanOptimizer

        graph = PlanOptimizer().optimize(graph)
        self.execution = _Execution(graph, None, 1)
        self.side_outputs = self.execution.side_outputs
        self.batches = self.execution.stream(graph.root.children[0])

    def __iter__(self) -> _VersionRun:
        return self

    def __next__(self) -> pa.RecordBatch:
        return next(self.batches)


def run_versions(graph: JobGraph) -> _VersionRun:
    """The output of ``graph`` (its sink ignored) batch by batch, pulled as needed."""
    return _VersionRun(graph)


class OperatorChain:
    """The operators of a linear job (source, chain, sink), fed batch by batch from outside
    instead of pulled from the source: what a key-range agent on Dask holds for a whole job.

    Examples
    --------
    >>> import pyarrow as pa
    >>> import sabot_lab as sl
    >>> graph = sl.Stream.from_table(pa.table({"a": [0]}).slice(0, 0)).filter(
    ...     sl.col("a") > 1).graph()
    >>> chain = OperatorChain(graph)
    >>> [b.num_rows for b in chain.push([pa.record_batch({"a": [1, 2, 3]})])]
    [2]
    >>> [m.rows_in for m in chain.metrics]
    [3]
    """

    def __init__(self, graph: JobGraph) -> None:
        self.execution = _Execution(graph, None, 1)
        self.chain, _ = self.execution.chain(graph.root.children[0])
        self.side_outputs = self.execution.side_outputs
        #: The chain's operators' metrics in data-flow order (fused stages one by one).
        self.metrics = [self.execution.metrics[id(n)] for n in graph.operators()[1:-1]]

    def push(self, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
        """Run ``batches`` through the chain; returns what reaches its end."""
        return run_chain(self.chain, batches)

    def finish(self) -> list[pa.RecordBatch]:
        """The end of the input: flush every operator (open windows fire)."""
        return list(_flush(self.chain))

    def snapshot(self) -> dict[str, bytes]:
        """Every stateful operator's state, by operator id."""
        return {op_id: op.snapshot() for op_id, op in self.execution.by_id().items()
                if op.stateful}

    def restore(self, states: dict[str, bytes]) -> None:
        """Continue from a :meth:`snapshot` (the same operators, by operator id)."""
        operators = self.execution.by_id()
        for op_id, state in states.items():
            operators[op_id].restore(state)


class LocalRunner:
    """Runs a job in this process.

    Parameters
    ----------
    threads
        Worker threads for stateless pipelines (default: the number of CPUs, at most 4);
        1 runs everything in the calling thread.
    progress
        Show a progress bar (rows reaching the sink, rows/s) while running.
    """

    name = "local"

    def __init__(self, threads: int | None = None, progress: bool = False) -> None:
        self.threads = threads if threads is not None else min(os.cpu_count() or 1, 4)
        self.progress = progress

    def __repr__(self) -> str:
        return f"LocalRunner(threads={self.threads})"

    def run(self, graph: JobGraph, *, listener: RunListener | None = None,
            checkpoints: CheckpointSpec | None = None,
            restore: dict[str, bytes] | None = None, finish: bool = True,
            stop: StopSignal | None = None) -> Result:
        """Execute ``graph`` (whose root is a Sink) and return its :class:`Result`.

        ``listener`` (e.g. a :class:`~sabot_lab.dashboard.Dashboard`) hears the run as
        output reaches the sink. With ``checkpoints`` the run writes a checkpoint every
        ``checkpoints.every`` source batches (and runs in one thread), and resumes the one
        there when ``checkpoints.resume`` says so (see :mod:`sabot_lab.runtime.checkpoint`).
        ``restore`` maps operator ids (``graph.node_ids()`` values) to states from their
        ``snapshot()``, to continue where an earlier run stopped; ``finish=False`` treats the
        end of the input as a pause, not its end: stateful operators keep their state
        (windows stay open) and ``result.snapshots`` holds it, to continue with ``restore=``
        on more input. ``stop`` ends the run early when it is requested: no more source
        batches are read, those in flight finish (see :class:`StopSignal`)."""
        sink = graph.root
        if not isinstance(sink, Sink):
            raise TypeError(f"a job must end in a Sink, this one ends in {sink.label}")
        start = time.perf_counter()
        serial = self.threads <= 1 or checkpoints is not None
        pool = None if serial else ThreadPoolExecutor(self.threads)
        directory = None
        # No full garbage collection in the middle of a bounded stream; a live job may run
        # for hours, and the process must keep collecting meanwhile.
        with gc_paused() if stop is None else contextlib.nullcontext():
            try:
                execution = _Execution(graph, pool, self.threads)
                execution.finish = finish
                execution.stop = stop
                operators = execution.by_id()
                for op_id, state in (restore or {}).items():
                    operators[op_id].restore(state)
                epoch = None
                if checkpoints is not None:
                    directory = Checkpoints(checkpoints.directory, checkpoints.every,
                                            checkpoints.resume, graph.fingerprint())
                    epoch = execution.enable_checkpoints(directory, sink.schema)
                setup_ms = (time.perf_counter() - start) * 1000
                table = self._drain(execution, sink, epoch, listener)
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
                if directory is not None:
                    directory.close()
        log.info("local run finished in %.1f ms", (time.perf_counter() - start) * 1000)
        return collect_result(
            graph, self.name, start, table,
            {name: [t] for name, t in execution.side_outputs.tables().items()},
            {m.op_id: m for m in execution.metrics.values()},
            setup_ms=setup_ms,
            keyed_state={op_id: op.state for op_id, op in execution.by_id().items()
                         if isinstance(op, KeyedProcessOp)},
            snapshots={} if execution.finish else {op_id: op.snapshot() for op_id, op
                                                   in execution.by_id().items() if op.stateful},
        )

    def _drain(self, execution: _Execution, sink: Sink, epoch: Epoch | None,
               monitor: RunListener | None) -> pa.Table | None:
        metrics = execution.metrics[id(sink)]
        writer = sink.target.open(sink.schema)
        for table in epoch.outputs if epoch is not None else ():
            for batch in table.to_batches():  # committed before the checkpoint
                writer.write(batch)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(unit=" rows", unit_scale=True, desc="sabot_lab")
        live = [execution.metrics[id(n)] for n in execution.graph.operators()]
        if monitor is not None:
            monitor.start(execution.graph, self.name, state={
                op_id: op.state_size for op_id, op in execution.by_id().items() if op.stateful})
        try:
            for batch in execution.stream(sink.child):
                t0 = time.perf_counter()
                writer.write(batch)
                if execution.checkpoints is not None:
                    execution.output_delta.append(batch)
                metrics.add(rows_in=batch.num_rows, rows_out=batch.num_rows, batches_in=1,
                            seconds=time.perf_counter() - t0)
                if bar is not None:
                    bar.update(batch.num_rows)
                if monitor is not None:
                    monitor.update(live)
        except BaseException:
            writer.abort()
            if monitor is not None:
                monitor.finish(live, failed=True)
            raise
        finally:
            if bar is not None:
                bar.close()
        if monitor is not None:
            monitor.finish(live)
        return writer.close()
