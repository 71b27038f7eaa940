"""The outcome of a run: output table, side outputs, per-operator metrics and timings.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> stream = sl.Stream.from_table(pa.table({"a": [1, 2, 3]})).filter(sl.col("a") > 1)
>>> result = stream.run(optimize=False)
>>> result.table.to_pydict()
{'a': [2, 3]}
>>> result.metrics[["operator", "rows_in", "rows_out", "rows_filtered"]]
                 operator  rows_in  rows_out  rows_filtered
0    Source[table 3 rows]        3         3              0
1  Filter[(col('a') > 1)]        3         2              1
2           Sink[collect]        2         2              0
>>> stream.run().metrics[["operator", "rows_in", "rows_out", "rows_filtered"]]  # optimized
                                     operator  rows_in  rows_out  rows_filtered
0  Source[table 3 rows filter=(col('a') > 1)]        3         2              1
1                               Sink[collect]        2         2              0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from sabot_lab.errors import AccountingError
from sabot_lab.ops.base import OperatorMetrics
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import Fused, Source
from sabot_lab.plan.optimizer import OptimizerStats

if TYPE_CHECKING:
    from sabot_lab.diagnosis import Diagnosis

__all__ = ["Result"]

_SHOWN = ["operator", "rows_in", "rows_out", "rows_filtered", "rows_side_output", "unmatched",
          "null_keys", "batches_in", "seconds"]


@dataclass
class Result:
    """What :meth:`Stream.run` returns.

    Attributes
    ----------
    table
        The collected output (``None`` when the sink wrote files or called a function).
    side_outputs
        Rows that left the main stream with a reason, by name (``unmatched``, ``malformed``…).
    operator_metrics
        Counters per operator, in plan order.
    execution_time_ms
        Wall-clock time of the run.
    executed_plan
        The plan that was executed (optimized, unless the run said ``optimize=False``);
        :attr:`plan` shows it with rows and times.
    logical_plan
        The plan as built, before the optimizer.
    optimizer_stats
        The rewrites the optimizer applied.
    execution
        For distributed runs, the :class:`~sabot_lab.runtime.dask.ExecutionPlan`: partitions,
        the worker that ran each, rows and times.
    setup_ms
        Part of ``execution_time_ms`` spent building operators before the first batch (lookup
        indexes; in a fresh process, loading compiled numba kernels).
    keyed_state
        For local runs, the keyed state each keyed operator ended with, by operator id
        (a :class:`~sabot_lab.state.KeyedState`: ``.to_table()``, ``.get(key)``).
    snapshots
        After ``LocalRunner.run(..., finish=False)``: the state of every stateful operator,
        by operator id, to continue with ``restore=``.
    """

    table: pa.Table | None
    side_outputs: dict[str, pa.Table]
    operator_metrics: list[OperatorMetrics]
    execution_time_ms: float
    executed_plan: JobGraph
    runner: str = "local"
    logical_plan: JobGraph | None = None
    optimizer_stats: OptimizerStats | None = None
    execution: object | None = None
    setup_ms: float = 0.0
    keyed_state: dict[str, object] = field(default_factory=dict)
    snapshots: dict[str, bytes] = field(default_factory=dict)

    @property
    def metrics(self) -> pd.DataFrame:
        """Per-operator counters as a DataFrame (one row per operator, plan order)."""
        rows = [m.as_dict() for m in self.operator_metrics]
        frame = pd.DataFrame(rows)
        frame["watermark"] = frame["watermark"].astype("Int64")  # nullable: no float rounding
        return frame.rename(columns={"label": "operator"})

    @property
    def rows_in(self) -> int:
        """Rows produced by all sources."""
        return sum(m.rows_in for n, m in zip(self.executed_plan.operators(),
                                             self.operator_metrics, strict=True)
                   if isinstance(n, Source))

    @property
    def rows_out(self) -> int:
        """Rows that reached the sink."""
        return self.operator_metrics[-1].rows_in

    @property
    def rows_per_second(self) -> float:
        """Source rows per second of wall-clock time."""
        return self.rows_in / max(self.execution_time_ms / 1000, 1e-9)

    @property
    def plan(self) -> JobGraph:
        """The executed plan with rows in/out and time on every operator (and rows on edges).

        Times are summed over the threads that ran the operator, so with several threads an
        operator's time can exceed the run's wall-clock time.
        """
        graph = self.executed_plan
        metrics = dict(zip((id(n) for n in graph.operators()), self.operator_metrics,
                           strict=True))
        for node in graph.nodes:
            if isinstance(node, Fused):
                first, last = metrics[id(node.stages[0])], metrics[id(node.stages[-1])]
                seconds = sum(metrics[id(s)].seconds for s in node.stages)
                metrics[id(node)] = OperatorMetrics("", "", rows_in=first.rows_in,
                                                    rows_out=last.rows_out, seconds=seconds)
        notes = {key: f"in={m.rows_in:,} out={m.rows_out:,} {m.seconds * 1000:.1f} ms"
                 for key, m in metrics.items()}
        edges = {key: f"{m.rows_out:,} rows" for key, m in metrics.items()}
        return graph.annotated(notes, edges)

    def check_accounting(self) -> None:
        """Raise :class:`AccountingError` if an operator lost track of rows: every operator
        must have rows in = rows out + filtered + side output (aggregations: absorbed +
        filtered + side output). :func:`~sabot_lab.runtime.execute.run_job` checks every
        run."""
        wrong = [m for m in self.operator_metrics if not m.balanced()]
        if wrong:
            m = wrong[0]
            raise AccountingError(
                f"operator {m.op_id} {m.label} does not account for its rows: in={m.rows_in:,}"
                f" out={m.rows_out:,} filtered={m.rows_filtered:,} side_output="
                f"{m.rows_side_output:,} expanded={m.rows_expanded:,} aggregated="
                f"{m.rows_aggregated:,}. This is a bug in sabot_lab: please report it with "
                f"the plan (result.explain()).")

    def diagnose(self) -> Diagnosis:
        """What looks wrong in this run: a join that matched nothing (with example keys from
        both sides), small batches, a Python hot spot, an unoptimized plan, unused columns,
        large reference tables or keyed state; each with a fix. See
        :mod:`sabot_lab.diagnosis`."""
        from sabot_lab.diagnosis import diagnose

        return diagnose(self)

    def explain(self) -> str:
        """The executed plan with rows in/out and time on every operator."""
        return self.plan.explain()

    def to_pandas(self) -> pd.DataFrame:
        """The output table as a pandas DataFrame."""
        if self.table is None:
            raise ValueError("this run had no collecting sink; its output went elsewhere")
        return self.table.to_pandas()

    def summary(self) -> dict[str, object]:
        """Headline figures: rows in and out, side-output rows, time, throughput."""
        return {
            "runner": self.runner,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            **{f"side_output.{k}": v.num_rows for k, v in self.side_outputs.items()},
            "execution_time_ms": round(self.execution_time_ms, 1),
            "setup_ms": round(self.setup_ms, 1),
            "rows_per_second": round(self.rows_per_second),
        }

    def __repr__(self) -> str:
        head = ", ".join(f"{k}={v}" for k, v in self.summary().items())
        return f"Result({head})\n{self.explain()}"

    def _repr_html_(self) -> str:
        summary = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{v:,}</td></tr>"
            if isinstance(v, int | float) else
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
            for k, v in self.summary().items()
        )
        metrics = self.metrics[_SHOWN].to_html(index=False, float_format=lambda x: f"{x:.4f}")
        preview = ""
        if self.table is not None:
            preview = self.table.slice(0, 5).to_pandas().to_html(index=False)
            preview = f"<p><b>First rows</b> of {self.table.num_rows:,}</p>{preview}"
        return (
            f"<div><p><b>sabot_lab Result</b></p><table>{summary}</table>"
            f"<p><b>Operators</b></p>{metrics}{preview}</div>"
        )
