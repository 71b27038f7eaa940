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
key (:mod:`.exchange`): each key range is owned by a long-lived agent on one worker, which the
partitions push their rows to, with checkpoints to recover a lost worker from (see
:mod:`.stateful_job`); the output is the same as a local run's.

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
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError

import pyarrow as pa

from sabot_lab.errors import ClusterError, SchedulerUnreachableError
from sabot_lab.ops.asof import materialize_versions
from sabot_lab.ops.base import OperatorMetrics
from sabot_lab.ops.sinks import CollectSink
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    AsOfEnrich,
    Enrich,
    Node,
    PlanError,
    Sink,
    Source,
    TopN,
    Union,
    Watermark,
    WindowAggregate,
)
from sabot_lab.reference import Table, VersionFeed
from sabot_lab.result import Result
from sabot_lab.runtime import tasks
from sabot_lab.runtime.checkpoint import CheckpointSpec
from sabot_lab.runtime.collect import collect_result, empty_metrics
from sabot_lab.runtime.exchange import stateful_stages
from sabot_lab.runtime.execution import AgentInfo, ExecutionPlan, PartitionTask, StatefulStages
from sabot_lab.runtime.protocol import RunListener, StopSignal
from sabot_lab.runtime.stateful_job import StatefulJob, no_worker_message

__all__ = ["DaskRunner", "JobManager"]

log = logging.getLogger(__name__)

#: Default input per partition task (bytes of Arrow data): 10x the data makes 10x the
#: partitions, not 10x the memory per worker.
PARTITION_BYTES = 16 * 2**20
#: The same for stateful jobs, whose every partition costs a push to every key range: fewer,
#: larger partitions.
STATEFUL_PARTITION_BYTES = 64 * 2**20


def _read_version_feeds(graph: JobGraph) -> tuple[JobGraph, dict[str, list[pa.Table]]]:
    """``graph`` with every stream of versions (an as-of join's
    :class:`~sabot_lab.reference.VersionFeed`) read here first, into the versioned table
    of the versions that count; and the versions set aside. The rows are those of a local
    run, which reads the versions as its events need them: which versions count depends on
    the versions stream alone."""
    aside: dict[str, list[pa.Table]] = {}

    def read(node: Node) -> Node:
        if not (isinstance(node, AsOfEnrich) and isinstance(node.reference, VersionFeed)):
            return node
        feed = node.reference
        kept, late = materialize_versions(feed)
        aside.setdefault("late_versions", []).append(late)
        table = Table(kept, feed.key, unique=False, valid_from=feed.valid_from,
                      valid_to=feed.valid_to)
        table.unique = True  # one version per (key, valid_from): corrections replaced
        return dataclasses.replace(node, reference=table)

    return JobGraph(graph.root.map(read)), aside


def _template(graph: JobGraph) -> tuple[Node, list[Table], list[Source]]:
    """The plan without data: reference tables and scans replaced by slots."""
    references: list[Table] = []
    sources: list[Source] = []

    def strip(node: Node) -> Node:
        if isinstance(node, Enrich):
            references.append(node.reference)
            ref = node.reference
            slot = tasks.ReferenceSlot(len(references) - 1, ref.key, ref.unique, ref.schema,
                                       ref.valid_from, ref.valid_to)
            return dataclasses.replace(node, reference=slot)
        if isinstance(node, Source):
            sources.append(node)
            return dataclasses.replace(node, scan=tasks.ScanSlot(len(sources) - 1,
                                                                     node.scan.schema))
        return node

    root = graph.root.children[0].map(strip)
    return root, references, sources


