"""One way to run a job: optimize, run on a runner, check, and describe the result.

:meth:`sabot_lab.stream.Stream.run` calls :func:`run_job`; so can anything that holds a
:class:`~sabot_lab.plan.graph.JobGraph`.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> graph = sl.Stream.from_table(pa.table({"a": [1, 2, 3]})).filter(sl.col("a") > 1).graph()
>>> result = run_job(graph)
>>> result.table["a"].to_pylist(), result.optimizer_stats is not None
([2, 3], True)
"""

from __future__ import annotations

from sabot_lab.dashboard import Dashboard, make_dashboard
from sabot_lab.errors import JobInterrupted
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.result import Result
from sabot_lab.runtime.checkpoint import CheckpointSpec
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.runtime.protocol import Runner, StopSignal

__all__ = ["run_job"]


def run_job(graph: JobGraph, runner: Runner | None = None, *,
            optimize: bool | PlanOptimizer = True, checkpoints: CheckpointSpec | None = None,
            dashboard: bool | Dashboard = False, stop: StopSignal | None = None) -> Result:
    """Run ``graph`` (rewritten by the optimizer unless ``optimize=False``) on ``runner``
    (default: a :class:`~sabot_lab.runtime.local.LocalRunner`), watched by ``dashboard``;
    ``stop`` (a live job's, see :mod:`sabot_lab.live`) may end it early.

    Every run checks that each operator accounts for its rows (rows in = out + filtered +
    side output, or absorbed by an aggregation): a run that lost track of rows raises
    :class:`~sabot_lab.errors.AccountingError` instead of returning. An interrupted run
    (Ctrl-C, the notebook's stop button) raises :class:`~sabot_lab.errors.JobInterrupted`,
    which says how to keep a partial result, once nothing of the job is left running.
    """
    runner = runner if runner is not None else LocalRunner()
    stats = None
    executed = graph
    if optimize:
        optimizer = optimize if isinstance(optimize, PlanOptimizer) else PlanOptimizer()
        executed = optimizer.optimize(graph)
        stats = optimizer.get_stats()
    extra = {} if stop is None else {"stop": stop}
    try:
        result = runner.run(executed, listener=make_dashboard(dashboard),
                            checkpoints=checkpoints, **extra)
    except JobInterrupted:
        raise
    except KeyboardInterrupt as exc:
        raise JobInterrupted(
            "the job was interrupted and stopped: nothing of it is left running, and its "
            "output so far was not kept. To stop a job when you choose and keep what it "
            "produced, start it in the background: job = stream.start(); look at "
            "job.latest() while it runs; result = job.stop()") from exc
    result.logical_plan = graph
    result.optimizer_stats = stats
    result.check_accounting()
    return result
