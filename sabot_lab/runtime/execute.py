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
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.result import Result
from sabot_lab.runtime.checkpoint import CheckpointSpec
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.runtime.protocol import Runner

__all__ = ["run_job"]


def run_job(graph: JobGraph, runner: Runner | None = None, *,
            optimize: bool | PlanOptimizer = True, checkpoints: CheckpointSpec | None = None,
            dashboard: bool | Dashboard = False) -> Result:
    """Run ``graph`` (rewritten by the optimizer unless ``optimize=False``) on ``runner``
    (default: a :class:`~sabot_lab.runtime.local.LocalRunner`), watched by ``dashboard``.

    Every run checks that each operator accounts for its rows (rows in = out + filtered +
    side output, or absorbed by an aggregation): a run that lost track of rows raises
    :class:`~sabot_lab.errors.AccountingError` instead of returning.
    """
    runner = runner if runner is not None else LocalRunner()
    stats = None
    executed = graph
    if optimize:
        optimizer = optimize if isinstance(optimize, PlanOptimizer) else PlanOptimizer()
        executed = optimizer.optimize(graph)
        stats = optimizer.get_stats()
    result = runner.run(executed, listener=make_dashboard(dashboard), checkpoints=checkpoints)
    result.logical_plan = graph
    result.optimizer_stats = stats
    result.check_accounting()
    return result