# --- planning --------------------------------------------------------------------------------

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
        a worker holds about this much input per task whatever the size of the data;
        default 16 MiB for stateless jobs, 64 MiB for stateful ones.
    max_in_flight
        Partition tasks submitted but not finished at any time (backpressure); default two
        per worker thread.
    worker_timeout
        Seconds to wait for a worker to take over the key ranges of a lost one.
    retries
        How often a task that raised is run again (``Client.submit(retries=...)``). None by
        default: a task raises on bad input or a bug, and running it again only repeats the
        error. A task lost with its worker is re-run by Dask whatever this says.
    """

    def __init__(self, client: object, partitions_per_worker: int = 2,
                 max_in_flight: int | None = None, retries: int = 0,
                 partition_bytes: int | None = None, worker_timeout: float = 60) -> None:
        self.client = client
        self.worker_timeout = worker_timeout
        self.nthreads = dict(sorted(client.nthreads().items()))
        threads = sum(self.nthreads.values()) or 1
        self.threads = threads
        self.partitions_per_worker = partitions_per_worker
        self.partition_bytes = partition_bytes
        self.max_in_flight = max_in_flight or 2 * threads
        self.retries = retries
        # Held weakly: a finished partition's output must be free to go once it is used.
        self._futures: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()  # abort() runs in a watch thread
        self.aborted: str | None = None

    def submit(self, fn: Callable, *args: object, **kwargs: object) -> object:
        """``client.submit`` for a task of this job (retried, never cached), remembered so
        that :meth:`abort` can cancel it."""
        if self.aborted is None:
            future = self.client.submit(fn, *args, retries=self.retries, pure=False, **kwargs)
            with self._lock:
                if self.aborted is None:
                    self._futures.add(future)
                    return future
            future.cancel()  # aborted while it was being submitted
        raise CancelledError(self.aborted)

    def abort(self, reason: str) -> None:
        """Cancel every task of this job still held, and refuse new ones: whoever waits for
        one gets a ``CancelledError``."""
        with self._lock:
            self.aborted = reason
            futures = list(self._futures)
        if futures:
            self.client.cancel(futures, reason="sabot-job-aborted", msg=reason)

    def plan(self, graph: JobGraph) -> tuple[ExecutionPlan, Node, list, list[Table]]:
        """Split sources into partitions; return the plan, the task template, the partition
        scans (one list per source) and the reference tables to broadcast."""
        stages = stateful_stages(graph)
        scan_graph = JobGraph(Sink(stages.below, CollectSink())) if stages else graph
        for node in scan_graph.operators():
            if isinstance(node, Watermark | WindowAggregate | TopN):
                raise NotImplementedError(
                    f"the DaskRunner runs event-time operators on the job's main chain only "
                    f"(one watermark, one window); {node.label} is below a union")
            if not (node.stateless or isinstance(node, Source | Union | Sink)):
                raise NotImplementedError(
                    f"the DaskRunner runs stateless plans; {node.label} needs a keyed exchange")
        template, references, sources = _template(scan_graph)
        scans = []
        tasks = []
        for i, source in enumerate(sources):
            parts = source.scan.partitions(self.partitions_for(source.scan, stages is not None))
            scans.append(parts)
            tasks += [PartitionTask(i, p, part.describe()) for p, part in enumerate(parts)]
        workers = sorted(self.client.scheduler_info()["workers"])
        broadcast = [f"reference {list(r.key)} ({r.num_rows:,} rows)" for r in references]
        ids = graph.node_ids()  # the scan graph's nodes are the job's: report under its ids
        execution = ExecutionPlan(graph, tasks, broadcast, workers, stateful=stages,
                                  op_ids=tuple(ids[id(n)] for n in scan_graph.operators()[:-1]))
        return execution, template, scans, references

    def partitions_for(self, scan: object, stateful: bool = False) -> int:
        """How many partitions to split ``scan`` into: ``partitions_per_worker`` per worker
        thread, or more for a source larger than ``partition_bytes`` per partition."""
        least = max(1, self.partitions_per_worker * self.threads)
        size = scan.nbytes()
        if size is None:  # generated batches: their size is known only once they are made
            return least
        limit = self.partition_bytes or (STATEFUL_PARTITION_BYTES if stateful
                                         else PARTITION_BYTES)
        return max(least, -(-size // limit))

    def place_agents(self, stages: StatefulStages) -> list[AgentInfo]:
        """One key range per worker thread (one in all for a job without keys), placed round
        robin over the workers."""
        slots = [w for i in range(max(self.nthreads.values(), default=1))
                 for w, n in self.nthreads.items() if i < n]
        n_ranges = len(slots) if stages.keys else 1
        return [AgentInfo(r, slots[r]) for r in range(n_ranges)]

    def submit_job(self, graph: JobGraph, monitor: RunListener | None = None,
                   checkpoints: CheckpointSpec | None = None, stop: StopSignal | None = None
                   ) -> Result:
        """Run ``graph`` on the cluster and return its :class:`~sabot_lab.result.Result`;
        ``monitor`` hears of every partition that comes back (with its counters), or for
        windows and keyed state, of every partition through the keyed stage.
        ``checkpoints`` (stateful jobs) writes the agents' cuts to a directory, every
        ``checkpoints.every`` partitions, and resumes from one there. ``stop`` ends the job
        early when requested (see :meth:`DaskRunner.run`)."""
        from distributed import as_completed

        start = time.perf_counter()
        graph, aside = _read_version_feeds(graph)
        sink = graph.root
        execution, template, scans, references = self.plan(graph)
        planned = time.perf_counter()
        if execution.stateful is not None:
            execution.agents = self.place_agents(execution.stateful)
            job = StatefulJob(self, graph, execution.stateful, scans, template,
                              execution.op_ids, references, execution.tasks,
                              execution.agents, monitor, checkpoints, stop)
            table, side, metrics = job.run()
            for name, tables in aside.items():
                side.setdefault(name, []).extend(tables)
            execution.restarts = job.restarts
            execution.cuts, execution.cut_state_bytes = job.cuts, job.cut_state_bytes
            execution.timings.update(job.timings)
            execution.timings.update(planning_ms=(planned - start) * 1000,
                                     execution_ms=(time.perf_counter() - planned) * 1000)
            return collect_result(graph, "dask", start, table, side, metrics,
                                  execution=execution)
        if checkpoints is not None:
            raise PlanError(
                "checkpoints on Dask are taken by the key-range agents of stateful jobs "
                "(windows, keyed state); a stateless job re-runs a lost partition instead. "
                "Run it without checkpoint_dir=, or on the LocalRunner")
        ref_futures = [self.client.scatter(r.data, broadcast=True, hash=True)
                       for r in references]

        token = uuid.uuid4().hex[:12]  # unique task names: a cancelled job's may linger

        def submissions() -> Iterator[tuple[int, object]]:
            for task_index, task in enumerate(execution.tasks):
                # An in-memory slice travels inside its task as a bare Arrow table (Arrow
                # IPC), not scattered: a task lost with a worker is re-run, so its input
                # must outlive the worker, and scattered data does not.
                part = tasks.compacted(scans[task.source][task.partition])
                future = self.submit(
                    tasks.run_partition, template, execution.op_ids, task.source,
                    task.partition, part,
                    *ref_futures,
                    key=f"sabot-partition-{task.source}-{task.partition}-{token}",
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
                if stop is not None and stop.requested:
                    continue  # no new partitions; those in flight finish
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
        # A stopped job keeps the partitions before the first one not done: a prefix.
        outputs = {i: out for i, out in outputs.items() if i < written}
        metrics = self._metrics(graph, execution, outputs)
        side: dict[str, list[pa.Table]] = {k: list(v) for k, v in aside.items()}
        for i in sorted(outputs):
            for name, t in outputs[i]["side_outputs"].items():
                side.setdefault(name, []).append(t)
        execution.timings.update(planning_ms=(planned - start) * 1000,
                                 execution_ms=(executed - planned) * 1000,
                                 gather_ms=(time.perf_counter() - executed) * 1000)
        return collect_result(graph, "dask", start, table, side, metrics, execution=execution)

    def _metrics(self, graph: JobGraph, execution: ExecutionPlan, outputs: dict[int, dict]
                 ) -> dict[str, OperatorMetrics]:
        """The job's metrics: every partition's, by operator id, and the sink's rows."""
        merged = empty_metrics(graph)
        ids = graph.node_ids()
        sources = {ids[id(n)] for n in graph.operators() if isinstance(n, Source)}
        for i, out in outputs.items():
            task = execution.tasks[i]
            task.worker, task.seconds = out["worker"], out["seconds"]
            for op_id, row in out["metrics"].items():
                merged[op_id].merge(row)
            task.rows_out = out["rows_out"]
            task.rows_in = sum(row["rows_in"] for op_id, row in out["metrics"].items()
                               if op_id in sources)
        rows = sum(out["rows_out"] for out in outputs.values())
        merged[ids[id(graph.root)]].add(rows_in=rows, rows_out=rows, batches_in=len(outputs))
        return merged


