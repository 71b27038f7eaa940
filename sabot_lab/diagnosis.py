"""Troubleshooting a run: why a join came out empty, why a job is slow, why it uses memory.

:func:`diagnose` reads a :class:`~sabot_lab.result.Result` (its plan, per-operator metrics and
keyed state) and returns :class:`Finding`\\ s, each with what was seen, the evidence and what
to do. For an enrichment that matched nothing it looks at a sample of the stream's keys and
the reference keys (type mismatch, numbers stored as text, case or whitespace differences,
simply disjoint values, with examples of each side).

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> trades = pa.table({"sec_id": ["1", "2", "3"], "qty": [10, 20, 30]})
>>> securities = sl.Table(pa.table({"sec_id": ["01", "02"], "symbol": ["A", "B"]}),
...                       key="sec_id")
>>> result = sl.Stream.from_table(trades).enrich(securities, on="sec_id").run()
>>> print(result.diagnose().findings[0].title)
enrich on sec_id matched no row
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from html import escape
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    NO_WATERMARK,
    Enrich,
    KeyedProcess,
    MapBatches,
    Node,
    Sink,
    Source,
    Watermark,
    WindowAggregate,
)
from sabot_lab.plan.windows import format_duration

__all__ = ["Diagnosis", "Finding", "diagnose"]

#: Batches smaller than this make per-batch overhead dominate.
SMALL_BATCH_ROWS = 2_000
#: Keyed state larger than this is worth a look.
LARGE_STATE_BYTES = 512 * 2**20
#: Reference tables larger than this cost memory in every process (or worker) that uses them.
LARGE_REFERENCE_BYTES = 256 * 2**20
#: A window that sends more than this share of its rows to ``late`` is worth a look.
LATE_SHARE = 0.5


@dataclass
class Finding:
    """One thing :func:`diagnose` noticed."""

    kind: str  # "empty join", "event time", "throughput" or "memory"
    title: str
    evidence: list[str] = field(default_factory=list)
    fix: str = ""

    def __str__(self) -> str:
        lines = [f"[{self.kind}] {self.title}", *(f"  - {e}" for e in self.evidence)]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


@dataclass
class Diagnosis:
    """The findings about one run (none: nothing looked wrong)."""

    findings: list[Finding]

    def __bool__(self) -> bool:
        return bool(self.findings)

    def __repr__(self) -> str:
        if not self.findings:
            return ("Diagnosis: nothing looks wrong (no empty joins, no stalled or jumping "
                    "watermarks, no slow or memory-hungry spots)")
        return "Diagnosis:\n" + "\n".join(str(f) for f in self.findings)

    def _repr_html_(self) -> str:
        if not self.findings:
            return "<p><b>Diagnosis:</b> nothing looks wrong.</p>"
        items = "".join(
            f"<li><b>{escape(f.title)}</b> <i>({escape(f.kind)})</i><ul>"
            + "".join(f"<li>{escape(e)}</li>" for e in f.evidence)
            + (f"<li><b>fix:</b> {escape(f.fix)}</li>" if f.fix else "") + "</ul></li>"
            for f in self.findings)
        return f"<p><b>Diagnosis</b></p><ul>{items}</ul>"


def diagnose(result: Any) -> Diagnosis:
    """What looks wrong in ``result``: empty or mostly unmatched joins, low throughput, high
    memory; each finding with evidence and a fix."""
    operators = result.executed_plan.operators()
    metrics = dict(zip((id(n) for n in operators), result.operator_metrics, strict=True))
    findings: list[Finding] = []
    for node in operators:
        if isinstance(node, Enrich):
            findings += _join_findings(node, metrics[id(node)])
    findings += _event_time_findings(result, operators, metrics)
    findings += _throughput_findings(result, operators, metrics)
    findings += _memory_findings(result, operators, metrics)
    return Diagnosis(findings)


# --- joins ------------------------------------------------------------------------------------

def _first_batch(node: Node) -> pa.Table | None:
    """The rows ``node`` produces from the first batch of its source(s) (a cheap sample)."""
    from sabot_lab.ops.sinks import CollectSink
    from sabot_lab.ops.sources import TableScan
    from sabot_lab.runtime.local import LocalRunner

    def sampled(n: Node) -> Node:
        if not isinstance(n, Source):
            return n
        batch = next(iter(n.scan.batches()), None)
        table = n.scan.schema.empty_table() if batch is None else pa.Table.from_batches([batch])
        return dataclasses.replace(n, scan=TableScan(table))

    try:
        return LocalRunner(threads=1).run(JobGraph(Sink(node.map(sampled), CollectSink()))).table
    except Exception:  # a sample is a courtesy: the diagnosis goes on without it
        return None


def _examples(values: pa.Array, n: int = 3) -> list[object]:
    return pc.unique(values.drop_null()).slice(0, n).to_pylist()


def _join_findings(node: Enrich, m: Any) -> list[Finding]:
    if not m.rows_in:
        return []
    stream_keys = [s for s, _ in node.on]
    ref_keys = [r for _, r in node.on]
    matched = m.rows_in - m.unmatched
    label = ", ".join(stream_keys)
    if matched and m.unmatched / m.rows_in < 0.5:
        return []
    finding = Finding(
        "empty join",
        f"enrich on {label} matched no row" if not matched else
        f"enrich on {label} matched only {matched:,} of {m.rows_in:,} rows",
        [f"{m.rows_in:,} rows came in, {m.unmatched:,} found no reference row "
         f"({m.null_keys:,} of them with a null key)"])
    sample = _first_batch(node.child)
    ref = node.reference.data
    for s, r in zip(stream_keys, ref_keys, strict=True):
        left_type, right_type = node.child.schema.field(s).type, ref.schema.field(r).type
        if left_type != right_type:
            finding.evidence.append(f"key types differ: stream {s!r} is {left_type}, "
                                    f"reference {r!r} is {right_type}")
        if sample is None or not sample.num_rows:
            continue
        left, right = sample[s].combine_chunks(), ref[r].combine_chunks()
        finding.evidence.append(f"stream {s!r} values: {_examples(left)}; reference {r!r} "
                                f"values: {_examples(right)}")
        finding.fix = _key_fix(left, right, s, r) or finding.fix
    if not finding.fix:
        finding.fix = ("check that both sides use the same codes (compare a few values above), "
                       "or use how='left' / unmatched='side_output' to see which rows miss")
    return [finding]


def _normalized(values: pa.Array, how: str) -> set:
    text = values.cast(pa.string()) if not pa.types.is_string(values.type) else values
    if how == "case":
        text = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    elif how == "number":
        text = pc.utf8_ltrim(pc.utf8_trim_whitespace(text), characters="0")
    return set(pc.unique(text.drop_null()).to_pylist())


def _key_fix(left: pa.Array, right: pa.Array, s: str, r: str) -> str:
    """Why two key columns that should match do not, as advice (empty if nothing found)."""
    if pa.types.is_dictionary(left.type):
        left = left.dictionary_decode()
    if pa.types.is_dictionary(right.type):
        right = right.dictionary_decode()
    plain = _normalized(left, "plain") & _normalized(right, "plain")
    if plain and left.type != right.type:
        return (f"the same values in different types: cast one side, e.g. "
                f"stream.with_columns({s}=sl.col({s!r}).cast(...)) to the reference type")
    for how, advice in (("case", "upper/lower case or surrounding spaces differ: normalize "
                                 "both sides (e.g. a projection that trims and lower-cases)"),
                        ("number", "the same numbers written differently (leading zeros or "
                                   "numbers stored as text): cast both sides to integers")):
        if _normalized(left, how) & _normalized(right, how):
            return advice
    return ""


# --- event time -------------------------------------------------------------------------------

def _event_time_findings(result: Any, operators: tuple[Node, ...],
                         metrics: dict[int, Any]) -> list[Finding]:
    watermarks = [n for n in operators if isinstance(n, Watermark)]
    windows = [n for n in operators if isinstance(n, WindowAggregate)]
    late, flooded = [], set()
    for node in windows:
        source = next((w for w in watermarks if w.time_col == node.time_col), None)
        finding = _late_flood(node, metrics[id(node)], source,
                              metrics[id(source)] if source is not None else None,
                              result.side_outputs.get("late"))
        if finding is not None:
            late.append(finding)
            flooded.add(id(source))
    stalled = []
    for node in watermarks:
        # A watermark that jumped far ahead at once also stands still after; the rows then
        # go to 'late', which that finding explains: not state held, so not this one.
        finding = _stalled_watermark(node, metrics[id(node)], windows, metrics)
        if finding is not None and id(node) not in flooded:
            stalled.append(finding)
    return stalled + late

def _event_time(node: Watermark, value: int | None) -> str:
    """A watermark (in the time column's unit) as the column shows its values.

    >>> import pyarrow as pa
    >>> from sabot_lab.ops.sources import TableScan
    >>> t = pa.table({"t": pa.array([0], pa.timestamp("s"))})
    >>> _event_time(Watermark(Source(TableScan(t)), "t"), 86_400)
    '1970-01-02 00:00:00'
    """
    if value is None or value == NO_WATERMARK:
        return "none (no row with a usable event time yet)"
    column = node.child.schema.field(node.time_col).type
    if not pa.types.is_timestamp(column):
        return f"{value:,} {node.time_unit}"
    try:
        return str(pa.scalar(value, pa.timestamp(node.time_unit, column.tz)).as_py())
    except (OverflowError, ValueError, pa.ArrowInvalid):  # beyond what datetime can show
        return f"{value:,} {node.time_unit} after the epoch"


def _stalled_watermark(node: Watermark, m: Any, windows: list[WindowAggregate],
                       metrics: dict[int, Any]) -> Finding | None:
    """A watermark that never moved after its first batch while rows kept coming: the
    windows after it cannot close, so their state grows until the input ends."""
    if m.watermark_moves > 1 or not m.rows_watermark_stalled:
        return None
    finding = Finding(
        "event time",
        f"the watermark of {node.label} stayed at its first value while "
        f"{m.rows_watermark_stalled:,} of {m.rows_in:,} rows arrived",
        [f"watermark {_event_time(node, m.watermark)} (the largest {node.time_col!r} so far "
         f"minus max_out_of_orderness {format_duration(node.out_of_orderness_ns)}) after its "
         f"first batch and after "
         f"every batch since"])
    for window in windows:
        finding.evidence.append(
            f"{window.label} closes a window only when the watermark passes its end, so the "
            f"windows of the rows that came since stayed open (in state) until the input "
            f"ended; {metrics[id(window)].rows_side_output:,} rows went to 'late'")
    finding.fix = (
        f"the watermark follows the largest {node.time_col!r} seen so far: check that "
        f"{node.time_col!r} is each row's event time (not a constant such as a load date) "
        f"and that its unit is right; if a row far in the future set it, pass "
        f"max_future_skew (with_watermark(..., max_future_skew='1h'), or max_future_skew= "
        f"of the analytics patterns) so that such rows go to the 'rejected' side output")
    return finding


def _late_flood(node: WindowAggregate, m: Any, source: Watermark | None, wm: Any,
                late: pa.Table | None) -> Finding | None:
    """Most rows of a window operator were late: usually one row far ahead of the rest
    (a bad clock) pushed the watermark past them."""
    rows = m.rows_in + m.rows_expanded  # a row counts once per window it belongs to
    if not rows or m.rows_side_output / rows <= LATE_SHARE:
        return None
    finding = Finding(
        "event time",
        f"{m.rows_side_output:,} of {rows:,} rows reaching {node.label} were late",
        ["they went to the 'late' side output: the watermark had passed the end of "
         "their window (plus allowed lateness)"])
    if source is not None and wm is not None:
        finding.evidence.append(f"the watermark ended at {_event_time(source, wm.watermark)}")
    if late is not None and late.num_rows and "late_by" in late.column_names:
        late_by = late["late_by"]  # duration: min_max has no kernel for it, int64 has
        low, high = (pa.scalar(v.as_py(), late_by.type).as_py()
                     for v in pc.min_max(late_by.cast(pa.int64())).values())
        finding.evidence.append(f"late by {low} to {high}")
    finding.fix = (
        "if a row far ahead of the others (a bad clock) pushed the watermark, pass "
        "max_future_skew (with_watermark(..., max_future_skew='1h'), or max_future_skew= of "
        "the analytics patterns) so that such rows go to the 'rejected' side output; if the "
        "stream really is this far out of order, raise max_out_of_orderness or allowed_lateness")
    return finding


# --- throughput and memory --------------------------------------------------------------------

def _throughput_findings(result: Any, operators: tuple[Node, ...],
                         metrics: dict[int, Any]) -> list[Finding]:
    findings = []
    for node in operators:
        m = metrics[id(node)]
        if isinstance(node, Source) and m.batches_out > 4 and (
                m.rows_out / m.batches_out < SMALL_BATCH_ROWS):
            findings.append(Finding(
                "throughput", f"small batches from {node.label}",
                [f"{m.rows_out:,} rows in {m.batches_out:,} batches: "
                 f"{m.rows_out / m.batches_out:,.0f} rows per batch"],
                "use batches of 10,000-100,000 rows (from_table(..., batch_size=65_536)): "
                "each batch costs a fixed overhead in every operator"))
    total = sum(metrics[id(n)].seconds for n in operators) or 1.0
    for node in operators:
        share = metrics[id(node)].seconds / total
        slow_python = isinstance(node, MapBatches) or (
            isinstance(node, KeyedProcess)
            and type(node.function).__name__ == "PythonProcessFunction")
        if slow_python and share > 0.5:
            findings.append(Finding(
                "throughput", f"{node.label} takes {share:.0%} of the operators' time",
                [f"{metrics[id(node)].seconds * 1000:,.0f} ms of {total * 1000:,.0f} ms"],
                "a Python function is the hot spot: express it with expressions "
                "(sl.col(...) arithmetic, filter, with_columns), pyarrow.compute, or a numba "
                "kernel (a ProcessFunction for keyed state)"))
    if result.optimizer_stats is None and result.logical_plan is not None:
        from sabot_lab.plan.optimizer import PlanOptimizer

        optimizer = PlanOptimizer()
        optimizer.optimize(result.logical_plan)
        counts = optimizer.get_stats().counts()
        if counts:
            rules = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
            findings.append(Finding(
                "throughput", "the plan ran without the optimizer",
                [f"rules that would apply: {rules}"],
                "run with optimize=True (the default): the rows are the same"))
    return findings


def _memory_findings(result: Any, operators: tuple[Node, ...],
                     metrics: dict[int, Any]) -> list[Finding]:
    findings = []
    if result.optimizer_stats is None and result.logical_plan is not None:
        from sabot_lab.plan.optimizer import PlanOptimizer

        optimized = PlanOptimizer().optimize(result.logical_plan)
        for source in (n for n in optimized.operators() if isinstance(n, Source)):
            if source.columns is not None and len(source.columns) < len(source.scan.schema):
                unused = [c for c in source.scan.schema.names if c not in source.columns]
                findings.append(Finding(
                    "memory", f"{source.scan.describe()} is read whole, but only "
                    f"{len(source.columns)} of its {len(source.scan.schema)} columns are used",
                    [f"unused: {unused[:8]}{' ...' if len(unused) > 8 else ''}"],
                    "run with the optimizer (it prunes them at the source), or select the "
                    "columns you need early"))
    for node in operators:
        if isinstance(node, Enrich) and node.reference.data.nbytes > LARGE_REFERENCE_BYTES:
            data = node.reference.data
            findings.append(Finding(
                "memory", f"the reference table of {node.label} is large",
                [f"{data.num_rows:,} rows, {data.nbytes / 2**20:,.0f} MB, "
                 f"{data.num_columns} columns; it is held once per process and per Dask worker"],
                "keep only the reference columns you need (enrich(..., columns=[...])) and "
                "filter the reference table first"))
        m = metrics[id(node)]
        if isinstance(node, KeyedProcess) and (m.state_bytes or 0) > LARGE_STATE_BYTES:
            findings.append(Finding(
                "memory", f"{node.label} holds {m.state_bytes / 2**20:,.0f} MB of keyed state",
                [f"{m.state_keys:,} keys, {m.state_bytes / max(m.state_keys or 1, 1):,.0f} "
                 f"bytes per key"],
                "forget idle keys with a ttl, keep fewer fields per key, or use "
                "state='rocksdict' for state larger than memory"))
    return findings
