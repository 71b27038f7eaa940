"""What runs on Dask workers: partition pipelines, exchanges and key-range steps.

The client (:mod:`.dask`, :mod:`.exchange`) plans a job and submits these functions; they
import nothing from the client side. A task's plan travels without its data: reference tables
and scans are *slots* (:class:`ReferenceSlot`, :class:`ScanSlot`) filled on the worker.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics, SideOutputs
from sabot_lab.ops.batches import table_batches
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.ops.sources import TableScan
from sabot_lab.ops.window import WatermarkOp
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    NO_WATERMARK,
    Enrich,
    KeyedProcess,
    Node,
    Sink,
    Source,
    Watermark,
)
from sabot_lab.reference import Table
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.runtime.partitioning import partition_ids, split_by_partition

__all__ = ["ExchangeSpec", "ReferenceSlot", "ScanSlot", "compact", "compacted",
           "exchange_to_agents", "instantiate", "labelled", "pipeline_to_agents",
           "range_stores", "rebase", "run_partition", "warm_worker", "watermark_carry"]


@dataclass(frozen=True)
class ReferenceSlot:
    """Stands in for a reference table inside a task's plan; the data travels separately."""

    index: int
    key: tuple[str, ...]
    unique: bool
    schema: pa.Schema
    valid_from: str | None = None
    valid_to: str | None = None


@dataclass(frozen=True)
class ScanSlot:
    """Stands in for a source's scan: the source with this index reads the task's partition."""

    index: int
    schema: pa.Schema

    def describe(self) -> str:
        return f"partition of source {self.index}"


def instantiate(template: Node, source_index: int, scan: object,
                 references: tuple[pa.Table, ...]) -> Node:
    """Fill a template's slots: this task's scan, empty scans elsewhere, the references."""
    def fill(node: Node) -> Node:
        if isinstance(node, Enrich):
            slot = node.reference
            table = Table(references[slot.index], slot.key, unique=False,
                          valid_from=slot.valid_from, valid_to=slot.valid_to)
            table.unique = slot.unique  # checked once on the client
            return dataclasses.replace(node, reference=table)
        if isinstance(node, Source):
            slot = node.scan
            own = scan if slot.index == source_index else TableScan(slot.schema.empty_table())
            return dataclasses.replace(node, scan=own)
        return node

    return template.map(fill)


# --- tasks ---------------------------------------------------------------------------------

def labelled(metrics: list[OperatorMetrics], op_ids: tuple[str, ...]) -> dict[str, dict]:
    """A stage's operator metrics under the job's operator ids (``op_ids``, in data-flow
    order, as :func:`~sabot_lab.runtime.execution.chain_ids` gives them)."""
    return {op_id: m.as_dict() for op_id, m in zip(op_ids, metrics, strict=True)}


def run_partition(template: Node, op_ids: tuple[str, ...], source_index: int, partition: int,
                  scan: object, *references: pa.Table) -> dict:
    """Run the pipeline over one partition (executes on a worker);
    metrics come back under the job's operator ids, ``op_ids``."""
    from distributed import get_worker

    if isinstance(scan, pa.Table):
        scan = TableScan(scan)
    plan = instantiate(template, source_index, scan, references)
    started = time.time()
    start = time.perf_counter()
    result = LocalRunner(threads=1).run(JobGraph(Sink(plan, CollectSink())))
    return {
        "table": result.table,
        "side_outputs": result.side_outputs,
        "metrics": labelled(result.operator_metrics[:-1], op_ids),
        "worker": get_worker().address,
        "source": source_index,
        "partition": partition,
        "seconds": time.perf_counter() - start,
        "started": started,
    }