def quiet_large_graph_warning() -> None:
    """Dask warns when a task graph passes 10 MB; ours carry in-memory partitions on purpose
    (see above). The warning is raised from Dask's event loop, so the filter is global."""
    warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)


def _running_workers(client: object, wait: float) -> int | None:
    """Workers running now, or ``None`` when the scheduler does not answer within ``wait``
    seconds (losing the scheduler is another error, reported by the job itself)."""
    try:
        return len(client.sync(client.scheduler.ncores_running, callback_timeout=wait))
    except Exception:  # any failure to ask means "unknown", not "none"
        return None


class _WorkerWatch:
    """Aborts a job (:meth:`JobManager.abort`) once the cluster has had no running worker
    for ``timeout`` seconds: a scheduler without workers keeps tasks waiting forever.

    A thread asks the scheduler how many workers run, a few times per ``timeout``; use it
    as a context manager, which stops and joins the thread, so it never outlives the job.
    """

    def __init__(self, manager: JobManager, timeout: float, address: str) -> None:
        self.manager = manager
        self.timeout = timeout
        self.address = address
        self.starved = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sabot-worker-watch",
                                        daemon=True)

    def __enter__(self) -> _WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        interval = min(1.0, self.timeout / 4)
        since = None
        while not self._stop.wait(interval):
            if _running_workers(self.manager.client, wait=interval) != 0:
                since = None
                continue
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= self.timeout:
                self.starved = True
                log.warning("no Dask worker for %g s: aborting the job", self.timeout)
                self.manager.abort(no_worker_message(self.timeout, self.address))
                return


