"""A live view of a running job: rows, batches, rows/s, the watermark and state size.

A :class:`Dashboard` is handed to a runner (``stream.run(dashboard=True)``,
``LocalRunner(dashboard=True)``, ``DaskRunner.run(graph, dashboard=True)``). The runner
calls it as output reaches the sink (:meth:`Dashboard.update` with the live
:class:`~sabot_lab.ops.base.OperatorMetrics`, or :meth:`Dashboard.partition_done` as Dask
partitions come back) and once at the end (:meth:`Dashboard.finish`). In a Jupyter kernel
it shows an ipywidgets box: a header (job, runner, rows, batches, rows/s, elapsed, the Dask
dashboard link) over a matplotlib chart rendered to PNG (rows/s per operator, the watermark
over time, state held by stateful operators). Redraws are throttled: at most one per
``min_interval`` seconds and per ten times the last redraw's cost (so drawing takes at most a
tenth of the run), and always a final one. Without a frontend it only records and logs;
``repr()`` and ``_repr_html_()`` summarize the run.

The module sits beside the runtime: it reads plans and operator metrics and is called by the
runners; it imports ipywidgets and matplotlib only when it draws.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> events = pa.table({"t": list(range(100)), "v": [1] * 100})
>>> job = (sl.Stream.from_table(events, batch_size=10)
...        .with_watermark("t", unit="s", max_out_of_orderness="5s")
...        .window(sl.tumbling("10s")).agg(n=sl.count()))
>>> live = Dashboard(widgets=False)
>>> result = job.run(dashboard=live)
>>> live.status, live.rows_in, live.rows_out, live.watermark
('finished', 100, 10, 94)
>>> print(repr(live).splitlines()[0])  # doctest: +ELLIPSIS
Dashboard: Window[tumbling('10s') on t: n=count()] on local, finished: 100 rows in, ...
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from html import escape

import numpy as np
import pandas as pd
import pyarrow as pa

from sabot_lab.ops.base import COUNTERS, OperatorMetrics
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import NO_WATERMARK, Source, Watermark

__all__ = ["Dashboard", "make_dashboard"]

log = logging.getLogger(__name__)

#: A state gauge: the keys and bytes an operator holds now, or None.
StateGauge = Callable[[], tuple[int, int] | None]


def _in_kernel() -> bool:
    """Whether this process is a Jupyter kernel, where widgets can reach a frontend."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def _size(nbytes: float) -> str:
    """Bytes for people.

    >>> _size(512), _size(2_500_000)
    ('512 B', '2.4 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


class Dashboard:
    """A live view of one run at a time; reusable for the next run.

    Parameters
    ----------
    min_interval
        Least seconds between two redraws while the job runs (more when a redraw is slow:
        ten times its cost); the end of the run is always drawn.
    widgets
        Draw into ipywidgets (:attr:`widget`), displayed in the running cell when this is a
        Jupyter kernel; ``None`` (the default): only in a kernel.
    clock
        Seconds, monotonic (tests pass their own).
    max_points
        Points kept per series (watermark, state); older ones are thinned out.

    Attributes
    ----------
    status
        ``"waiting"``, ``"running"``, ``"finished"`` or ``"failed"``.
    job, runner, link
        The job's label, the runner's name and the Dask dashboard link (or ``None``).
    metrics
        The operators' counters, live while the job runs, final after it.
    watermarks
        ``(seconds since start, watermark)`` each time the job's watermark moved.
    state
        Per stateful operator id: ``(seconds since start, keys, bytes)`` at each redraw.
    partitions
        ``(done, total)`` partitions of a Dask run.
    refreshes
        How often the view was redrawn (state read, header and chart updated).
    """

    def __init__(self, min_interval: float = 0.5, widgets: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, max_points: int = 500) -> None:
        self.min_interval = min_interval
        self.widgets = _in_kernel() if widgets is None else widgets
        self.clock = clock
        self.max_points = max_points
        self.status = "waiting"
        self.job = self.runner = ""
        self.link: str | None = None
        self.metrics: list[OperatorMetrics] = []
        self._sources: set[str] = set()
        self.watermarks: list[tuple[float, int]] = []
        self.state: dict[str, list[tuple[float, int, int]]] = {}
        self.partitions: tuple[int, int] | None = None
        self.refreshes = 0
        self.elapsed = 0.0
        self._gauges: Mapping[str, StateGauge] = {}
        self._time_unit: str | None = None
        self._has_watermark = False
        self._started = self._last_refresh = 0.0
        self._box = self._header = self._image = None
        self._figure = self._figure_panels = None
        self._chart_failed = False
        self._handle = None
        self._interval = min_interval

    # --- the runner's side ---------------------------------------------------------------

    def start(self, graph: JobGraph, runner: str, link: str | None = None,
              state: Mapping[str, StateGauge] | None = None) -> None:
        """A run of ``graph`` begins on ``runner``; ``state`` reads the state per operator."""
        self.status, self.runner, self.link = "running", runner, link
        self.job = graph.root.children[0].label
        ids = graph.node_ids()
        self.metrics = [OperatorMetrics(ids[id(n)], n.label) for n in graph.operators()]
        self._sources = {ids[id(n)] for n in graph.operators() if isinstance(n, Source)}
        self.watermarks, self.state, self.partitions = [], {}, None
        self._gauges = dict(state or {})
        self._time_unit = next(
            (t.unit for n in graph.operators() if isinstance(n, Watermark)
             for t in [n.child.schema.field(n.time_col).type] if pa.types.is_timestamp(t)),
            None)
        self._has_watermark = any(isinstance(n, Watermark) for n in graph.operators())
        self._started = self._last_refresh = self.clock()
        self.elapsed = 0.0
        self._interval = self.min_interval
        if self.widgets:  # the header now, the chart at the first redraw
            self._show()
            self._header.value = self._header_html()
        else:
            log.info("dashboard for %s on %s: no Jupyter frontend, recording only",
                     self.job, runner)

    def update(self, metrics: Sequence[OperatorMetrics]) -> None:
        """Output reached the sink: record the live ``metrics``; redraw if one is due."""
        self.metrics = list(metrics)
        now = self.clock()
        self._record_watermark(now)
        if now - self._last_refresh >= self._interval:
            self._refresh(now)

    def partition_done(self, metrics: Mapping[str, Mapping[str, object]], rows_out: int,
                       done: int, total: int) -> None:
        """A Dask partition came back: its operators' counters by operator id (the sink's
        excluded) and the rows it sends to the sink; ``done`` of ``total`` partitions are
        back."""
        by_id = {m.op_id: m for m in self.metrics}
        for op_id, row in metrics.items():
            by_id[op_id].add(**{name: row[name] for name in COUNTERS})
        self.metrics[-1].add(rows_in=rows_out, rows_out=rows_out, batches_in=1)
        self.partitions = (done, total)
        self.update(self.metrics)

    def partitions_through(self, done: int, total: int) -> None:
        """A stateful Dask job has taken ``done`` of ``total`` partitions through its keyed
        stage (its counters arrive with :meth:`finish`)."""
        self.partitions = (done, total)
        self.update(self.metrics)

    def finish(self, metrics: Sequence[OperatorMetrics] | None = None,
               failed: bool = False) -> None:
        """The run ended (or ``failed``): record the final ``metrics``, redraw."""
        if self.status != "running":
            return
        if metrics is not None:
            self.metrics = list(metrics)
        now = self.clock()
        self._record_watermark(now)
        self.status = "failed" if failed else "finished"
        self._refresh(now)
        if self._handle is not None:
            self._handle.update(self)
        log.info("%s", self.summary())

    # --- readouts ------------------------------------------------------------------------

    @property
    def rows_in(self) -> int:
        """Rows read by the sources so far."""
        return sum(m.rows_in for m in self.metrics if m.op_id in self._sources)

    @property
    def rows_out(self) -> int:
        """Rows that reached the sink so far."""
        return self.metrics[-1].rows_in if self.metrics else 0

    @property
    def batches(self) -> int:
        """Batches read by the sources so far."""
        return sum(m.batches_in for m in self.metrics if m.op_id in self._sources)

    @property
    def rows_per_second(self) -> float:
        """Source rows per second since the run started."""
        return self.rows_in / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def watermark(self) -> int | None:
        """The job's watermark (the smallest over its watermark operators), if any."""
        marks = [m.watermark for m in self.metrics
                 if m.watermark is not None and m.watermark != NO_WATERMARK]
        return min(marks) if marks else None

    def frame(self) -> pd.DataFrame:
        """One row per operator: rows in and out, and per second of the run; ``busy``, the
        operator's own time over the run's (a source's includes waiting for its input; above 1
        when Dask partitions run in parallel); its watermark; the state it holds (keys and
        bytes).

        >>> Dashboard(widgets=False).frame().columns.tolist()  # doctest: +NORMALIZE_WHITESPACE
        ['op_id', 'operator', 'rows_in', 'rows_out', 'in_per_second', 'out_per_second',
         'busy', 'watermark', 'state_keys', 'state_bytes']
        """
        rows = []
        per_second = 1 / self.elapsed if self.elapsed > 0 else 0.0
        for m in self.metrics:
            keys, nbytes = m.state_keys, m.state_bytes
            if self.state.get(m.op_id):
                _, keys, nbytes = self.state[m.op_id][-1]
            rows.append({"op_id": m.op_id, "operator": m.label, "rows_in": m.rows_in,
                         "rows_out": m.rows_out, "in_per_second": m.rows_in * per_second,
                         "out_per_second": m.rows_out * per_second,
                         "busy": m.seconds * per_second, "watermark": m.watermark,
                         "state_keys": keys, "state_bytes": nbytes})
        columns = ["op_id", "operator", "rows_in", "rows_out", "in_per_second",
                   "out_per_second", "busy", "watermark", "state_keys", "state_bytes"]
        frame = pd.DataFrame(rows, columns=columns)
        for name in ("watermark", "state_keys", "state_bytes"):
            frame[name] = frame[name].astype("Int64")
        return frame

    def summary(self) -> str:
        """One line: job, runner, status, rows, batches, rows/s, elapsed, watermark."""
        parts = [f"{self.rows_in:,} rows in", f"{self.rows_out:,} out",
                 f"{self.batches:,} batches", f"{self.rows_per_second:,.0f} rows/s",
                 f"{self.elapsed:.1f} s"]
        if self.partitions is not None:
            parts.append("partitions {}/{}".format(*self.partitions))
        if self.watermark is not None:
            parts.append(f"watermark {self._format_watermark(self.watermark)}")
        return f"Dashboard: {self.job} on {self.runner}, {self.status}: " + ", ".join(parts)

    @property
    def widget(self) -> object:
        """The ipywidgets box (header and chart) that a Jupyter kernel shows."""
        self._build()
        return self._box

    def figure(self) -> object:
        """The chart as a new matplotlib ``Figure`` (not registered with pyplot)."""
        from matplotlib.figure import Figure

        panels = self._panels()
        height = 0.6 + 1.7 * len(panels)
        fig = Figure(figsize=(8, height), dpi=72)
        fig.subplots(len(panels), 1, squeeze=False)
        # Fixed margins: a layout engine would cost more than the drawing itself.
        fig.subplots_adjust(left=0.2, right=0.94, bottom=0.5 / height, top=1 - 0.3 / height,
                            hspace=0.75)
        self._plot(fig, panels)
        return fig

    def __repr__(self) -> str:
        if self.status == "waiting":
            return "Dashboard: waiting for a run"
        lines = [self.summary()]
        for row in self.frame().itertuples():
            state = "" if pd.isna(row.state_keys) else (
                f", state {row.state_keys:,} keys / {_size(row.state_bytes)}")
            lines.append(f"  {row.op_id:<18} {row.rows_in:>12,} in {row.rows_out:>12,} out "
                         f"{row.in_per_second:>14,.0f} rows/s busy {row.busy:>4.0%}{state}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if self.status == "waiting":
            return "<p><b>sabot_lab dashboard</b>: waiting for a run</p>"
        frame = self.frame()
        frame["state_bytes"] = [None if pd.isna(b) else _size(b) for b in frame.state_bytes]
        frame["busy"] = [f"{busy:.0%}" for busy in frame.busy]
        frame["watermark"] = [None if pd.isna(w) else self._format_watermark(w)
                              for w in frame.watermark]
        table = frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:,.0f}")
        return f"<div>{self._header_html()}{table}</div>"

    def _repr_mimebundle_(self, include: object = None, exclude: object = None
                          ) -> dict[str, object]:
        bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        if self.widgets:  # a live view, with the summary for renderers without widgets
            self._build()
            bundle.update(self._box._repr_mimebundle_())
            bundle["text/plain"] = repr(self)
        return bundle

    # --- recording and drawing -----------------------------------------------------------

    def _record_watermark(self, now: float) -> None:
        mark = self.watermark
        if mark is not None and (not self.watermarks or mark != self.watermarks[-1][1]):
            self.watermarks.append((now - self._started, mark))
            self._thin(self.watermarks)

    def _thin(self, points: list) -> None:
        """Halve a series that outgrew ``max_points`` (keeping its first and last point)."""
        if len(points) > self.max_points:
            points[:] = points[:-1:2] + points[-1:]

    def _refresh(self, now: float) -> None:
        self._last_refresh = now
        self.elapsed = now - self._started
        self.refreshes += 1
        for op_id, gauge in self._gauges.items():
            size = gauge()
            if size is not None:
                series = self.state.setdefault(op_id, [])
                series.append((self.elapsed, *size))
                self._thin(series)
        if self.widgets:
            first = self._figure is None  # loads matplotlib and its fonts: not the usual cost
            self._draw()
            if not first:  # drawing takes at most a tenth of the run: wait ten times its cost
                self._interval = max(self.min_interval, 10 * (self.clock() - now))

    def _show(self) -> None:
        self._build()
        if _in_kernel():  # in the cell that runs the job
            from IPython.display import display

            # The widget, and the summary for renderers without widgets (updated at the end).
            self._handle = display(self, display_id=True)

    def _build(self) -> None:
        if self._box is None:
            import ipywidgets

            self._header = ipywidgets.HTML()
            self._image = ipywidgets.Image(format="png")
            self._box = ipywidgets.VBox([self._header, self._image])

    def _draw(self) -> None:
        self._build()
        self._header.value = self._header_html()
        if self._chart_failed:
            return
        try:
            panels = self._panels()
            if self._figure is None or self._figure_panels != panels:
                self._figure, self._figure_panels = self.figure(), panels
            else:
                self._plot(self._figure, panels)
            buffer = io.BytesIO()
            self._figure.savefig(buffer, format="png")
        except Exception:  # the job goes on without its chart
            log.exception("dashboard: drawing the chart failed; showing the header only")
            self._chart_failed = True
            return
        self._image.value = buffer.getvalue()

    def _panels(self) -> list[str]:
        panels = ["throughput"]
        if self._has_watermark:
            panels.append("watermark")
        if self.state:
            panels.append("state")
        return panels

    def _plot(self, fig: object, panels: list[str]) -> None:
        for ax, panel in zip(fig.axes, panels, strict=True):
            ax.clear()
            getattr(self, f"_plot_{panel}")(ax)

    def _header_html(self) -> str:
        items = [("job", f"<code>{escape(self.job)}</code>"), ("runner", escape(self.runner)),
                 ("status", escape(self.status)), ("rows", f"{self.rows_in:,} in / "
                                                           f"{self.rows_out:,} out"),
                 ("batches", f"{self.batches:,}"),
                 ("rows/s", f"{self.rows_per_second:,.0f}"), ("elapsed", f"{self.elapsed:.1f} s")]
        if self.partitions is not None:
            items.append(("partitions", "{} / {}".format(*self.partitions)))
        if self.link:
            link = escape(self.link, quote=True)
            items.append(("Dask", f'<a href="{link}" target="_blank">dashboard</a>'))
        cells = " · ".join(f"<b>{name}</b> {value}" for name, value in items)
        return f"<p class='sabot-lab-dashboard'>{cells}</p>"

    def _format_watermark(self, mark: int) -> str:
        if self._time_unit is None:
            return f"{mark:,}"
        return str(pd.Timestamp(int(mark), unit=self._time_unit))

    def _plot_throughput(self, ax: object) -> None:
        frame = self.frame().iloc[::-1]
        frame = frame[~frame.op_id.str.endswith(":sink")]
        y = np.arange(len(frame))
        bars = ax.barh(y + 0.2, frame.in_per_second, height=0.4, color="tab:blue",
                       label="rows in/s")
        ax.barh(y - 0.2, frame.out_per_second, height=0.4, color="tab:orange",
                label="rows out/s")
        ax.bar_label(bars, fontsize=8, padding=2, labels=[
            f"{rate:,.0f}/s, busy {busy:.0%}"
            for rate, busy in zip(frame.in_per_second, frame.busy, strict=True)])
        ax.set_yticks(y, frame.op_id)
        ax.set_xlabel("rows per second of the run (busy: the operator's share of the time)")
        ax.set_title(f"{self.status}: {self.rows_in:,} rows in, {self.elapsed:.1f} s",
                     loc="left", fontsize=10)
        ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1, 1), ncols=2, frameon=False)
        ax.margins(x=0.35)

    def _plot_watermark(self, ax: object) -> None:
        if self.watermarks:
            seconds, marks = zip(*self.watermarks, strict=True)
            if self._time_unit is not None:
                marks = pd.to_datetime(list(marks), unit=self._time_unit)
            ax.step(seconds, marks, where="post", color="tab:green")
        ax.set_ylabel("watermark")
        ax.set_xlabel("seconds since the run started")

    def _plot_state(self, ax: object) -> None:
        for op_id, series in self.state.items():
            seconds, keys, nbytes = zip(*series, strict=True)
            ax.plot(seconds, keys, marker=".",
                    label=f"{op_id}: {keys[-1]:,} keys, {_size(nbytes[-1])}")
        ax.set_ylabel("state (keys)")
        ax.set_xlabel("seconds since the run started")
        ax.legend(fontsize=8, loc="upper left")


def make_dashboard(spec: bool | Dashboard | None) -> Dashboard | None:
    """The dashboard a runner option asks for: ``True`` a new one, a :class:`Dashboard`
    itself, ``False``/``None`` none.

    >>> make_dashboard(False) is None, type(make_dashboard(True)).__name__
    (True, 'Dashboard')
    """
    if spec is None or spec is False:
        return None
    return Dashboard() if spec is True else spec
