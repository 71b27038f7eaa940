"""sabot_lab: learn, explore and prototype stream processing on Arrow, locally or on Dask.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> sl.Stream.from_table(pa.table({"x": [1, 2, 3]})).filter(sl.col("x") > 1).to_table().num_rows
2
"""

from sabot_lab import errors
from sabot_lab.dashboard import Dashboard
from sabot_lab.diagnosis import diagnose
from sabot_lab.errors import (
    AccountingError,
    CheckpointError,
    ClusterError,
    ColumnConversionError,
    CsvParseError,
    DuplicateKeyError,
    ExprError,
    JobInterrupted,
    ParquetReadError,
    PlanError,
    SchedulerUnreachableError,
    SchemaMismatchError,
    SnapshotError,
    StaleBlockError,
)
from sabot_lab.expr import coalesce, col, if_else, lit
from sabot_lab.live import LiveJob
from sabot_lab.plan.compare import compare_plans
from sabot_lab.plan.graph import JobGraph
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
from sabot_lab.process import NO_TIMER, ProcessFunction, PythonProcessFunction
from sabot_lab.reference import Table
from sabot_lab.result import Result
from sabot_lab.runtime.local import LocalRunner
from sabot_lab.state import MemoryState, RocksDictState, StateSpec
from sabot_lab.stream import Stream
from sabot_lab.testing import assert_same_results


def __getattr__(name: str) -> object:
    # The Dask runtime imports distributed (about a second): only when it is asked for.
    if name == "DaskRunner":
        from sabot_lab.runtime.dask import DaskRunner

        return DaskRunner
    raise AttributeError(f"module 'sabot_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "NO_TIMER",
    "AccountingError",
    "CheckpointError",
    "ClusterError",
    "ColumnConversionError",
    "CsvParseError",
    "Dashboard",
    "DaskRunner",
    "DuplicateKeyError",
    "ExprError",
    "JobGraph",
    "JobInterrupted",
    "LiveJob",
    "LocalRunner",
    "MemoryState",
    "ParquetReadError",
    "PlanError",
    "PlanOptimizer",
    "ProcessFunction",
    "PythonProcessFunction",
    "Result",
    "RocksDictState",
    "SchedulerUnreachableError",
    "SchemaMismatchError",
    "SnapshotError",
    "StaleBlockError",
    "StateSpec",
    "Stream",
    "Table",
    "approx_quantile",
    "assert_same_results",
    "coalesce",
    "col",
    "compare_plans",
    "count",
    "diagnose",
    "errors",
    "hopping",
    "if_else",
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