def compact(table: pa.Table) -> pa.Table:
    """A copy of ``table`` in buffers of its own: a sliced table pickles (as task arguments
    are sent) with its parent's whole buffers, a compact one with its own rows only.

    >>> import pickle
    >>> big = pa.table({"a": range(100_000)})
    >>> len(pickle.dumps(compact(big.slice(0, 10)))) < 2_000 < len(pickle.dumps(big.slice(0, 10)))
    True
    """
    return pa.table({name: pa.concat_arrays([pa.array([], column.type), *column.chunks])
                     for name, column in zip(table.column_names, table.columns, strict=True)},
                    schema=table.schema)


def warm_worker(arrow_threads: int | None = None) -> None:
    """Import the engine and load its compiled kernels on a worker, once, at cluster start,
    so that the first job's timings are those of the job.

    ``arrow_threads`` caps Arrow's thread pool in the worker process: on a LocalCluster the
    workers share the machine's cores, and each pool sized for all of them oversubscribes it.
    """
    from sabot_lab.ops import lookup, window  # noqa: F401 - imported for their side effect

    lookup._warm_up()
    if arrow_threads is not None:
        import pyarrow as pa

        pa.set_cpu_count(arrow_threads)


def rebase(chain: tuple[Node, ...], bottom: Node) -> Node:
    """The chain (listed top to bottom) rebuilt on a new bottom input."""
    current = bottom
    for node in reversed(chain):
        current = node.with_children((current,))
    return current


def range_stores(chain: tuple[Node, ...], r: int) -> tuple[Node, ...]:
    """The chain for key range ``r``: a persistent keyed store (``state="rocksdict"``) moves
    to a directory of its own under its ``state_path``, ``<state_path>/range-00003``.

    Every key range runs its steps at the same time as the others, and a RocksDB store
    takes one process at a time: one store per range, never shared. A memory store stays.

    >>> import sabot_lab as sl
    >>> from sabot_lab.patterns.fraud import detect_fraud
    >>> node = detect_fraud(sl.Stream.from_table(pa.table({
    ...     "account_id": [1], "txn_id": [1], "ts": pa.array([0], pa.timestamp("ms")),
    ...     "amount": [1.0], "lat": [0.0], "lon": [0.0]})),
    ...     state="rocksdict", state_path="/tmp/fraud").node
    >>> range_stores((node,), 3)[0].state_path
    '/tmp/fraud/range-00003'
    """
    return tuple(_range_store(node, r) for node in chain)


def _range_store(node: Node, r: int) -> Node:
    if not isinstance(node, KeyedProcess) or node.state == "memory" or not node.state_path:
        return node
    return dataclasses.replace(node, state_path=str(Path(node.state_path) / f"range-{r:05d}"))


def _source(table: pa.Table) -> Source:
    return Source(TableScan(table))


def _stage_output(result: object, op_ids: tuple[str, ...]) -> dict:
    """What a stage task returns: table, side outputs and its operators' metrics under the
    job's ids (the stage's own source and sink are not the job's)."""
    return {"table": result.table, "side_outputs": result.side_outputs,
            "metrics": labelled(result.operator_metrics[1:-1], op_ids)}


def watermark_carry(stage1: dict, state: bytes | None, watermark: Watermark) -> bytes:
    """The watermark state after this partition, given the state before it."""
    table = stage1["table"]
    node = watermark.with_children((_source(table.select([watermark.time_col]).slice(0, 0)),))
    op = WatermarkOp(node, OperatorMetrics("", ""), SideOutputs())
    if state is not None:
        op.restore(state)
    for batch in table.select([watermark.time_col]).to_batches():
        op.process(batch)
    return op.snapshot()


@dataclass(frozen=True)
class ExchangeSpec:
    """What an exchange task does after the partition's pipeline: the watermark (``None``
    for keyed state), the stateless operators up to the window (``middle``, top to bottom),
    the keys rows are split by, and the job's operator ids of the watermark and middle."""

    watermark: Watermark | None
    middle: tuple[Node, ...]
    keys: tuple[str, ...]
    n_ranges: int
    op_ids: tuple[str, ...]


