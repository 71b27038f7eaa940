"""DaskRunner: the same jobs on a Dask distributed cluster.

The :class:`JobManager` turns an optimized JobGraph into an :class:`ExecutionPlan`: every source
is split into partitions that workers read themselves (Parquet row groups, generator batch
ranges; an in-memory table is sliced, each slice sent with its task), reference tables of
``enrich`` are broadcast once to every worker, and each partition runs the whole stateless
pipeline as one task (an *agent* on a worker) through the same operators the LocalRunner
uses. Results and
metrics come back as Arrow tables and plain dicts, and are merged in partition order, so the
output rows are the same as a local run's, whatever the partition count.

Windows and keyed state (``key_by().process()``) run in stages around a hash exchange by
key, with the same output as a local run: see :mod:`.exchange`.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> stream = sl.Stream.from_table(pa.table({"a": list(range(100))})).filter(sl.col("a") >= 90)
>>> with DaskRunner(n_workers=1) as runner:  # doctest: +SKIP
...     result = stream.run(runner)
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import escape

import pandas as pd
import pyarrow as pa

from sabot_lab.dashboard import Dashboard, make_dashboard
from sabot_lab.ops.base import COUNTERS, OperatorMetrics
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.ops.sources import BatchesScan, CsvScan, ParquetScan, TableScan
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    STATELESS,
    Enrich,
    Fused,
    Node,
    Sink,
    Source,
    TopN,
    Union,
    Watermark,
    WindowAggregate,
)
from sabot_lab.reference import Table
from sabot_lab.result import Result
from sabot_lab.runtime.local import LocalRunner

__all__ = ["ClusterError", "DaskRunner", "ExecutionPlan", "JobManager", "PartitionTask",
           "SchedulerUnreachableError"]

log = logging.getLogger(__name__)

#: Default input per partition task (bytes of Arrow data): 10x the data makes 10x the
#: partitions, not 10x the memory per worker.
PARTITION_BYTES = 16 * 2**20


class SchedulerUnreachableError(ConnectionError):
    """The Dask scheduler did not answer."""


class ClusterError(RuntimeError):
    """The Dask cluster failed a job: the scheduler went away, or workers kept dying."""


# --- plan rewriting helpers (run on the client and on workers) ---------------------------

def _map_plan(node: Node, fn: Callable[[Node], Node]) -> Node:
    """Rebuild the plan bottom-up, applying ``fn`` to every node (and every fused stage)."""
    if isinstance(node, Fused):
        current = _map_plan(node.children[0], fn)
        for stage in node.stages:
            current = fn(stage.with_children((current,)))
        return Fused(current, node.depth)
    children = tuple(_map_plan(c, fn) for c in node.children)
    if any(a is not b for a, b in zip(children, node.children, strict=True)):
        node = node.with_children(children)
    return fn(node)


@dataclass(frozen=True)
class _ReferenceSlot:
    """Stands in for a reference table inside a task's plan; the data travels separately."""

    index: int
    key: tuple[str, ...]
    unique: bool
    schema: pa.Schema


@dataclass(frozen=True)
class _ScanSlot:
    """Stands in for a source's scan: the source with this index reads the task's partition."""

    index: int
    schema: pa.Schema

    def describe(self) -> str:
        return f"partition of source {self.index}"


def _template(graph: JobGraph) -> tuple[Node, list[Table], list[Source]]:
    """The plan without data: reference tables and scans replaced by slots."""
    references: list[Table] = []
    sources: list[Source] = []

    def strip(node: Node) -> Node:
        if isinstance(node, Enrich):
            references.append(node.reference)
            ref = node.reference
            slot = _ReferenceSlot(len(references) - 1, ref.key, ref.unique, ref.schema)
            return dataclasses.replace(node, reference=slot)
        if isinstance(node, Source):
            sources.append(node)
            return dataclasses.replace(node, scan=_ScanSlot(len(sources) - 1, node.scan.schema))
        return node

    root = _map_plan(graph.root.children[0], strip)
    return root, references, sources


def _instantiate(template: Node, source_index: int, scan: object,
                 references: tuple[pa.Table, ...]) -> Node:
    """Fill a template's slots: this task's scan, empty scans elsewhere, the references."""
    def fill(node: Node) -> Node:
        if isinstance(node, Enrich):
            slot = node.reference
            table = Table(references[slot.index], slot.key, unique=False)
            table.unique = slot.unique  # checked once on the client
            return dataclasses.replace(node, reference=table)
        if isinstance(node, Source):
            slot = node.scan
            own = scan if slot.index == source_index else TableScan(slot.schema.empty_table())
            return dataclasses.replace(node, scan=own)
        return node

    return _map_plan(template, fill)


