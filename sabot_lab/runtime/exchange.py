"""Stateful jobs on Dask: the plan cut into stages around a hash exchange by key.

A windowed job ``source … → with_watermark → … → window → … → [top_n → …] → sink`` runs as:

1. **pipeline** (one task per source partition, in parallel): everything below the
   watermark, exactly as a stateless job.
2. **watermark** (one tiny task per partition, in partition order): the watermark state
   (running maximum, previous row) after each partition, so that
3. **exchange** (one task per partition, in parallel) assigns every row the same per-row
   watermark as a local run that reads the partitions in order, sends bad clocks to
   ``rejected``, and splits the rows by a hash of the window's group keys.
4. **window** (one *step* per key range and partition): the window operator over its keys'
   rows of that partition, continuing from the state the previous step left (a snapshot,
   passed on like a checkpoint), and the stateless operators after it; a last step per key
   range flushes. Rows reach each key range in the original arrival order, and lateness is
   decided per row from the row's watermark, so each key range emits exactly the rows a
   local run emits for those keys. Partitions stream through (a bounded number in flight), so
   workers hold a few partitions and the state, not the whole input.
5. **client**: ``top_n`` (which ranks across all keys) and what follows it, into the sink.

A keyed-state job (``key_by(k).process(fn)``) has no watermark stage: rows are exchanged by
``k`` and each key range runs the process function step by step with the state of its keys,
seeing their rows in arrival order, so its output equals a local run's. A persistent store
(``state="rocksdict"``) is one per key range, ``<state_path>/range-00003``
(:func:`range_stores`): the ranges run at the same time, and a store opens in one process.

The merged watermark is the global one (the minimum over inputs is never needed: the
inputs are ordered). A lost task is recomputed from its inputs (every stage is a pure
function of its partition and, for a step, of the previous step's state), which is how a
killed worker is survived: stateful steps recover from the last state and replay their
partition.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Protocol

import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.ops.sources import TableScan
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    KeyedProcess,
    Node,
    Sink,
    Source,
    TopN,
    Union,
    Watermark,
    WindowAggregate,
)
from sabot_lab.reference import Table
from sabot_lab.runtime import tasks
from sabot_lab.runtime.execution import PartitionTask, StatefulStages, chain_ids
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.runtime.protocol import RunListener

__all__ = ["Submitter", "stateful_stages", "submit_stateful_job"]


def stateful_stages(graph: JobGraph) -> StatefulStages | None:
    """Cut ``graph`` for the DaskRunner, or ``None`` for a stateless job. Shapes the runner
    cannot distribute raise ``NotImplementedError`` naming the node."""
    chain: list[Node] = []
    node = graph.root.children[0]
    while not isinstance(node, Source | Union):
        chain.append(node)
        node = node.children[0]
    bottom = max((i for i, n in enumerate(chain) if isinstance(n, Watermark | KeyedProcess)),
                 default=None)
    if bottom is None:
        return None
    below = chain[bottom].children[0]
    ids = graph.node_ids()
    for n in JobGraph(Sink(below, CollectSink())).operators():
        if n.stateful:
            raise NotImplementedError(
                f"the DaskRunner runs one stateful stage per job, on its main chain; "
                f"{n.label} is below a union or below another stateful operator")
    above = chain[:bottom]
    for n in above:
        if not (n.stateless or n.stateful):
            raise NotImplementedError(f"the DaskRunner cannot distribute {n.label} yet")
    if isinstance(chain[bottom], KeyedProcess):
        if any(n.stateful for n in above):
            raise NotImplementedError(
                "the DaskRunner runs one stateful stage per job: windows or keyed state after "
                f"{chain[bottom].label} need an exchange of their own")
        reducer = tuple(chain[:bottom + 1])
        return StatefulStages(below, None, (), _detached(reducer), (), op_ids={
            "exchange": (), "reducer": chain_ids(ids, reducer),
            "client": (ids[id(graph.root)],)})
    windows = [i for i, n in enumerate(above) if isinstance(n, WindowAggregate)]
    if len(windows) > 1 or any(isinstance(n, Watermark | KeyedProcess) for n in above):
        raise NotImplementedError("the DaskRunner runs one window per job, after one watermark")
    tops = [i for i, n in enumerate(above) if isinstance(n, TopN)]
    cut_client = max(tops) + 1 if tops else 0
    cut_middle = windows[0] + 1 if windows else len(above)
    middle, reducer, client = (tuple(above[cut_middle:]), tuple(above[cut_client:cut_middle]),
                               tuple(above[:cut_client]))
    return StatefulStages(
        below=below, watermark=_detached((chain[bottom],))[0], middle=_detached(middle),
        reducer=_detached(reducer), client=client, op_ids={
            "exchange": chain_ids(ids, (*middle, chain[bottom])),
            "reducer": chain_ids(ids, reducer),
            "client": (*chain_ids(ids, client), ids[id(graph.root)])})


def _detached(chain: tuple[Node, ...]) -> tuple[Node, ...]:
    """The chain (top to bottom) on an empty source of its input's schema. Plan nodes hold
    their inputs down to the source, and a source holds its table: a chain sent with every
    task as it is would carry the whole input partitions x key ranges times."""
    if not chain:
        return chain
    node = tasks.rebase(chain, Source(TableScan(chain[-1].children[0].schema.empty_table())))
    out = []
    for _ in chain:
        out.append(node)
        node = node.children[0]
    return tuple(out)


# --- the job ---------------------------------------------------------------------------------

class Submitter(Protocol):
    """What a stateful job needs of its job manager (:class:`~sabot_lab.runtime.dask.
    JobManager`): the client, task submission, key ranges and backpressure."""

    client: Any
    n_partitions: int
    max_in_flight: int

    def submit(self, fn: Callable, *args: object, **kwargs: object) -> Any: ...


def submit_stateful_job(manager: Submitter, graph: JobGraph, stages: StatefulStages,
                        scans: list, template: Node, template_ids: tuple[str, ...],
                        references: list[Table], tasks_of: list[PartitionTask],
                        monitor: RunListener | None = None
                        ) -> tuple[pa.Table, dict, dict[str, OperatorMetrics]]:
    """Run the stages on ``manager.client``; returns (table, side outputs, metrics by the
    job's operator ids).
    ``monitor`` (a :class:`~sabot_lab.dashboard.Dashboard`) hears how many partitions are
    through the keyed stage.

    Partitions stream through: each one's rows are exchanged and handed to one step per key
    range as soon as they are ready, and at most ``manager.max_in_flight`` partitions are
    ahead of the key-range steps, so worker memory holds a few partitions and the state, not
    the whole input.
    """
    from distributed import wait

    client = manager.client
    submit = manager.submit
    ref_futures = [client.scatter(r.data, broadcast=True, hash=True) for r in references]
    n_ranges = manager.n_partitions if stages.keys else 1
    reducers = [tasks.range_stores(stages.reducer, r) for r in range(n_ranges)]
    empty = stages.reducer[-1].children[0].schema.empty_table()
    carry = None
    states: list[object] = [None] * n_ranges
    first_meta, split_meta, step_out = [], [], [[] for _ in range(n_ranges)]
    steps_of: list[list[object]] = []
    for k, task in enumerate(tasks_of):
        # In-memory slices travel inside their tasks, not scattered: a task lost with a
        # worker is recomputed, so its input must survive the worker (scattered data does
        # not). Only small results (metrics, states, outputs) are kept here: partition data
        # is released as soon as its steps have run.
        first = submit(tasks.run_partition, template, template_ids, task.source,
                       task.partition,
                       tasks.compacted(scans[task.source][task.partition]), *ref_futures)
        split = submit(tasks.exchange, first, carry, stages.watermark, stages.middle,
                       stages.keys, n_ranges, stages.op_ids["exchange"])
        if stages.watermark is not None:
            carry = submit(tasks.watermark_carry, first, carry, stages.watermark)
        first_meta.append(submit(tasks.without, first, "table"))
        split_meta.append(submit(tasks.without, split, "pieces"))
        steps = []
        for r in range(n_ranges):
            step = submit(tasks.key_range_step, reducers[r], stages.op_ids["reducer"],
                          states[r], submit(tasks.piece, split, r), False)
            states[r] = submit(operator.getitem, step, "state")
            step_out[r].append(submit(tasks.without, step, "state"))
            steps.append(step)
        steps_of.append(steps)
        if k >= manager.max_in_flight:  # backpressure: bounded partitions ahead of the state
            wait(steps_of[k - manager.max_in_flight])
            steps_of[k - manager.max_in_flight] = []
            if monitor is not None:
                monitor.partitions_through(k - manager.max_in_flight + 1, len(tasks_of))
    for r in range(n_ranges):
        step_out[r].append(submit(tasks.key_range_step, reducers[r],
                                  stages.op_ids["reducer"], states[r], empty, True))
    for done, steps in enumerate(steps_of, 1):
        if steps and monitor is not None:
            wait(steps)
            monitor.partitions_through(done, len(tasks_of))
    first_out = client.gather(first_meta, direct=True)
    split_out = client.gather(split_meta, direct=True)
    reduce_out = [out for outs in client.gather(step_out, direct=True) for out in outs]
    ids = graph.node_ids()
    sources = {ids[id(n)] for n in graph.operators() if isinstance(n, Source)}
    for task, out in zip(tasks_of, first_out, strict=True):
        task.worker, task.seconds, task.rows_out = out["worker"], out["seconds"], out["rows"]
        task.rows_in = sum(row["rows_in"] for op_id, row in out["metrics"].items()
                           if op_id in sources)
    merged = {ids[id(n)]: OperatorMetrics(ids[id(n)], n.label) for n in graph.operators()}
    side: dict[str, list[pa.Table]] = {}
    for out in (*first_out, *split_out, *reduce_out):
        for op_id, row in out["metrics"].items():
            merged[op_id].merge(row)
        for name, t in out["side_outputs"].items():
            side.setdefault(name, []).append(t)
    # One batch: top_n ranks each batch's windows, so a window must not be split.
    table = pa.concat_tables([out["table"] for out in reduce_out]).combine_chunks()
    source = Source(TableScan(table, batch_size=max(1, table.num_rows)))
    final = LocalRunner(threads=1).run(JobGraph(Sink(tasks.rebase(stages.client, source),
                                                     graph.root.target)))
    for op_id, row in tasks.labelled(final.operator_metrics[1:],
                                     stages.op_ids["client"]).items():
        merged[op_id].merge(row)
    for name, t in final.side_outputs.items():
        side.setdefault(name, []).append(t)
    return final.table, side, merged
