"""What a Dask job was cut into and where each piece ran: the picture of a distributed run
(``result.execution``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from html import escape

import pandas as pd

from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import Fused, KeyedProcess, Node, Watermark, WindowAggregate

__all__ = ["AgentInfo", "ExecutionPlan", "PartitionTask", "StatefulStages", "chain_ids"]


def chain_ids(ids: dict[int, str], chain: tuple[Node, ...]) -> tuple[str, ...]:
    """The operator ids (``ids``: the job's :meth:`~sabot_lab.plan.graph.JobGraph.node_ids`)
    of a chain listed top to bottom, in data-flow order, fused stages one by one: what a
    stage that runs the chain reports its metrics under."""
    return tuple(ids[id(s)] for n in reversed(chain)
                 for s in (n.stages if isinstance(n, Fused) else (n,)))


@dataclass(frozen=True)
class StatefulStages:
    """A stateful plan cut at its watermark or keyed operator (chains listed top to
    bottom): ``below`` runs per source partition, ``middle`` (after the watermark) before
    the exchange, ``reducer`` per key range, ``client`` on the client."""

    below: Node
    watermark: Watermark | None
    middle: tuple[Node, ...]
    reducer: tuple[Node, ...]
    client: tuple[Node, ...]
    #: The job's operator ids of each stage's operators, in data-flow order: ``exchange``
    #: (watermark and middle), ``reducer``, ``client`` (the sink last).
    op_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys rows are exchanged by (none: one key range)."""
        for n in self.reducer:
            if isinstance(n, WindowAggregate | KeyedProcess):
                return n.keys
        return ()

    def describe(self) -> str:
        keys = list(self.keys) or "nothing: one key range"
        if self.watermark is None:
            return f"3 stages (pipeline, exchange by {keys}, keyed state agents)"
        kind = ("window" if any(isinstance(n, WindowAggregate) for n in self.reducer)
                else "keyed state")
        return f"4 stages (pipeline and watermark, exchange by {keys}, {kind} agents, client)"


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
    #: Wall-clock times (seconds since the epoch, on the worker) the task started and ended.
    started: float = 0.0
    ended: float = 0.0
    #: Bytes of rows this partition pushed to the key-range agents (stateful jobs), and
    #: of those, to agents on other workers.
    bytes_pushed: int = 0
    bytes_remote: int = 0


@dataclass
class AgentInfo:
    """One key range's agent: where it ran, what went through it, how often it restarted."""

    key_range: int
    worker: str
    restarts: int = 0
    rows_in: int = 0
    bytes_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    busy_seconds: float = 0.0
    #: Bytes of its state at the last cut (checkpoint).
    state_bytes: int = 0

    def update(self, counts: dict) -> None:
        """Take the counters an agent reports at the end of the job."""
        for name, value in counts.items():
            setattr(self, name, value)


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
    stateful: StatefulStages | None = None
    #: The job's operator ids of the partition pipeline's operators (its sink excluded).
    op_ids: tuple[str, ...] = ()
    #: For stateful jobs: the key-range agents, and how often lost ones were restarted.
    agents: list[AgentInfo] = field(default_factory=list)
    restarts: int = 0
    #: Consistent cuts (checkpoints) the agents took, and the bytes of state they held.
    cuts: int = 0
    cut_state_bytes: int = 0

    def frame(self) -> pd.DataFrame:
        """One row per partition task."""
        return pd.DataFrame([dataclasses.asdict(t) for t in self.tasks])

    def key_ranges(self) -> pd.DataFrame:
        """One row per key-range agent: its worker, rows and bytes in and out, busy time,
        restarts and the size of its state at the last checkpoint."""
        return pd.DataFrame([dataclasses.asdict(a) for a in self.agents])

    def timeline(self) -> pd.DataFrame:
        """Per partition task: its worker and when it started and ended (seconds from the
        first start)."""
        frame = self.frame()
        if frame.empty or not frame["started"].any():
            return frame
        origin = frame.loc[frame["started"] > 0, "started"].min()
        frame["start_s"] = (frame["started"] - origin).clip(lower=0)
        frame["end_s"] = (frame["ended"] - origin).clip(lower=0)
        return frame[["worker", "source", "partition", "start_s", "end_s", "rows_in",
                      "bytes_pushed"]].sort_values(["worker", "start_s"])

    def per_worker(self) -> pd.DataFrame:
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
        if self.agents:
            lines.append(f"  {len(self.agents)} key-range agents, {self.restarts} restarts "
                         f"of the job's agents:")
        for a in self.agents:
            lines.append(f"  key range {a.key_range} on {a.worker}: in={a.rows_in:,} rows "
                         f"({a.bytes_in:,} B), out={a.rows_out:,}, restarted {a.restarts}x, "
                         f"state {a.state_bytes:,} B at the last cut")
        return "\n".join(lines)

    def to_svg(self) -> str:
        """Workers as columns, their partition tasks (rows in → out) and key-range agents as
        boxes; below, when the tasks' times are known, each worker's timeline."""
        workers = self.workers or sorted({t.worker for t in self.tasks})
        col_w, box_h, gap = 230, 34, 8
        per_worker = {w: [t for t in self.tasks if t.worker == w] for w in workers}
        agents = {w: [a for a in self.agents if a.worker == w] for w in workers}
        rows = max((len(v) + len(agents[w]) for w, v in per_worker.items()), default=0)
        width, height = col_w * max(len(workers), 1) + 20, 70 + rows * (box_h + gap)
        lanes = self._timeline_svg(workers, height, width - 20)
        height += 30 + 22 * len(workers) if lanes else 0
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
            for j, a in enumerate(agents[w], len(per_worker[w])):
                y = 50 + j * (box_h + gap)
                out.append(
                    f'<g class="agent"><rect x="{x}" y="{y}" width="{col_w - 12}" '
                    f'height="{box_h}" rx="4" fill="#fdf1e3" stroke="#9a5b13"/>'
                    f'<text x="{x + 6}" y="{y + 14}">agent: key range {a.key_range}'
                    f"{f' (restarted {a.restarts}x)' if a.restarts else ''}</text>"
                    f'<text x="{x + 6}" y="{y + 27}" fill="#555">{a.rows_in:,} rows in, '
                    f"state {a.state_bytes / 1e6:.1f} MB</text></g>")
            out.append("</g>")
        out += lanes
        out.append("</svg>")
        return "".join(out)

    def _timeline_svg(self, workers: list[str], top: int, width: int) -> list[str]:
        """Each worker's partition tasks as bars over time (none when times are unknown)."""
        timed = [t for t in self.tasks if t.started and t.ended >= t.started]
        if not timed:
            return []
        origin = min(t.started for t in timed)
        span = max(max(t.ended for t in timed) - origin, 1e-9)
        scale = (width - 110) / span
        out = [f'<text x="10" y="{top + 14}" font-weight="bold">timeline: '
               f"{span * 1000:.0f} ms</text>"]
        for i, w in enumerate(workers):
            y = top + 24 + 22 * i
            out.append(f'<g class="lane"><text x="10" y="{y + 12}">{escape(w[-16:])}</text>')
            for t in timed:
                if t.worker == w:
                    x = 120 + (t.started - origin) * scale
                    out.append(f'<rect class="bar" x="{x:.1f}" y="{y}" height="16" rx="2" '
                               f'width="{max((t.ended - t.started) * scale, 1):.1f}" '
                               f'fill="#2b4f7a" opacity="0.6"><title>partition {t.partition}: '
                               f"{(t.ended - t.started) * 1000:.0f} ms</title></rect>")
            out.append("</g>")
        return out

    def _repr_mimebundle_(self, include: object = None, exclude: object = None
                          ) -> dict[str, str]:
        return {"text/plain": repr(self), "image/svg+xml": self.to_svg()}