# --- the task ------------------------------------------------------------------------------

def _run_partition(template: Node, source_index: int, partition: int, scan: object,
                   *references: pa.Table) -> dict:
    """One agent's work: run the pipeline over one partition (executes on a worker)."""
    from distributed import get_worker

    if isinstance(scan, pa.Table):
        scan = TableScan(scan)
    plan = _instantiate(template, source_index, scan, references)
    start = time.perf_counter()
    result = LocalRunner(threads=1).run(JobGraph(Sink(plan, CollectSink())))
    return {
        "table": result.table,
        "side_outputs": result.side_outputs,
        "metrics": [m.as_dict() for m in result.operator_metrics[:-1]],
        "worker": get_worker().address,
        "source": source_index,
        "partition": partition,
        "seconds": time.perf_counter() - start,
    }


# --- planning --------------------------------------------------------------------------------

@dataclass
class PartitionTask:
    """One partition of one source, and where and how it ran."""

    source: int
    partition: int
    description: str
    worker: str = ""
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0


@dataclass
class ExecutionPlan:
    """Stages, partitions and the agent (worker) that ran each; displays as a picture."""

    graph: JobGraph
    tasks: list[PartitionTask]
    broadcast: list[str]
    workers: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    #: For stateful jobs (windows, keyed state), the stages around the exchange by key
    #: (None: one stage).
    stateful: object = None

    def frame(self) -> pd.DataFrame:
        """One row per partition task."""
        return pd.DataFrame([dataclasses.asdict(t) for t in self.tasks])

    def agents(self) -> pd.DataFrame:
        """Per worker: tasks, rows in and out, seconds."""
        frame = self.frame()
        if frame.empty:
            return frame
        return frame.groupby("worker", as_index=False).agg(
            tasks=("partition", "count"), rows_in=("rows_in", "sum"),
            rows_out=("rows_out", "sum"), seconds=("seconds", "sum"))

    def __repr__(self) -> str:
        stages = "1 stage" if self.stateful is None else self.stateful.describe()
        lines = [f"ExecutionPlan: {stages}, {len(self.tasks)} partition tasks on "
                 f"{len(self.workers)} workers; broadcast: {', '.join(self.broadcast) or '-'}"]
        for t in self.tasks:
            lines.append(f"  source {t.source} partition {t.partition:>3} on {t.worker or '?'}: "
                         f"{t.description}, in={t.rows_in:,} out={t.rows_out:,}")
        return "\n".join(lines)

    def to_svg(self) -> str:
        """Workers as columns, their partition tasks as boxes (rows in → out)."""
        workers = self.workers or sorted({t.worker for t in self.tasks})
        col_w, box_h, gap = 230, 34, 8
        per_worker = {w: [t for t in self.tasks if t.worker == w] for w in workers}
        rows = max((len(v) for v in per_worker.values()), default=0)
        width, height = col_w * max(len(workers), 1) + 20, 70 + rows * (box_h + gap)
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               'font-family="monospace" font-size="11">',
               f'<text x="10" y="16" font-weight="bold">{escape(self.graph.root.label)} on '
               f"{len(workers)} workers, {len(self.tasks)} partitions</text>"]
        for i, w in enumerate(workers):
            x = 10 + i * col_w
            out.append(f'<g class="worker"><text x="{x}" y="40">{escape(w)}</text>')
            for j, t in enumerate(per_worker[w]):
                y = 50 + j * (box_h + gap)
                out.append(
                    f'<g class="task"><rect x="{x}" y="{y}" width="{col_w - 12}" height="{box_h}"'
                    f' rx="4" fill="#eef4fb" stroke="#2b4f7a"/><text x="{x + 6}" y="{y + 14}">'
                    f"src {t.source} part {t.partition}: {t.seconds * 1000:.0f} ms</text>"
                    f'<text x="{x + 6}" y="{y + 27}" fill="#555">{t.rows_in:,} → '
                    f"{t.rows_out:,} rows</text></g>")
            out.append("</g>")
        out.append("</svg>")
        return "".join(out)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None
                          ) -> dict[str, str]:
        return {"text/plain": repr(self), "image/svg+xml": self.to_svg()}