def _take(iterator: Iterator, n: int) -> list:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _check_sizes(n_workers: int, threads_per_worker: int, worker_timeout: float) -> None:
    """Refuse a cluster that could never run a task: its jobs would wait forever."""
    if n_workers < 1:
        raise ValueError(f"DaskRunner(n_workers={n_workers}): a LocalCluster needs at least "
                         f"one worker to run anything; pass n_workers=1 or more")
    if threads_per_worker < 1:
        raise ValueError(f"DaskRunner(threads_per_worker={threads_per_worker}): a worker "
                         f"needs at least one thread; pass threads_per_worker=1 or more")
    if not worker_timeout > 0:
        raise ValueError(f"DaskRunner(worker_timeout={worker_timeout}): the seconds a job "
                         f"waits for a worker must be positive")


def _connect_to(address: str, security: object, timeout: float) -> object:
    """A client of the scheduler at ``address``, or a clear error."""
    from distributed import Client

    if address.startswith("tls://") and security is None:
        raise ValueError(
            f"the scheduler at {address} talks TLS: pass its certificates, "
            f"DaskRunner(address, security=distributed.Security(tls_ca_file=..., "
            f"tls_client_cert=..., tls_client_key=..., require_encryption=True))")
    try:
        return Client(address, security=security, timeout=timeout)
    except OSError as exc:
        raise SchedulerUnreachableError(
            f"no Dask scheduler answered at {address} within {timeout:g} s ({exc}); start "
            f"one with `dask scheduler`, check the address, or pass None to start a "
            f"LocalCluster") from None


def _local_security(security: object) -> object:
    """The ``distributed.Security`` of a LocalCluster the runner starts (``None``: no TLS)."""
    if security is False:
        return None
    if security is not None:
        return security
    from distributed import Security

    try:
        # Self-signed, in memory, made for this cluster: only this process holds them (the
        # worker processes get them from the nanny), so no other process can connect.
        return Security.temporary()
    except ImportError as exc:
        raise ImportError(
            "DaskRunner() starts its LocalCluster with TLS and credentials of its own, which "
            "needs the `cryptography` package: `pip install cryptography`, or pass "
            "DaskRunner(security=False) for a cluster without authentication (any process "
            "on this machine can then connect to it and run code)") from exc


def _close_client(client: object, timeout: float) -> None:
    """Close a client we created, whatever state its connection is in; its event-loop
    thread is stopped in any case."""
    try:
        client.close(timeout=timeout)
    except Exception as exc:  # Dask can fail to close a client whose connection broke
        log.warning("closing the Dask client failed (%s: %s); stopping its event loop",
                    type(exc).__name__, exc)
    # Client.close stops the client's event-loop thread only when it closed cleanly: a
    # thread left running outlives the runner, and at interpreter exit can crash it.
    loop_runner = getattr(client, "_loop_runner", None)
    if loop_runner is not None and loop_runner.is_started():
        loop_runner.stop()
        client.status = "closed"  # so that Client.__del__ does not try again on a dead loop


