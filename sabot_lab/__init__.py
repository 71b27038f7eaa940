"""sabot_lab: learn, explore and prototype stream processing on Arrow, locally or on Dask.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> sl.Stream.from_table(pa.table({"x": [1, 2, 3]})).filter(sl.col("x") > 1).to_table().num_rows
2
"""

from sabot_lab.dashboard import Dashboard
from sabot_lab.expr import coalesce, col, lit
from sabot_lab.plan.compare import compare_plans
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import PlanError
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.plan.windows import (
    approx_quantile,
    count,
    hopping,
    max,
    mean,
    min,
    quantile,
    session,
    sum,
    tumbling,
)
from sabot_lab.process import ProcessFunction, PythonProcessFunction
from sabot_lab.reference import DuplicateKeyError, Table
from sabot_lab.result import Result
from sabot_lab.runtime.checkpoint import CheckpointError
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.stream import Stream
from sabot_lab.testing import assert_same_results


def __getattr__(name: str) -> object:
    # The Dask runtime imports distributed (about a second): only when it is asked for.
    if name in ("DaskRunner", "JobManager"):
        from sabot_lab.runtime import dask

        return getattr(dask, name)
    raise AttributeError(f"module 'sabot_lab' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Dashboard",
    "DaskRunner",
    "DuplicateKeyError",
    "JobGraph",
    "JobManager",
    "LocalRunner",
    "PlanError",
    "PlanOptimizer",
    "ProcessFunction",
    "PythonProcessFunction",
    "Result",
    "Stream",
    "Table",
    "approx_quantile",
    "assert_same_results",
    "coalesce",
    "col",
    "compare_plans",
    "count",
    "hopping",
    "lit",
    "max",
    "mean",
    "min",
    "quantile",
    "session",
    "sum",
    "tumbling",
]

__version__ = "0.1.0"