class JobManager:
    """Plans a job onto a Dask cluster and runs it.

    Parameters
    ----------
    client
        A connected ``distributed.Client``.
    partitions_per_worker
        Partitions each source is split into, per worker thread (at least).
    partition_bytes
        A source larger than this many bytes per partition (Arrow size in memory; for
        Parquet the uncompressed size of its row groups) is split into more partitions, so
        a worker holds about this much input per task whatever the size of the data.
    max_in_flight
        Partition tasks submitted but not finished at any time (backpressure); default two
        per worker thread.
    retries
        How often a task lost with a worker is re-run elsewhere.
    """

    def __init__(self, client: object, partitions_per_worker: int = 2,
                 max_in_flight: int | None = None, retries: int = 2,
                 partition_bytes: int = PARTITION_BYTES) -> None:
        self.client = client
        threads = sum(client.nthreads().values()) or 1
        self.n_partitions = max(1, partitions_per_worker * threads)
        self.partition_bytes = partition_bytes
        self.max_in_flight = max_in_flight or 2 * threads
        self.retries = retries

    def plan(self, graph: JobGraph) -> tuple[ExecutionPlan, Node, list, list[Table]]:
        """Split sources into partitions; return the plan, the task template, the partition
        scans (one list per source) and the reference tables to broadcast."""
        from sabot_lab.runtime.exchange import stateful_stages

        stages = stateful_stages(graph)
        scan_graph = JobGraph(Sink(stages.below, CollectSink())) if stages else graph
        for node in scan_graph.operators():
            if isinstance(node, Watermark | WindowAggregate | TopN):
                raise NotImplementedError(
                    f"the DaskRunner runs event-time operators on the job's main chain only "
                    f"(one watermark, one window); {node.label} is below a union")
            if not isinstance(node, (*STATELESS, Source, Union, Sink)):
                raise NotImplementedError(
                    f"the DaskRunner runs stateless plans; {node.label} needs a keyed exchange")
        template, references, sources = _template(scan_graph)
        scans = []
        tasks = []
        for i, source in enumerate(sources):
            scan = source.scan
            if isinstance(scan, BatchesScan):
                # Batches from an iterator exist only in this process: read them here, once.
                scan = TableScan(pa.Table.from_batches(list(scan.batches()), scan.schema))
            parts = [scan] if isinstance(scan, CsvScan) else scan.partitions(
                self.partitions_for(scan))
            scans.append(parts)
            tasks += [PartitionTask(i, p, part.describe()) for p, part in enumerate(parts)]
        workers = sorted(self.client.scheduler_info()["workers"])
        broadcast = [f"reference {list(r.key)} ({r.num_rows:,} rows)" for r in references]
        execution = ExecutionPlan(graph, tasks, broadcast, workers, stateful=stages)
        return execution, template, scans, references

    def partitions_for(self, scan: object) -> int:
        """How many partitions to split ``scan`` into: ``partitions_per_worker`` per worker
        thread, or more for a source larger than ``partition_bytes`` per partition."""
        if isinstance(scan, TableScan):
            size = scan.table.nbytes
        elif isinstance(scan, ParquetScan):
            size = sum(group.total_byte_size for fragment in scan.dataset.get_fragments()
                       for group in fragment.row_groups)
        else:  # generated batches: their size is known only once they are made
            return self.n_partitions
        return max(self.n_partitions, -(-size // self.partition_bytes))

    def submit_job(self, graph: JobGraph, monitor: Dashboard | None = None) -> Result:
        """Run ``graph`` on the cluster and return its :class:`~sabot_lab.result.Result`;
        ``monitor`` hears of every partition that comes back (with its counters), or for
        windows and keyed state, of every partition through the keyed stage."""
        from distributed import as_completed

        start = time.perf_counter()
        sink = graph.root
        execution, template, scans, references = self.plan(graph)
        planned = time.perf_counter()
        if execution.stateful is not None:
            from sabot_lab.runtime.exchange import submit_stateful_job

            table, side, metrics = submit_stateful_job(
                self, graph, execution.stateful, scans, template, references, execution,
                _run_partition, monitor)
            done = time.perf_counter()
            execution.timings.update(planning_ms=(planned - start) * 1000,
                                     execution_ms=(done - planned) * 1000)
            return Result(table=table, side_outputs={k: pa.concat_tables(v) for k, v in sorted(
                side.items())}, operator_metrics=metrics, execution_time_ms=(done - start) * 1000,
                executed_plan=graph, runner="dask", execution=execution)
        ref_futures = [self.client.scatter(r.data, broadcast=True, hash=True)
                       for r in references]

        def submissions() -> Iterator[tuple[int, object]]:
            for task_index, task in enumerate(execution.tasks):
                part = scans[task.source][task.partition]
                if isinstance(part, TableScan):
                    # The slice travels inside its task as a bare Arrow table (Arrow IPC), not
                    # scattered: a task lost with a worker is re-run, so its input must
                    # outlive the worker, and scattered data does not.
                    part = compact(part.table)
                future = self.client.submit(
                    _run_partition, template, task.source, task.partition, part,
                    *ref_futures, retries=self.retries, pure=False,
                    key=f"sabot-partition-{task.source}-{task.partition}-{id(execution)}",
                )
                yield task_index, future

        outputs: dict[int, dict] = {}
        pending = submissions()
        index_of = {}
        window = as_completed(loop=self.client.loop)
        writer = sink.target.open(sink.schema)
        written = 0
        try:
            for task_index, future in _take(pending, self.max_in_flight):
                index_of[future.key] = task_index
                window.add(future)
            for future in window:
                # Fetch straight from the worker that holds it, not relayed by the scheduler.
                done = outputs[index_of.pop(future.key)] = self.client.gather(future, direct=True)
                if monitor is not None:
                    monitor.partition_done(done["metrics"], done["table"].num_rows,
                                           len(outputs), len(execution.tasks))
                # Hand finished partitions to the sink in partition order, as soon as they
                # are contiguous, and let go of their tables (bounded memory for file sinks).
                while written in outputs:
                    out = outputs[written]
                    out["rows_out"] = out["table"].num_rows
                    for batch in out.pop("table").to_batches():
                        writer.write(batch)
                    written += 1
                for task_index, new in _take(pending, 1):
                    index_of[new.key] = task_index
                    window.add(new)
        except BaseException:
            writer.abort()
            for future in list(window.futures):
                future.cancel()
            raise
        executed = time.perf_counter()
        table = writer.close()
        metrics = self._metrics(graph, execution, outputs)
        side: dict[str, list[pa.Table]] = {}
        for i in sorted(outputs):
            for name, t in outputs[i]["side_outputs"].items():
                side.setdefault(name, []).append(t)
        done = time.perf_counter()
        execution.timings.update(planning_ms=(planned - start) * 1000,
                                 execution_ms=(executed - planned) * 1000,
                                 gather_ms=(done - executed) * 1000)
        return Result(
            table=table,
            side_outputs={k: pa.concat_tables(v) for k, v in sorted(side.items())},
            operator_metrics=metrics,
            execution_time_ms=(done - start) * 1000,
            executed_plan=graph,
            runner="dask",
            execution=execution,
        )

    def _metrics(self, graph: JobGraph, execution: ExecutionPlan, outputs: dict[int, dict]
                 ) -> list[OperatorMetrics]:
        ids = graph.node_ids()
        operators = graph.operators()
        merged = [OperatorMetrics(ids[id(n)], n.label) for n in operators]
        for i, out in outputs.items():
            task = execution.tasks[i]
            task.worker, task.seconds = out["worker"], out["seconds"]
            for m, row in zip(merged[:-1], out["metrics"], strict=True):
                m.add(**{k: row[k] for k in COUNTERS})
            task.rows_out = out["rows_out"]
            task.rows_in = sum(row["rows_in"] for row, n in zip(out["metrics"], operators,
                                                                strict=False)
                               if isinstance(n, Source))
        rows = sum(out["rows_out"] for out in outputs.values())
        merged[-1].add(rows_in=rows, rows_out=rows, batches_in=len(outputs))
        return merged


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


def quiet_large_graph_warning() -> None:
    """Dask warns when a task graph passes 10 MB; ours carry in-memory partitions on purpose
    (see above). The warning is raised from Dask's event loop, so the filter is global."""
    warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)


def _warm_worker(arrow_threads: int | None = None) -> None:
    """Import the engine and load its compiled kernels on a worker, once, at cluster start,
    so that the first job's timings are those of the job.

    ``arrow_threads`` caps Arrow's thread pool in the worker process: on a LocalCluster the
    workers share this machine's cores, and each pool sized for all of them oversubscribes it.
    """
    from sabot_lab.ops import lookup, windows  # noqa: F401 - imported for their side effect

    lookup._warm_up()
    if arrow_threads is not None:
        import pyarrow as pa

        pa.set_cpu_count(arrow_threads)


def _take(iterator: Iterator, n: int) -> list:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out


class DaskRunner:
    """Runs jobs on a Dask cluster: a ``Client``, a scheduler address, or a LocalCluster.

    Parameters
    ----------
    client_or_address
        A ``distributed.Client``, a scheduler address such as ``"tcp://127.0.0.1:8786"``, or
        ``None`` to start a ``LocalCluster`` on this machine (loopback only), closed again by
        :meth:`close`.
    n_workers, threads_per_worker
        Size of a LocalCluster this runner starts (default 2 × 1: this machine has 2 cores).
    partitions_per_worker
        Partitions per worker thread for each source (at least).
    partition_bytes
        More partitions for a source larger than this per partition (default 16 MiB of
        Arrow data), so a worker's memory follows this, not the size of the data.
    security
        A ``distributed.Security`` for TLS to a remote scheduler.
    timeout
        Seconds to wait for the scheduler before giving up.
    """

    name = "dask"

    def __init__(
        self,
        client_or_address: object = None,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        partitions_per_worker: int = 2,
        security: object = None,
        timeout: float = 10,
        partition_bytes: int = PARTITION_BYTES,
    ) -> None:
        from distributed import Client, LocalCluster

        self._owned: list = []
        start = time.perf_counter()
        arrow_threads = None  # a cluster we did not start keeps its own settings
        if isinstance(client_or_address, Client):
            self.client = client_or_address
        elif isinstance(client_or_address, str):
            if client_or_address.startswith("tls://") and security is None:
                raise ValueError(
                    f"the scheduler at {client_or_address} talks TLS: pass its certificates, "
                    f"DaskRunner(address, security=distributed.Security(tls_ca_file=..., "
                    f"tls_client_cert=..., tls_client_key=..., require_encryption=True))")
            try:
                self.client = Client(client_or_address, security=security, timeout=timeout)
            except OSError as exc:
                raise SchedulerUnreachableError(
                    f"no Dask scheduler answered at {client_or_address} within {timeout:g} s "
                    f"({exc}); start one with `dask scheduler`, check the address, or pass "
                    f"None to start a LocalCluster") from None
            self._owned.append(self.client)
        elif client_or_address is None:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                   silence_logs=logging.WARNING)
            self.client = Client(cluster)
            self._owned += [self.client, cluster]
            arrow_threads = max(1, threads_per_worker)
        else:
            raise TypeError("client_or_address must be a distributed.Client, an address "
                            f"string or None, got {type(client_or_address).__name__}")
        self.client.run(_warm_worker, arrow_threads)
        quiet_large_graph_warning()
        self._address = self.client.scheduler.address
        self.startup_ms = (time.perf_counter() - start) * 1000
        self.partitions_per_worker = partitions_per_worker
        self.partition_bytes = partition_bytes

    @property
    def dashboard_link(self) -> str:
        """The Dask dashboard of the cluster."""
        return self.client.dashboard_link

    def run(self, graph: JobGraph, dashboard: bool | Dashboard = False) -> Result:
        """Execute ``graph`` on the cluster.

        Raises :class:`ClusterError` when the cluster fails the job (the scheduler goes away,
        or a partition kills every worker that tries it, e.g. out of memory); the sink is
        then left unwritten (file sinks write a temporary file and remove it).
        ``dashboard`` (``True`` or a :class:`~sabot_lab.dashboard.Dashboard`) shows the run
        live: the Dask dashboard link, partitions done of all as they come back (with their
        counters for stateless jobs; through the keyed stage for windows and keyed state),
        and the final counters."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker
        from distributed.comm.core import CommClosedError

        monitor = make_dashboard(dashboard)
        if monitor is not None:
            monitor.start(graph, self.name, link=self.dashboard_link)
        manager = JobManager(self.client, self.partitions_per_worker,
                             partition_bytes=self.partition_bytes)
        result = None
        try:
            result = manager.submit_job(graph, monitor)
        except KilledWorker as exc:
            raise ClusterError(
                f"a task of this job killed every worker that ran it ({exc}): most likely a "
                f"partition too large for a worker's memory. Use more, smaller partitions "
                f"(DaskRunner(partitions_per_worker=...)), smaller batches, or workers with "
                f"more memory. The sink was not written.") from exc
        except (CommClosedError, CancelledError, OSError, TimeoutError) as exc:
            # Futures cancelled under the job (one, or a group) mean its client lost the
            # scheduler, even when it has reconnected since: the futures are gone.
            lost = isinstance(exc, CommClosedError | CancelledError)
            if self.client.status == "running" and not lost:
                raise  # an error of the job itself (e.g. a file a worker could not read)
            raise ClusterError(
                f"lost the Dask cluster during the job ({type(exc).__name__}: {exc}); the "
                f"sink was not written. Rerun when the scheduler "
                f"({self._address}) is back.") from exc
        finally:
            if monitor is not None:  # failed when no result came back
                monitor.finish(None if result is None else result.operator_metrics,
                               failed=result is None)
        result.execution.timings["cluster_start_ms"] = self.startup_ms
        return result

    def close(self) -> None:
        """Close the client and the cluster this runner started (not a client passed in)."""
        for thing in self._owned:
            thing.close()
        self._owned.clear()

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaskRunner({self.client.scheduler.address})"
