"""A stateful job on Dask: partitions pushed to long-lived key-range agents.

The client side of :mod:`.agent`. For a job cut by :func:`~sabot_lab.runtime.exchange.
stateful_stages`:

* one :class:`~sabot_lab.runtime.agent.KeyRangeAgent` per key range (one per worker thread),
  placed round robin on the workers, holds the range's state for the whole job;
* one task per partition runs its pipeline, assigns watermarks, splits the rows by key range
  and pushes each piece to its agent (worker to worker, no task per piece): a job is
  O(partitions + key ranges) tasks. In-memory partitions are scattered to a worker, not
  pickled into the task;
* watermarks need no serial chain: a task assigns them from its own partition, and each
  agent, which sees every partition in order, raises them by the largest event time before
  it. Only a watermark that rejects bad clocks (``max_future_skew``) or a stateless operator
  reading ``_watermark`` before the window needs the state of the partitions before, carried
  by a chain of tiny tasks;
* at most ``max_in_flight`` partitions are pushed but not yet processed (back-pressure);
* every ``every`` partitions all agents hand over a cut at the same boundary, which makes a
  consistent checkpoint, kept by the client (and written to a checkpoint directory when the
  run has one). When a worker dies, its agents start again on the other workers from the
  last checkpoint and the partitions after it are replayed; the agents that survived ignore
  what they have already processed. The output equals an uninterrupted local run.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sabot_lab.errors import ClusterError
from sabot_lab.expr import Column
from sabot_lab.ops.base import COUNTERS, OperatorMetrics
from sabot_lab.ops.sources import TableScan
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    WATERMARK_COLUMN,
    Filter,
    Fused,
    Node,
    Project,
    Sink,
    Source,
)
from sabot_lab.plan.windows import to_unit
from sabot_lab.reference import Table
from sabot_lab.runtime import tasks
from sabot_lab.runtime.agent import AgentCut, KeyRangeAgent
from sabot_lab.runtime.checkpoint import CheckpointError, Checkpoints, CheckpointSpec
from sabot_lab.runtime.execution import AgentInfo, PartitionTask, StatefulStages
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.runtime.protocol import RunListener, StopSignal

__all__ = ["StatefulJob", "no_worker_message", "watermark_needs_chain"]

log = logging.getLogger(__name__)

#: Partitions between two cuts of the agents (a consistent checkpoint), by default.
CUT_EVERY = 8
#: Restarts of lost agents a job allows before it gives up.
MAX_RESTARTS = 5


def no_worker_message(seconds: float, address: str) -> str:
    """Why a job that waited ``seconds`` for a worker of the scheduler at ``address``
    failed, and what to do."""
    return (f"no Dask worker was available for {seconds:g} s (the scheduler at {address} has "
            f"none running), so the job could not go on; the sink was not written. Start "
            f"workers (`dask worker {address}`) or scale the cluster up, then rerun; "
            f"DaskRunner(worker_timeout=...) sets how long a job waits for one.")


def watermark_needs_chain(stages: StatefulStages) -> bool:
    """Whether each partition's watermarks need the watermark state after the partitions
    before it (a serial chain), rather than being raised by the agents afterwards: a bad-clock
    guard decides rejections from that state, and a stateless operator between the watermark
    and the window may read the ``_watermark`` column."""
    if stages.watermark is None:
        return False
    if stages.watermark.max_future_skew_ns is not None:
        return True
    return not all(_blind_to_watermark(n) for n in stages.middle)


def _blind_to_watermark(node: Node) -> bool:
    if isinstance(node, Fused):
        return all(_blind_to_watermark(s) for s in node.stages)
    if isinstance(node, Filter):
        return WATERMARK_COLUMN not in node.predicate.columns
    if isinstance(node, Project):
        return all(_passes_on(name, e) or not (name == WATERMARK_COLUMN
                                               or WATERMARK_COLUMN in e.columns)
                   for name, e in node.exprs)
    return False


def _passes_on(name: str, expr: object) -> bool:
    """Whether a projection's output ``name`` is the watermark column, untouched."""
    return name == WATERMARK_COLUMN and isinstance(expr, Column) and \
        expr.name == WATERMARK_COLUMN


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the cluster losing something (a worker, an agent, data on a
    worker) rather than an error of the job itself."""
    from distributed.comm.core import CommClosedError

    if isinstance(exc, CancelledError | CommClosedError):
        return True
    # What distributed raises for a call to an actor whose worker is gone.
    return ((isinstance(exc, RuntimeError) and str(exc).startswith("Worker holding Actor was lost"))
            or (isinstance(exc, OSError) and str(exc) == "Unable to contact Actor's worker"))


@dataclass
class _Cut:
    """The last consistent checkpoint: every agent's cut at one partition boundary, and what
    the exchange tasks of the partitions before it produced."""

    position: int = 0
    agents: list[AgentCut | None] = field(default_factory=list)
    exchange_carry: bytes | None = None


class StatefulJob:
    """One run of a stateful job on the cluster of ``manager`` (a :class:`~sabot_lab.
    runtime.dask.JobManager`); :meth:`run` returns (table, side outputs, metrics by the
    job's operator ids)."""

    def __init__(self, manager: object, graph: JobGraph, stages: StatefulStages, scans: list,
                 template: Node, template_ids: tuple[str, ...], references: list[Table],
                 partitions: list[PartitionTask], agents: list[AgentInfo],
                 monitor: RunListener | None = None,
                 checkpoints: CheckpointSpec | None = None,
                 stop: StopSignal | None = None) -> None:
        self.manager, self.client = manager, manager.client
        # Names this job's tasks: unique, unlike id(self), which the next job may get once
        # this one is gone, while the scheduler still forgets (cancels) this one's agents.
        self.token = uuid.uuid4().hex[:12]
        self.stop = stop
        #: Partitions the job runs: all of them, or those started before a stop.
        self.end = len(partitions)
        self.graph, self.stages, self.scans = graph, stages, scans
        self.template, self.template_ids = template, template_ids
        self.references, self.partitions, self.info = references, partitions, agents
        self.monitor = monitor
        self.n_ranges = len(agents)
        self.carry_chain = watermark_needs_chain(stages)
        watermark = stages.watermark
        self.bound = None if watermark is None or self.carry_chain else to_unit(
            watermark.out_of_orderness_ns, watermark.time_unit)
        self.every = checkpoints.every if checkpoints is not None else CUT_EVERY
        self.spec = tasks.ExchangeSpec(watermark, stages.middle, stages.keys, self.n_ranges,
                                       stages.op_ids["exchange"])
        self.reducers = [tasks.range_stores(stages.reducer, r) for r in range(self.n_ranges)]
        self.cut = _Cut(agents=[None] * self.n_ranges)
        self.partial: dict[int, dict[int, AgentCut]] = {}
        self.done: dict[int, dict] = {}
        self.committed_metrics: dict[str, OperatorMetrics] = {}
        self.committed_side: dict[str, list[pa.Table]] = {}
        self.outputs: list[pa.Table] = []
        self.restarts = 0
        self.cuts = 0
        self.cut_state_bytes = 0
        #: Milliseconds per phase: agents started, partitions through, agents finished,
        #: the client's stage.
        self.timings: dict[str, float] = {}
        self.source_ids = set(self._sources().values())
        self.through = 0  # partitions through the agents, for the progress shown
        self.agent_starts = 0  # numbers each agent's task key, restarts included
        self.refs: list[object] = []
        self.actors: list[object] = [None] * self.n_ranges
        self.actor_futures: list[object] = [None] * self.n_ranges
        self.carries: dict[int, object] = {}
        self.directory: Checkpoints | None = None
        if checkpoints is not None:
            self.directory = Checkpoints(checkpoints.directory, checkpoints.every,
                                         checkpoints.resume, self._fingerprint())
            if checkpoints.every > len(partitions):
                log.warning("checkpoint_every=%d partitions, and the job has %d: no checkpoint "
                            "will be written (on Dask it counts partitions; pass a smaller "
                            "one, or more partitions)", checkpoints.every, len(partitions))

    # --- the run -------------------------------------------------------------------------

    def run(self) -> tuple[pa.Table, dict, dict[str, OperatorMetrics]]:
        """Run the job; returns (table, side outputs, metrics by the job's operator ids)."""
        try:
            if self.directory is not None:
                self._resume()
            self.refs = [self.client.scatter(r.data, broadcast=True, hash=True)
                         for r in self.references]
            start = time.perf_counter()
            for r in range(self.n_ranges):
                self._start_agent(r, self.info[r].worker)
            self.timings["agents_start_ms"] = (time.perf_counter() - start) * 1000
            finals = self._through_agents()
            start = time.perf_counter()
            out = self._collect(finals)
            self.timings["client_stage_ms"] = (time.perf_counter() - start) * 1000
            return out
        finally:
            if self.directory is not None:
                self.directory.close()
            self._release_agents()

    def _release_agents(self) -> None:
        """Let the cluster forget the agents now, not when this object is collected: a job
        that failed or was interrupted leaves nothing running."""
        held = [f for f in self.actor_futures if f is not None]
        if not held:
            return
        try:
            self.client.cancel(held)
        except Exception as exc:  # a client that lost its scheduler cannot cancel
            log.info("could not release the agents (%s: %s)", type(exc).__name__, exc)

    def _through_agents(self) -> list[dict]:
        """Every partition through the agents and their final flush, recovering from the
        loss of workers (also while recovering); returns each agent's last output."""
        failure = None
        while True:
            try:
                if failure is not None:
                    self._recover(failure)
                    failure = None
                start = time.perf_counter()
                self._stream()
                self.timings["partitions_ms"] = (time.perf_counter() - start) * 1000
                start = time.perf_counter()
                # Stopped after the whole input went through: the end of the input, flushed.
                flush = (self.stop is None or not self.stop.requested or self.stop.flush
                         or self.end == len(self.partitions))
                calls = [a.finish(self.end, flush) for a in self.actors]
                finals = [self._answer(r, call) for r, call in enumerate(calls)]
                self.timings["agents_finish_ms"] = (time.perf_counter() - start) * 1000
                return finals
            except Exception as exc:
                if self.manager.aborted is not None or not _lost(exc):
                    raise
                failure = exc

    def _stream(self) -> None:
        """Every partition from the last cut on through the agents, committing cuts as
        they complete."""
        from distributed import wait

        total = self.end
        next_k = self.cut.position
        carry = self.cut.exchange_carry
        self.carries: dict[int, object] = {next_k: carry}
        in_flight: dict[object, int] = {}
        try:
            while next_k < total or in_flight:
                if self.stop is not None and self.stop.requested and total > next_k:
                    total = self.end = next_k  # no new partitions; those in flight finish
                batch = list(range(next_k, min(total, next_k + self.manager.max_in_flight
                                               - len(in_flight))))
                for k, scan in zip(batch, self._scans(batch), strict=True):
                    in_flight[self._submit(k, scan)] = k
                next_k += len(batch)
                finished, _ = wait(list(in_flight), return_when="FIRST_COMPLETED")
                for future in finished:
                    k = in_flight.pop(future)
                    # Straight from the worker: through the scheduler, every result would
                    # cost the scheduler a fetch and a send.
                    self.done[k] = self.client.gather(future, direct=True)
                    self._note(k, self.done[k])
                    # done holds the partitions past the last cut, replayed ones once
                    self.through = max(self.through, self.cut.position + len(self.done))
                    if self.monitor is not None:
                        self.monitor.partitions_through(self.through, total)
                self._commit_cuts()
        finally:
            for future in in_flight:
                future.cancel()

    def _scans(self, ks: list[int]) -> list[object]:
        """The scans of partitions ``ks``; in-memory ones are sent to the workers in one go
        (spread over them, in parallel), not inside their tasks."""
        scans = [tasks.compacted(self.scans[self.partitions[k].source]
                                 [self.partitions[k].partition]) for k in ks]
        tables = [i for i, scan in enumerate(scans) if isinstance(scan, pa.Table)]
        if tables:
            try:
                sent = self.client.scatter([scans[i] for i in tables], hash=False)
            except KeyError as exc:
                # The scheduler picked a worker that was leaving (distributed raises its
                # address as a KeyError): the cluster lost it, as a cancelled task says.
                raise CancelledError(f"scattering to worker {exc} that left") from exc
            for i, future in zip(tables, sent, strict=True):
                scans[i] = future
        return scans

    def _submit(self, k: int, scan: object) -> object:
        task = self.partitions[k]
        job = f"{k}-{self.token}-{self.restarts}"
        key = f"sabot-exchange-{job}"
        if not self.carry_chain:
            return self.manager.submit(tasks.pipeline_to_agents, self.template,
                                       self.template_ids, task.source, task.partition, scan,
                                       self.spec, self.actors, *self.refs, key=key)
        stage1 = self.manager.submit(tasks.run_partition, self.template, self.template_ids,
                                     task.source, task.partition, scan, *self.refs,
                                     key=f"sabot-pipeline-{job}")
        before = self.carries[k]
        self.carries[k + 1] = self.manager.submit(tasks.watermark_carry, stage1, before,
                                                  self.stages.watermark,
                                                  key=f"sabot-carry-{job}")
        return self.manager.submit(tasks.exchange_to_agents, stage1, before, self.spec,
                                   self.actors, k, key=key)

    def _start_agent(self, r: int, worker: str) -> None:
        """Start key range ``r``'s agent on ``worker`` (from the last cut), or on another
        worker should that one go before the agent is up."""
        deadline = time.monotonic() + self.manager.worker_timeout
        while True:
            self.agent_starts += 1
            future = self.manager.submit(
                KeyRangeAgent, self.reducers[r], self.stages.op_ids["reducer"], r,
                self.every, self.bound, self.cut.agents[r], actor=True, workers=[worker],
                allow_other_workers=False,
                key=f"sabot-agent-{r}-{self.token}-{self.agent_starts}")
            while True:
                try:
                    self.actors[r] = future.result(timeout=1)
                except TimeoutError:
                    if worker not in self.client.nthreads():
                        break
                    if time.monotonic() > deadline:
                        raise ClusterError(
                            f"the agent of key range {r} did not start on {worker} within "
                            f"{self.manager.worker_timeout:g} s (a worker busy or paused, "
                            f"e.g. at its memory limit); the sink was not written. Check the "
                            f"worker's log and memory, then rerun") from None
                    continue  # still starting: the worker is busy, or just up
                # The actor lives as long as its future is held.
                self.actor_futures[r], self.info[r].worker = future, worker
                return
            future.cancel()
            if time.monotonic() > deadline:
                raise ClusterError(no_worker_message(self.manager.worker_timeout,
                                                     self.client.scheduler.address))
            worker = self._live_workers({worker})[0]

    def _note(self, k: int, out: dict) -> None:
        """Where and how partition ``k`` ran (a replay overwrites it)."""
        task = self.partitions[k]
        task.worker, task.seconds, task.rows_out = out["worker"], out["seconds"], out["rows"]
        task.rows_in = sum(row["rows_in"] for op_id, row in out["metrics"].items()
                           if op_id in self.source_ids)
        task.started, task.ended = out["started"], out["ended"]
        task.bytes_pushed = sum(out["bytes_pushed"])
        task.bytes_remote = out["bytes_remote"]

    # --- cuts and checkpoints ------------------------------------------------------------

    def _commit_cuts(self) -> None:
        """Collect and commit every cut whose partitions are all through the agents."""
        while True:
            position = self.cut.position + self.every
            if position > len(self.partitions) or any(
                    k not in self.done for k in range(self.cut.position, position)):
                return
            have = self.partial.setdefault(position, {})
            asked = {r: a.take_cut(position) for r, a in enumerate(self.actors)
                     if r not in have}
            failure = None
            for r, future in asked.items():  # an agent hands a cut over once: keep each
                try:
                    got = self._answer(r, future)
                except Exception as exc:
                    failure = failure or exc
                    continue
                if got is None:
                    raise RuntimeError(
                        f"internal error: key range {r} has no cut at partition {position} "
                        f"although every partition before it is through; please report it")
                have[r] = got
            if failure is not None:
                raise failure
            carry = None
            if self.carry_chain:
                carry = self.client.gather(self.carries[position], direct=True)
            self._commit(position, [have[r] for r in range(self.n_ranges)], carry)
            del self.partial[position]

    def _answer(self, r: int, call: object) -> object:
        """Agent ``r``'s answer to ``call``; ``CancelledError`` once the agent is lost with
        its worker (distributed never answers a call on the client then)."""
        while True:
            try:
                return call.result(timeout=1)
            except TimeoutError:
                if self.actor_futures[r].status not in ("finished", "pending"):
                    raise CancelledError(f"the agent of key range {r} was lost with its "
                                         f"worker") from None

    def _commit(self, position: int, cuts: list[AgentCut], carry: bytes | None) -> None:
        exchange = [self.done.pop(k) for k in range(self.cut.position, position)]
        side: dict[str, list[pa.Table]] = {}
        for out in exchange:
            for op_id, row in out["metrics"].items():
                self._committed(op_id).merge(row)
            for name, table in out["side_outputs"].items():
                side.setdefault(name, []).append(table)
        for cut in cuts:
            for name, table in cut.side_outputs.items():
                side.setdefault(name, []).append(table)
        output = [c.output for c in cuts if c.output is not None]
        if self.directory is not None:
            self._write(position, cuts, carry, output, side)
        self.outputs += output
        for name, tables in side.items():
            self.committed_side.setdefault(name, []).extend(tables)
        self.cut = _Cut(position, cuts, carry)
        for cut in cuts:  # kept once: the cut holds the state, the client the rows
            cut.output, cut.side_outputs = None, {}
        for r, cut in enumerate(cuts):
            self.info[r].state_bytes = cut.state_bytes
        self.cuts += 1
        self.cut_state_bytes += sum(cut.state_bytes for cut in cuts)
        self.carries = {k: v for k, v in self.carries.items() if k >= position}
        log.debug("agents' cut at partition %d committed", position)

    def _committed(self, op_id: str) -> OperatorMetrics:
        if op_id not in self.committed_metrics:
            self.committed_metrics[op_id] = OperatorMetrics(op_id, "")
        return self.committed_metrics[op_id]

    # --- checkpoint files ----------------------------------------------------------------

    def _fingerprint(self) -> dict:
        """The job's fingerprint and how it is cut: a checkpoint holds the state of each key
        range after so many partitions, so both must be the same to resume it."""
        return {**self.graph.fingerprint(), "dask:agents": {
            "key_ranges": self.n_ranges, "keys": list(self.stages.keys),
            "partitions": [p.description for p in self.partitions]}}

    def _state_names(self) -> set[str]:
        names = {f"{op_id}@range-{r:05d}" for r in range(self.n_ranges)
                 for op_id in self._stateful_ids()}
        names |= {f"carry@range-{r:05d}" for r in range(self.n_ranges)}
        if self.carry_chain:
            names.add("carry@exchange")
        return names

    def _stateful_ids(self) -> list[str]:
        ids = self.graph.node_ids()
        by_id = {ids[id(n)]: n for n in self.graph.operators()}
        return [op_id for op_id in self.stages.op_ids["reducer"] if by_id[op_id].stateful]

    def _sources(self) -> dict[int, str]:
        ids = self.graph.node_ids()
        return dict(enumerate(ids[id(n)] for n in self.graph.operators()
                              if isinstance(n, Source)))

    def _write(self, position: int, cuts: list[AgentCut], carry: bytes | None,
               output: list[pa.Table], side: dict[str, list[pa.Table]]) -> None:
        states = {}
        metrics = {op_id: _counters(m.as_dict()) for op_id, m in self.committed_metrics.items()}
        for r, cut in enumerate(cuts):
            for op_id, state in cut.states.items():
                states[f"{op_id}@range-{r:05d}"] = state
            states[f"carry@range-{r:05d}"] = np.int64(cut.carry).tobytes()
            for op_id, row in cut.metrics.items():
                metrics[f"{op_id}@range-{r:05d}"] = _counters(row)
        if self.carry_chain:
            states["carry@exchange"] = carry if carry is not None else b""
        sources = self._sources()
        positions: dict[str, int] = {}
        for task in self.partitions[:position]:
            positions[sources[task.source]] = positions.get(sources[task.source], 0) + 1
        schema = self.stages.reducer[0].schema
        batches = [b for t in output for b in t.to_batches()]
        side_schemas = {name: (([b for t in tables for b in t.to_batches()]), tables[0].schema)
                        for name, tables in side.items()}
        self.directory.write(positions, metrics, states, batches, schema, side_schemas)

    def _resume(self) -> None:
        """Continue from the checkpoint in the directory, if it has one."""
        epoch = self.directory.load(self._state_names(), self.source_ids)
        if epoch is None:
            return
        position = sum(epoch.positions.values())
        where = self.directory.directory / "manifest.json"
        reducer_ids = set(self.stages.op_ids["reducer"])
        cuts = []
        for r in range(self.n_ranges):
            suffix = f"@range-{r:05d}"
            carry = epoch.states[f"carry{suffix}"]
            if len(carry) != 8:
                raise CheckpointError(f"{where}: the watermark carry of key range {r} has "
                                      f"{len(carry)} bytes, not 8: the checkpoint is damaged")
            states = {op_id: epoch.states[op_id + suffix] for op_id in self._stateful_ids()}
            metrics = {k[:-len(suffix)]: row for k, row in epoch.metrics.items()
                       if k.endswith(suffix)}
            if not set(metrics) <= reducer_ids:
                raise CheckpointError(f"{where} holds counters of key range {r} for "
                                      f"operators {sorted(set(metrics) - reducer_ids)} that "
                                      f"its agent does not run: the checkpoint is damaged")
            cuts.append(AgentCut(position, states, int(np.frombuffer(carry, np.int64)[0]),
                                 metrics))
        carry = epoch.states.get("carry@exchange")
        if self.carry_chain and not carry:
            raise CheckpointError(f"{where} has no watermark state for the partitions after "
                                  f"partition {position}: the checkpoint is damaged")
        for op_id, row in epoch.metrics.items():
            if "@" not in op_id:
                self._committed(op_id).merge(row)
        self.outputs = list(epoch.outputs)
        self.committed_side = {name: list(t) for name, t in epoch.side_outputs.items()}
        self.cut = _Cut(position, cuts, carry or None)
        self.through = position
        log.info("resuming the agents from partition %d of %d", position,
                 len(self.partitions))

    # --- failures ------------------------------------------------------------------------

    def _recover(self, exc: BaseException) -> None:
        """Start the lost agents again from the last cut, on workers still there."""
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise ClusterError(
                f"the job lost workers {self.restarts} times ({type(exc).__name__}: {exc}); "
                f"giving up. The sink was not written. Workers that keep dying usually run "
                f"out of memory: check their logs, use more partitions "
                f"(DaskRunner(partition_bytes=...)) or workers with more memory") from exc
        log.warning("the cluster lost part of the job (%s: %s): restarting from the cut at "
                    "partition %d", type(exc).__name__, exc, self.cut.position)
        workers = sorted(self.client.nthreads())  # asked now: the client's view lags
        alive = self._alive(workers)
        lost = [r for r in range(self.n_ranges) if r not in alive]
        workers = self._live_workers({self.info[r].worker for r in lost})
        for r in lost:
            load = {w: sum(i.worker == w for i in self.info) for w in workers}
            worker = min(workers, key=lambda w: (load[w], w))
            self.info[r].restarts += 1
            self._start_agent(r, worker)
        self.done.clear()  # the partitions past the last cut: all replayed
        self.refs = [self.client.scatter(r.data, broadcast=True, hash=True)
                     for r in self.references]

    def _live_workers(self, dead: set[str]) -> list[str]:
        """The workers to place restarted agents on: not those that lost theirs (the
        scheduler may not have noticed yet); waits for one, as long as a job waits for
        workers."""
        deadline = time.monotonic() + self.manager.worker_timeout
        while True:
            workers = sorted(set(self.client.nthreads()) - dead)
            if workers:
                return workers
            if time.monotonic() > deadline:
                raise ClusterError(no_worker_message(self.manager.worker_timeout,
                                                     self.client.scheduler.address))
            time.sleep(0.1)  # waiting for the cluster to replace a worker

    def _alive(self, workers: list[str]) -> set[int]:
        """The key ranges whose agents answer (all asked at once)."""
        asked = {r: self.actors[r].ping() for r in range(self.n_ranges)
                 if self.info[r].worker in workers}
        alive = set()
        for r, future in asked.items():
            try:
                future.result(timeout=30)
            except Exception:  # any failure to answer: start it again
                continue
            alive.add(r)
        return alive

    # --- the result ----------------------------------------------------------------------

    def _collect(self, finals: list[dict]) -> tuple[pa.Table, dict, dict[str, OperatorMetrics]]:
        graph, stages = self.graph, self.stages
        ids = graph.node_ids()
        merged = {ids[id(n)]: OperatorMetrics(ids[id(n)], n.label) for n in graph.operators()}
        side: dict[str, list[pa.Table]] = {k: list(v) for k, v in self.committed_side.items()}
        for op_id, m in self.committed_metrics.items():
            merged[op_id].merge(m)
        for k in sorted(self.done):
            out = self.done[k]
            for op_id, row in out["metrics"].items():
                merged[op_id].merge(row)
            for name, t in out["side_outputs"].items():
                side.setdefault(name, []).append(t)
        outputs = list(self.outputs)
        for r, final in enumerate(finals):
            for op_id, row in final["metrics"].items():
                merged[op_id].merge(row)
            for name, t in final["side_outputs"].items():
                side.setdefault(name, []).append(t)
            if final["output"] is not None:
                outputs.append(final["output"])
            self.info[r].update(final["counts"])
        empty = stages.reducer[0].schema.empty_table()
        # One batch: top_n ranks each batch's windows, so a window must not be split.
        table = pa.concat_tables([empty, *outputs]).combine_chunks()
        source = Source(TableScan(table, batch_size=max(1, table.num_rows)))
        final = LocalRunner(threads=1).run(JobGraph(Sink(tasks.rebase(stages.client, source),
                                                         graph.root.target)))
        for op_id, row in tasks.labelled(final.operator_metrics[1:],
                                         stages.op_ids["client"]).items():
            merged[op_id].merge(row)
        for name, t in final.side_outputs.items():
            side.setdefault(name, []).append(t)
        return final.table, side, merged


def _counters(row: dict) -> dict:
    """The counters of a metrics row, as a checkpoint manifest holds them."""
    out = {name: row.get(name, 0) for name in COUNTERS}
    out["watermark"] = row.get("watermark")
    return out
