"""The runner protocol: what every runner offers, and what watches a run.

Every runner implements ``run(graph, *, listener=None, checkpoints=None) -> Result``; the
glue around it (optimize, run, check) is :func:`sabot_lab.runtime.execute.run_job`, so
``Stream.run`` only builds plans. A :class:`RunListener` (the
:class:`~sabot_lab.dashboard.Dashboard` is one) hears a run start, progress and end. A runner
that can run a live job (``Stream.start``) also takes ``stop=`` a :class:`StopSignal`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from sabot_lab.ops.base import OperatorMetrics
from sabot_lab.plan.graph import JobGraph
from sabot_lab.result import Result
from sabot_lab.runtime.checkpoint import CheckpointSpec

__all__ = ["RunListener", "Runner", "StopSignal"]


class StopSignal:
    """Asks a running job to stop: it reads no more input, lets the batches (or partitions)
    in flight through, and ends; with ``flush`` it also flushes its operators as at the end
    of the input (open windows fire early), else it emits only what was final.

    >>> signal = StopSignal()
    >>> signal.requested
    False
    >>> signal.request(flush=True)
    >>> signal.requested, signal.flush
    (True, True)
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.flush = False

    def request(self, flush: bool = False) -> None:
        """Ask the job to stop (``flush``: flush its operators too)."""
        self.flush = flush
        self._event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()


@runtime_checkable
class RunListener(Protocol):
    """Hears a run: its start, output reaching the sink, Dask partitions coming back, its end.
    Every call but :meth:`start` and :meth:`finish` may be skipped by a runner."""

    def start(self, graph: JobGraph, runner: str, link: str | None = None,
              state: Mapping[str, Callable[[], tuple[int, int] | None]] | None = None
              ) -> None:
        """A run of ``graph`` begins on ``runner``; ``state`` reads the state per operator."""

    def update(self, metrics: Sequence[OperatorMetrics]) -> None:
        """Output reached the sink; ``metrics`` are the live counters."""

    def partition_done(self, metrics: Mapping[str, Mapping[str, object]], rows_out: int,
                       done: int, total: int) -> None:
        """A partition came back with its operators' counters by operator id (sink
        excluded) and the rows it sends to the sink."""

    def partitions_through(self, done: int, total: int) -> None:
        """``done`` of ``total`` partitions are through a stateful job's keyed stage."""

    def finish(self, metrics: Sequence[OperatorMetrics] | None = None,
               failed: bool = False) -> None:
        """The run ended, or ``failed``; ``metrics`` are the final counters."""


@runtime_checkable
class Runner(Protocol):
    """Executes a (optimized) job graph whose root is a sink."""

    name: str

    def run(self, graph: JobGraph, *, listener: RunListener | None = None,
            checkpoints: CheckpointSpec | None = None) -> Result:
        """Run ``graph``; ``listener`` hears it, ``checkpoints`` (where supported) make it
        resumable."""
