"""Live jobs: a stream that runs in the background while the notebook stays usable.

``job = stream.start()`` runs the job on a thread of its own (on the ``LocalRunner``, or
driving a ``DaskRunner``'s cluster) and returns at once. The handle shows where the job is
(:attr:`LiveJob.status`, rows so far), the newest output while it grows
(:meth:`LiveJob.latest`, :meth:`LiveJob.output`), and ends it: :meth:`LiveJob.stop` reads no
more input, lets what is in flight through and returns the :class:`~sabot_lab.result.Result`
of what was read; :meth:`LiveJob.result` waits for a job that ends by itself. A stopped job
emits only final rows (a window still open is not emitted) unless ``stop(flush=True)``.

Limits: a stop is seen between two batches, so a source blocked waiting for its next batch
stops once it yields one (``stop(timeout=...)`` bounds the wait). On Dask, a stateless job's
output grows partition by partition, while a stateful job's (windows, keyed state) reaches
the sink when the job ends.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> job = sl.Stream.from_table(pa.table({"a": list(range(10))}), batch_size=4).start()
>>> job.result().table.num_rows, job.status
(10, 'finished')
"""

from __future__ import annotations

import html
import logging
import threading
import time
from typing import Any

import pandas as pd
import pyarrow as pa

from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import Sink
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.result import Result
from sabot_lab.runtime.protocol import StopSignal

__all__ = ["LiveJob"]

log = logging.getLogger(__name__)


class _Tee:
    """A sink target that also hands every batch to the live job (the output so far)."""

    def __init__(self, target: object, job: LiveJob) -> None:
        self.target, self.job = target, job

    def describe(self) -> str:
        return self.target.describe()

    def fingerprint(self) -> object:
        """The wrapped target's: watching a job does not change it."""
        from sabot_lab.plan.fingerprint import fingerprint_value

        return fingerprint_value(self.target)

    def open(self, schema: pa.Schema) -> _TeeWriter:
        return _TeeWriter(self.target.open(schema), self.job)


class _TeeWriter:
    def __init__(self, writer: Any, job: LiveJob) -> None:
        self.writer, self.job = writer, job

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write(batch)
        self.job._seen(batch)

    def abort(self) -> None:
        self.writer.abort()

    def close(self) -> pa.Table | None:
        return self.writer.close()


class LiveJob:
    """A job running in the background (see the module docstring); made by
    :meth:`sabot_lab.stream.Stream.start`."""

    def __init__(self, graph: JobGraph, runner: Any = None,
                 optimize: bool | PlanOptimizer = True) -> None:
        from sabot_lab.runtime.execute import run_job

        sink = graph.root
        assert isinstance(sink, Sink)
        self.graph = JobGraph(Sink(sink.child, _Tee(sink.target, self)))
        self.runner_name = getattr(runner, "name", "local")
        self._signal = StopSignal()
        self._lock = threading.Lock()
        self._batches: list[pa.RecordBatch] = []
        self._schema = sink.schema
        self._rows = 0
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._started = time.perf_counter()
        self._ended: float | None = None

        def work() -> None:
            try:
                self._result = run_job(self.graph, runner, optimize=optimize,
                                       stop=self._signal)
            except BaseException as exc:  # handed to whoever asks for the result
                self._error = exc
                log.warning("live job failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._ended = time.perf_counter()

        self._thread = threading.Thread(target=work, name="sabot-live-job", daemon=True)
        self._thread.start()

    def _seen(self, batch: pa.RecordBatch) -> None:
        with self._lock:
            self._batches.append(batch)
            self._rows += batch.num_rows

    # --- where it is -------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``"running"``, ``"stopping"`` (asked to stop, finishing what is in flight),
        ``"stopped"``, ``"finished"`` (the input ended) or ``"failed"``."""
        if self._thread.is_alive():
            return "stopping" if self._signal.requested else "running"
        if self._error is not None:
            return "failed"
        return "stopped" if self._signal.requested else "finished"

    @property
    def rows_out(self) -> int:
        """Rows written to the sink so far."""
        return self._rows

    @property
    def seconds(self) -> float:
        """Seconds since the start (until the end, once it ended)."""
        return (self._ended or time.perf_counter()) - self._started

    def output(self) -> pa.Table:
        """Every row written to the sink so far (only final rows, in output order)."""
        with self._lock:
            batches = list(self._batches)
        return pa.Table.from_batches(batches, schema=self._schema)

    def latest(self, n: int = 10) -> pd.DataFrame:
        """The newest ``n`` rows of the output so far, newest last."""
        table = self.output()
        return table.slice(max(0, table.num_rows - n)).to_pandas()

    # --- ending it ---------------------------------------------------------------------

    def stop(self, flush: bool = False, timeout: float | None = None, wait: bool = True
             ) -> Result | None:
        """Read no more input, let what is in flight through, and return the result of
        what was read. ``flush=True`` also flushes the operators as at the end of the input
        (windows still open fire, with what they hold so far); by default only final rows
        are in the result. Waits at most ``timeout`` seconds (``None``: as long as it
        takes) and raises ``TimeoutError`` if the job has not stopped by then;
        ``wait=False`` only asks, and returns ``None`` at once (:meth:`result` waits)."""
        if self._thread.is_alive():
            self._signal.request(flush)
        return self.result(timeout) if wait else None

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the job to end (by itself, or after :meth:`stop`) and return its
        result; the job's own error if it failed."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the live job is still {self.status} after {timeout} s; call "
                               f"stop() to end it, or result() again to wait longer")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __repr__(self) -> str:
        return (f"LiveJob({self.status} on {self.runner_name}, {self.rows_out:,} rows out, "
                f"{self.seconds:.1f} s)")

    def _repr_html_(self) -> str:
        color = {"running": "#2b7a3d", "stopping": "#9a6b00", "failed": "#a11"}.get(
            self.status, "#555")
        return (f"<div><b>LiveJob</b> <span style='color:{color}'>{self.status}</span> on "
                f"{html.escape(self.runner_name)}: {self.rows_out:,} rows out in "
                f"{self.seconds:.1f} s. <code>job.latest()</code> shows the newest rows, "
                f"<code>job.stop()</code> ends it.</div>")