class DaskRunner:
    """Runs jobs on a Dask cluster: a ``Client``, a scheduler address, or a LocalCluster.

    Parameters
    ----------
    client_or_address
        A ``distributed.Client``, a scheduler address such as ``"tcp://127.0.0.1:8786"``, or
        ``None`` to start a ``LocalCluster`` on this machine (loopback only), closed again by
        :meth:`close`.
    n_workers, threads_per_worker
        Size of a LocalCluster this runner starts (default 2 × 1, sized for a 2-core machine);
        at least 1 each.
    partitions_per_worker
        Partitions per worker thread for each source (at least).
    partition_bytes
        More partitions for a source larger than this per partition (default 16 MiB of
        Arrow data, 64 MiB for windows and keyed state), so a worker's memory follows this,
        not the size of the data.
    security
        How this runner's connections are secured:

        * ``None`` (default): a LocalCluster this runner starts talks TLS and accepts only
          holders of credentials made for it alone (``distributed.Security.temporary()``,
          kept in memory; needs the ``cryptography`` package), so no other local process
          can connect to it and run code. A scheduler address is reached without TLS.
        * ``False``: no TLS anywhere. A LocalCluster then accepts any process on this
          machine (as Dask's own default does); it starts a little faster.
        * a ``distributed.Security``: used for the scheduler at the address (required for a
          ``tls://`` address), or for the LocalCluster this runner starts.

        Ignored for a ``Client`` passed in, which brings its own.
    timeout
        Seconds to wait for the scheduler before giving up (and for closing the client).
    worker_timeout
        Seconds a job waits while the cluster has no running worker (at its start, or
        after losing them all) before it fails with :class:`ClusterError`; default a
        minute, time for a cluster to start or replace its workers.

    Examples
    --------
    >>> DaskRunner(n_workers=0)
    Traceback (most recent call last):
    ...
    ValueError: DaskRunner(n_workers=0): a LocalCluster needs at least one worker ...
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
        partition_bytes: int | None = None,
        worker_timeout: float = 60,
    ) -> None:
        _check_sizes(n_workers, threads_per_worker, worker_timeout)
        self._owned: list = []
        self.timeout = timeout
        self.worker_timeout = worker_timeout
        self.partitions_per_worker = partitions_per_worker
        self.partition_bytes = partition_bytes
        start = time.perf_counter()
        try:
            arrow_threads = self._connect(client_or_address, n_workers, threads_per_worker,
                                          security)
            self.client.run(tasks.warm_worker, arrow_threads)
        except BaseException:
            self.close()  # what was started so far (a cluster, a client) must not linger
            raise
        quiet_large_graph_warning()
        self._address = self.client.scheduler.address
        self.startup_ms = (time.perf_counter() - start) * 1000

    def _connect(self, client_or_address: object, n_workers: int, threads_per_worker: int,
                 security: object) -> int | None:
        """Set ``self.client`` (and start a LocalCluster); return the Arrow threads per
        worker to set (``None``: a cluster we did not start keeps its own settings)."""
        from distributed import Client, LocalCluster

        if isinstance(client_or_address, Client):
            self.client = client_or_address
            return None
        if isinstance(client_or_address, str):
            self.client = _connect_to(client_or_address,
                                      None if security is False else security, self.timeout)
            self._owned.append(self.client)
            return None
        if client_or_address is not None:
            raise TypeError("client_or_address must be a distributed.Client, an address "
                            f"string or None, got {type(client_or_address).__name__}")
        local_security = _local_security(security)
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               silence_logs=logging.WARNING,
                               protocol="tls" if local_security is not None else None,
                               security=local_security)
        self._owned.append(cluster)
        self.client = Client(cluster)  # with the cluster's credentials
        self._owned.insert(0, self.client)  # closed before its cluster
        return max(1, threads_per_worker)

    @property
    def dashboard_link(self) -> str:
        """The Dask dashboard of the cluster."""
        return self.client.dashboard_link

    def run(self, graph: JobGraph, *, listener: RunListener | None = None,
            checkpoints: CheckpointSpec | None = None, stop: StopSignal | None = None
            ) -> Result:
        """Execute ``graph`` on the cluster.

        Raises :class:`ClusterError` when the cluster fails the job: the scheduler goes
        away, a partition kills every worker that tries it (e.g. out of memory), or no
        worker runs for ``worker_timeout`` seconds (none at the start, or all lost); the
        sink is then left unwritten (file sinks write a temporary file and remove it).
        ``listener`` (e.g. a :class:`~sabot_lab.dashboard.Dashboard`) hears the run: the
        Dask dashboard link, partitions done of all as they come back (with their counters
        for stateless jobs; through the keyed stage for windows and keyed state), and the
        final counters. ``checkpoints`` (stateful jobs only) writes the key-range agents'
        consistent cuts to a directory every ``checkpoints.every`` partitions and resumes
        from the one there; without it the cuts are kept in memory, to restart agents lost
        with a worker. ``stop`` (a live job's) ends the run early when it is requested: no
        more partitions start, those running finish, and the output is that of the
        partitions before the first one not done."""
        monitor = listener
        if monitor is not None:
            monitor.start(graph, self.name, link=self.dashboard_link)
        result = None
        try:
            result = self._submit(graph, monitor, checkpoints, stop)
        finally:
            if monitor is not None:  # failed when no result came back
                monitor.finish(None if result is None else result.operator_metrics,
                               failed=result is None)
        result.execution.timings["cluster_start_ms"] = self.startup_ms
        return result

    def _submit(self, graph: JobGraph, monitor: RunListener | None,
                checkpoints: CheckpointSpec | None, stop: StopSignal | None = None) -> Result:
        """Run the job once a worker is there, watched for the loss of every worker; the
        cluster's failures become :class:`ClusterError`."""
        from distributed import KilledWorker
        from distributed.comm.core import CommClosedError

        watch = None
        try:
            self._wait_for_a_worker()
            manager = JobManager(self.client, self.partitions_per_worker,
                                 partition_bytes=self.partition_bytes,
                                 worker_timeout=self.worker_timeout)
            with _WorkerWatch(manager, self.worker_timeout, self._address) as watch:
                return manager.submit_job(graph, monitor, checkpoints, stop)
        except KilledWorker as exc:
            raise ClusterError(
                f"a task of this job killed every worker that ran it ({exc}): most likely a "
                f"partition too large for a worker's memory. Use more, smaller partitions "
                f"(DaskRunner(partitions_per_worker=...)), smaller batches, or workers with "
                f"more memory. The sink was not written.") from exc
        except (CommClosedError, CancelledError, OSError, TimeoutError) as exc:
            if watch is not None and watch.starved:
                raise ClusterError(no_worker_message(self.worker_timeout,
                                                      self._address)) from exc
            # Futures cancelled under the job (one, or a group) mean its client lost the
            # scheduler, even when it has reconnected since: the futures are gone.
            lost = isinstance(exc, CommClosedError | CancelledError)
            if self.client.status == "running" and not lost:
                raise  # an error of the job itself (e.g. a file a worker could not read)
            if self.client.status == "running" and _running_workers(self.client, 5) == 0:
                # Data only workers held (broadcast reference tables) went with the last of
                # them, so the scheduler cancelled what needs it: no point waiting.
                raise ClusterError(
                    f"the cluster lost every worker during the job, and data the job had "
                    f"sent them ({type(exc).__name__}: {exc}); the sink was not written. "
                    f"Start workers (`dask worker {self._address}`) or scale the cluster "
                    f"up, then rerun.") from exc
            raise ClusterError(
                f"lost the Dask cluster during the job ({type(exc).__name__}: {exc}); the "
                f"sink was not written. Rerun when the scheduler "
                f"({self._address}) is back.") from exc

    def _wait_for_a_worker(self) -> None:
        """Return once the cluster has a running worker; :class:`ClusterError` after
        ``worker_timeout`` seconds without one."""
        try:
            self.client.wait_for_workers(1, timeout=self.worker_timeout)
        except TimeoutError:
            raise ClusterError(no_worker_message(self.worker_timeout, self._address)) from None

    def close(self) -> None:
        """Close the client and the cluster this runner started (not a client passed in),
        also after the cluster failed a job: none of their threads outlives this call."""
        from distributed import Client

        while self._owned:
            thing = self._owned.pop(0)
            if isinstance(thing, Client):
                _close_client(thing, self.timeout)
                continue
            try:
                thing.close(timeout=self.timeout)
            except Exception as exc:  # the cluster's processes are gone all the same
                log.warning("closing the LocalCluster failed (%s: %s)", type(exc).__name__,
                            exc)

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaskRunner({self._address})"