def pipeline_to_agents(template: Node, op_ids: tuple[str, ...], source_index: int,
                       partition: int, scan: object, spec: ExchangeSpec, agents: list,
                       *references: pa.Table) -> dict:
    """One partition from its source to the key-range agents in one task: its pipeline,
    its watermarks (from this partition alone: the agents raise them by what came before,
    see :func:`~sabot_lab.runtime.agent.with_watermark_floor`), the exchange and the push."""
    stage1 = run_partition(template, op_ids, source_index, partition, scan, *references)
    return exchange_to_agents(stage1, None, spec, agents, partition)


def exchange_to_agents(stage1: dict, state: bytes | None, spec: ExchangeSpec, agents: list,
                       partition: int) -> dict:
    """Watermarks for this partition's rows (continuing from ``state``, the watermark state
    after the partitions before it, when given), the stateless operators up to the window,
    and each key range's rows pushed to its agent. Returns the stage's metrics and side
    outputs (merged with the pipeline's when ``stage1`` ran in this task), never the rows."""
    from distributed import get_worker

    start = time.time()
    bottom = _source(stage1["table"])
    if spec.watermark is not None:
        bottom = spec.watermark.with_children((bottom,))
    graph = JobGraph(Sink(rebase(spec.middle, bottom), CollectSink()))
    restore = None
    if state is not None and spec.watermark is not None:
        restore = {graph.node_ids()[id(bottom)]: state}
    result = LocalRunner(threads=1).run(graph, restore=restore, finish=False)
    carry = NO_WATERMARK
    if spec.watermark is not None:
        carry = int(np.frombuffer(result.snapshots[graph.node_ids()[id(bottom)]],
                                  dtype=np.int64)[0])
    out = _stage_output(result, spec.op_ids)
    pieces = _split(out.pop("table").combine_chunks(), spec.keys, spec.n_ranges)
    here = get_worker().state.actors
    acks = [here[agent.key].push_here(partition, piece, carry) if agent.key in here
            else agent.push(partition, piece, carry)
            for agent, piece in zip(agents, pieces, strict=True)]
    _wait_seceded(acks)
    metrics = dict(stage1.get("metrics", {}))
    metrics.update(out["metrics"])
    side = dict(stage1.get("side_outputs", {}))
    for name, table in out["side_outputs"].items():
        side[name] = pa.concat_tables([side[name], table]) if name in side else table
    return {"metrics": metrics, "side_outputs": side, "partition": partition,
            "worker": stage1.get("worker"), "seconds": stage1.get("seconds", 0.0),
            "rows": stage1["table"].num_rows, "started": stage1.get("started", start),
            "ended": time.time(), "bytes_pushed": [p.nbytes for p in pieces],
            "bytes_remote": sum(p.nbytes for agent, p in zip(agents, pieces, strict=True)
                                if agent.key not in here)}


def _wait_seceded(acks: list) -> None:
    """Wait for the agents' answers with this task's thread handed back to the worker: a
    restarted agent is created on a worker thread, and must not wait for a task that waits
    for a lost agent."""
    from distributed import rejoin, secede

    secede()
    try:
        for ack in acks:
            ack.result()
    finally:
        rejoin()


def _split(table: pa.Table, keys: tuple[str, ...], n_ranges: int) -> list[pa.Table]:
    """``table``'s rows by key range (in arrival order within each)."""
    pieces: list[list[pa.RecordBatch]] = [[] for _ in range(n_ranges)]
    for batch in table_batches(table):  # one, unless a column is over 2 GiB
        ranges = partition_ids(batch, keys, n_ranges) if keys \
            else np.zeros(batch.num_rows, dtype=np.int64)
        for r, part in enumerate(split_by_partition(batch, ranges, n_ranges)):
            pieces[r].append(part)
    return [pa.Table.from_batches(p, table.schema) for p in pieces]


def compacted(scan: object) -> object:
    """A scan as a task argument: an in-memory slice as a compact table of its own (a bare
    table: Arrow IPC on the wire; :func:`run_partition` makes it a scan again)."""
    return compact(scan.table) if isinstance(scan, TableScan) else scan
