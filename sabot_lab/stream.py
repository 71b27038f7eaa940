"""The fluent Stream API: every method returns a new Stream around a bigger logical plan.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> trades = pa.table({"sec_id": [1, 2, 3, 1], "qty": [10, 500, 20, 700]})
>>> securities = sl.Table(pa.table({"sec_id": [1, 2], "symbol": ["AAPL", "MSFT"]}), key="sec_id")
>>> big = (
...     sl.Stream.from_table(trades)
...     .filter(sl.col("qty") >= 100)
...     .enrich(securities, on="sec_id")
...     .select("symbol", quantity="qty")
... )
>>> big.to_table().to_pydict()
{'symbol': ['MSFT', 'AAPL'], 'quantity': [500, 700]}
>>> print(big.explain())
Sink[collect]
└─ Project[symbol, quantity=col('qty')]
   └─ Enrich[inner on sec_id +['symbol']]
      └─ Filter[(col('qty') >= 100)]
         └─ Source[table 4 rows]
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from sabot_lab.dashboard import Dashboard
from sabot_lab.expr import Expr, Literal, col
from sabot_lab.live import LiveJob
from sabot_lab.ops.batches import DEFAULT_BATCH_SIZE
from sabot_lab.ops.csv import CsvScan
from sabot_lab.ops.sinks import CallbackSink, CollectSink, ParquetSink
from sabot_lab.ops.sources import (
    BatchesScan,
    GeneratorScan,
    ParquetScan,
    ReplayScan,
    TableScan,
)
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    WATERMARK_COLUMN,
    AsOfEnrich,
    Enrich,
    Filter,
    KeyedProcess,
    MapBatches,
    Node,
    PlanError,
    Project,
    Sink,
    SinkTarget,
    Source,
    TopN,
    Union,
    Watermark,
    WindowAggregate,
)
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.plan.windows import (
    AggSpec,
    DurationLike,
    Hopping,
    Session,
    Tumbling,
    non_negative,
    parse_duration,
    to_unit,
)
from sabot_lab.reference import Table, VersionFeed, table_from_pandas
from sabot_lab.result import Result
from sabot_lab.runtime.checkpoint import CheckpointSpec
from sabot_lab.runtime.execute import run_job
from sabot_lab.runtime.local import run_versions

__all__ = ["Stream", "WindowedStream"]


def _as_expr(value: Any) -> Expr:
    return value if isinstance(value, Expr) else Literal(value)


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


class Stream:
    """A stream of Arrow record batches and the plan that produces it.

    Build one with a ``from_*`` constructor, chain operators, and finish with a sink
    (:meth:`to_table`, :meth:`to_pandas`, :meth:`to_parquet`, :meth:`for_each_batch`) or
    :meth:`run`, which returns a :class:`~sabot_lab.result.Result` with metrics.
    Plans are validated as they are built: an unknown column fails at once, naming it.
    """

    def __init__(self, node: Node) -> None:
        node.schema  # noqa: B018 - validates the new node now, not at run time
        self.node = node

    # --- sources -------------------------------------------------------------------------
    @classmethod
    def from_table(cls, table: pa.Table, batch_size: int = DEFAULT_BATCH_SIZE) -> Stream:
        """Stream an in-memory ``pyarrow.Table`` in batches of ``batch_size`` rows.

        >>> Stream.from_table(pa.table({"a": [1, 2, 3]}), batch_size=2).schema
        a: int64
        """
        return cls(Source(TableScan(table, batch_size)))

    @classmethod
    def from_pandas(cls, frame: pd.DataFrame, batch_size: int = DEFAULT_BATCH_SIZE) -> Stream:
        """Stream a pandas DataFrame (its index is not kept). A column that does not convert
        to one Arrow type (an object column mixing numbers and strings) raises
        :class:`~sabot_lab.errors.ColumnConversionError` naming it.

        >>> Stream.from_pandas(pd.DataFrame({"a": [1.5]})).to_table().to_pydict()
        {'a': [1.5]}
        """
        return cls.from_table(table_from_pandas(frame), batch_size)

    @classmethod
    def from_batches(
        cls,
        batches: Iterable[pa.RecordBatch] | Callable[[], Iterable[pa.RecordBatch]],
        schema: pa.Schema,
        source_id: str | None = None,
    ) -> Stream:
        """Stream record batches from an iterable, checking each against ``schema``.

        A one-shot iterator can run once; pass a list, or a function that returns a fresh
        iterator, to run the stream again. A list is identified by its contents; an iterator
        or a function cannot be, so a checkpointed run over one resumes only when
        ``source_id`` names its data (change it when the data changes) or with
        ``resume="trust"``.

        >>> schema = pa.schema({"a": pa.int64()})
        >>> batches = [pa.record_batch({"a": [1]}), pa.record_batch({"a": [2]})]
        >>> Stream.from_batches(batches, schema).to_table().num_rows
        2
        """
        return cls(Source(BatchesScan(batches, schema), source_id=source_id))

    @classmethod
    def from_parquet(cls, path: str | Path, batch_size: int = DEFAULT_BATCH_SIZE) -> Stream:
        """Stream a Parquet file or directory batch by batch (never the whole file at once)."""
        return cls(Source(ParquetScan(path, batch_size)))

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        schema: pa.Schema | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bad_lines: str = "raise",
    ) -> Stream:
        """Stream a CSV file; ``schema`` fixes column types (others are inferred).

        A row that does not parse raises an error naming the file and the line, or with
        ``bad_lines="side_output"`` goes to the ``malformed`` side output.
        """
        return cls(Source(CsvScan(path, schema, batch_size, bad_lines)))

    @classmethod
    def from_generator(
        cls,
        make_batch: Callable[[int], pa.RecordBatch],
        n_batches: int,
        schema: pa.Schema | None = None,
        source_id: str | None = None,
    ) -> Stream:
        """Synthetic data: batch ``i`` is ``make_batch(i)`` for ``i`` in ``range(n_batches)``.

        What a function makes cannot be identified without calling it: a checkpointed run
        resumes only when ``source_id`` names the data (e.g. ``"txns-seed-2"``; change it
        when the data changes) or with ``resume="trust"``.

        >>> make = lambda i: pa.record_batch({"i": [i, i]})
        >>> Stream.from_generator(make, n_batches=3).to_table()["i"].to_pylist()
        [0, 0, 1, 1, 2, 2]
        """
        if schema is None:
            schema = make_batch(0).schema
        return cls(Source(GeneratorScan(make_batch, n_batches, schema), source_id=source_id))

    @classmethod
    def replay(cls, table: pa.Table, time_col: str | None = None, speed: float = 1.0,
               rows_per_second: float | None = None, batch_size: int = 1_000) -> Stream:
        """Replay a bounded table "live": batches arrive at the pace of ``time_col``,
        ``speed`` times real time (``speed=60``: a minute of events per second), or at a
        fixed ``rows_per_second``. For watching windows and dashboards fill up.

        >>> t = pa.table({"t": [0, 1, 2, 3]})
        >>> Stream.replay(t, rows_per_second=1e6, batch_size=2).to_table().num_rows
        4
        """
        return cls(Source(ReplayScan(table, time_col, speed, rows_per_second, batch_size)))

    # --- operators -----------------------------------------------------------------------
    @property
    def schema(self) -> pa.Schema:
        """The schema of the stream's batches."""
        return self.node.schema

    def filter(self, predicate: Expr | bool) -> Stream:
        """Keep rows where ``predicate`` is true (null counts as false, as in SQL).

        >>> s = Stream.from_table(pa.table({"a": [1, 5]}))
        >>> s.filter(col("a") > 2).to_table()["a"].to_pylist()
        [5]
        """
        if isinstance(predicate, str):
            raise PlanError(
                f"filter() takes an expression, not a string: write e.g. "
                f"filter(sl.col('qty') >= 100) instead of filter({predicate!r})")
        return Stream(Filter(self.node, _as_expr(predicate)))

    def select(self, *columns: str, **renamed_or_computed: str | Expr) -> Stream:
        """Keep, rename and compute columns: ``select("a", b="old_b", c=col("a") * 2)``.

        A string keyword value renames a column; an expression computes one.

        >>> s = Stream.from_table(pa.table({"a": [1], "b": [2]}))
        >>> s.select("a", total=col("a") + col("b"), bee="b").to_table().to_pydict()
        {'a': [1], 'total': [3], 'bee': [2]}
        """
        exprs: list[tuple[str, Expr]] = [(c, col(c)) for c in columns]
        for name, value in renamed_or_computed.items():
            exprs.append((name, col(value) if isinstance(value, str) else _as_expr(value)))
        return Stream(Project(self.node, tuple(exprs)))

    def with_columns(self, **exprs: Expr | Any) -> Stream:
        """Add or replace columns, keeping all others in place.

        >>> s = Stream.from_table(pa.table({"a": [1, 2]}))
        >>> s.with_columns(a=col("a") * 10, b=1).to_table().to_pydict()
        {'a': [10, 20], 'b': [1, 1]}
        """
        existing = [(n, exprs[n] if n in exprs else col(n)) for n in self.schema.names]
        added = [(n, e) for n, e in exprs.items() if n not in self.schema.names]
        return Stream(Project(self.node, tuple((n, _as_expr(e)) for n, e in existing + added)))

    def map_batches(
        self,
        fn: Callable[[pa.RecordBatch], pa.RecordBatch],
        schema: pa.Schema | None = None,
        name: str | None = None,
    ) -> Stream:
        """Apply a vectorized function to every batch.

        ``fn`` must be pure (batches may be processed concurrently). Without ``schema`` it is
        inferred by calling ``fn`` on an empty batch.

        >>> import pyarrow.compute as pc
        >>> s = Stream.from_table(pa.table({"a": [1, 2]}))
        >>> double = lambda b: pa.record_batch({"a2": pc.multiply(b["a"], 2)})
        >>> s.map_batches(double).to_table().to_pydict()
        {'a2': [2, 4]}
        """
        label = name or getattr(fn, "__name__", "map_batches")
        if schema is None:
            try:
                probe = fn(_empty_batch(self.schema))
            except Exception as exc:
                raise PlanError(
                    f"MapBatches[{label}]: could not infer the output schema by calling the "
                    f"function on an empty batch ({exc!r}); pass schema= explicitly"
                ) from exc
            schema = probe.schema
        return Stream(MapBatches(self.node, fn, schema, label))

    def enrich(
        self,
        reference: Table | Stream,
        on: str | Sequence[str] | Mapping[str, str] | None = None,
        how: str = "inner",
        columns: Sequence[str] | None = None,
        suffix: str = "_ref",
        unmatched: str = "drop",
        dictionary_strings: bool = True,
        as_of: str | None = None,
        tolerance: DurationLike | None = None,
    ) -> Stream:
        """Lookup-join the stream against a reference :class:`~sabot_lab.reference.Table`.

        With a versioned table (``Table(..., valid_from=...)``) and ``as_of``, a temporal
        join: each row gets the version of its key valid at its ``as_of`` time. The versions
        may also arrive as a stream of their own: pass that ``Stream``, with a watermark on
        its ``valid_from`` column, as ``reference`` (and ``on=`` as a mapping to its key
        columns); versions later than its watermark go to the ``late_versions`` side output
        (see :class:`~sabot_lab.reference.VersionFeed`).

        Parameters
        ----------
        reference
            The reference table and its key.
        on
            Stream key column(s) matching the reference key, in order: a name, a list of
            names (same names on both sides), or ``{stream_column: reference_key}``.
            Default: the reference key names.
        how
            ``"inner"``: rows without a match leave the stream; ``"left"``: they stay, with
            nulls in the reference columns.
        columns
            Reference columns to add (default: all but the key).
        suffix
            Appended to reference column names that the stream already has.
        unmatched
            For inner joins: ``"drop"`` (counted in metrics) or ``"side_output"`` (rows go to
            ``result.side_outputs["unmatched"]`` with a ``reason``).
        dictionary_strings
            Return string/binary reference columns dictionary-encoded (indices into the
            reference column: no per-row string copy, and pandas gets a Categorical).
            ``False`` returns plain strings.
        as_of
            The stream's time column (timestamp, date or integer time) for a versioned
            table: each row gets the latest version of its key whose ``valid_from`` is at or
            before that time (and, with ``valid_to``, still valid then). Rows before their
            key's first version are unmatched, with that reason in the side output.
        tolerance
            With ``as_of``: the oldest a version may be at the row's time (``"7d"``, a
            timedelta; for an integer time column, an int in its unit); an older one leaves
            the row unmatched.

        >>> versions = Table(pa.table({"k": ["x", "x"], "from": [0, 10], "tier": ["a", "b"]}),
        ...                  key="k", valid_from="from")
        >>> s = Stream.from_table(pa.table({"k": ["x", "x", "x"], "t": [-5, 3, 10]}))
        >>> s.enrich(versions, as_of="t", how="left", columns=["tier"],
        ...          dictionary_strings=False).to_table().to_pydict()
        {'k': ['x', 'x', 'x'], 't': [-5, 3, 10], 'tier': [None, 'a', 'b']}

        >>> ref = Table(pa.table({"k": ["x"], "v": [1]}), key="k")
        >>> s = Stream.from_table(pa.table({"k": ["x", "y"]}))
        >>> s.enrich(ref, how="left").to_table().to_pydict()
        {'k': ['x', 'y'], 'v': [1, None]}
        """
        if isinstance(reference, Stream):
            reference = _version_feed(reference, on)
        if not isinstance(reference, Table | VersionFeed):
            raise TypeError(
                "enrich() takes a sabot_lab.Table(data, key=...) as reference, or a Stream of "
                f"versions, got {type(reference).__name__}"
            )
        if on is None:
            pairs = tuple((k, k) for k in reference.key)
        elif isinstance(on, str):
            pairs = ((on, reference.key[0] if len(reference.key) == 1 else on),)
        elif isinstance(on, Mapping):
            pairs = tuple(on.items())
        else:
            pairs = tuple((k, k) for k in on)
        if sorted(r for _, r in pairs) != sorted(reference.key):
            raise PlanError(
                f"enrich on={on!r} must match every reference key column {list(reference.key)}"
                f" exactly once; pass a mapping {{stream_column: reference_key}} if names differ"
            )
        order = {r: i for i, r in enumerate(reference.key)}
        pairs = tuple(sorted(pairs, key=lambda p: order[p[1]]))
        if columns is None:
            columns = [c for c in reference.schema.names if c not in reference.key]
        if unmatched not in ("drop", "side_output"):
            raise ValueError(f"unmatched must be 'drop' or 'side_output', got {unmatched!r}")
        if reference.versioned != (as_of is not None):
            raise PlanError(
                f"enrich(as_of={as_of!r}) against {reference!r}: a versioned table "
                f"(Table(..., valid_from=...)) needs as_of='<the stream's time column>', and "
                f"as_of needs a versioned table")
        if as_of is None:
            if tolerance is not None:
                raise PlanError("tolerance applies to an as-of join only: pass as_of= too")
            return Stream(Enrich(self.node, reference, pairs, how, tuple(columns), suffix,
                                 unmatched == "side_output", dictionary_strings))
        return Stream(AsOfEnrich(self.node, reference, pairs, how, tuple(columns), suffix,
                                 unmatched == "side_output", dictionary_strings, as_of,
                                 self._tolerance(as_of, tolerance),
                                 isinstance(reference, VersionFeed)))

    def _tolerance(self, as_of: str, tolerance: DurationLike | None) -> int | None:
        """An as-of join's tolerance in the unit it compares ``as_of`` in."""
        if tolerance is None or as_of not in self.schema.names:
            return non_negative("tolerance", tolerance)
        if pa.types.is_integer(self.schema.field(as_of).type):
            if not isinstance(tolerance, int) or isinstance(tolerance, bool):
                raise PlanError(f"as_of column {as_of!r} is an integer time: give tolerance "
                                f"as an int in its unit, not {tolerance!r}")
            return tolerance
        return non_negative("tolerance", tolerance)

    def with_watermark(
        self,
        time_col: str,
        max_out_of_orderness: DurationLike = "0s",
        allowed_lateness: DurationLike = "0s",
        max_future_skew: DurationLike | None = None,
        unit: str | None = None,
        out_of_orderness: DurationLike | None = None,
    ) -> Stream:
        """Declare event time: ``time_col`` and how out of order rows may arrive.

        Durations are text (``"10s"``, ``"1h30min"``), a ``datetime.timedelta``, or an int
        of nanoseconds.

        Parameters
        ----------
        time_col
            A timestamp column, or an integer epoch column with its ``unit``.
        max_out_of_orderness
            The watermark trails the largest event time seen by this much (e.g. ``"10s"``);
            rows within the bound are never late.
        allowed_lateness
            How long after a window's end a late row still updates it (emitted again with
            ``is_update``); later rows go to the ``late`` side output.
        max_future_skew
            Rows more than this ahead of every earlier row (a bad clock) go to the
            ``rejected`` side output instead of moving the watermark.
        unit
            ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` for integer epoch columns.
        out_of_orderness
            Deprecated alias of ``max_out_of_orderness``.
        """
        if out_of_orderness is not None:
            warnings.warn("with_watermark(out_of_orderness=...) is deprecated: use "
                          "max_out_of_orderness=", DeprecationWarning, stacklevel=2)
            max_out_of_orderness = out_of_orderness
        return Stream(Watermark(
            self.node, time_col, non_negative("max_out_of_orderness", max_out_of_orderness),
            non_negative("allowed_lateness", allowed_lateness),
            non_negative("max_future_skew", max_future_skew), unit))

    def group_by(self, *keys: str) -> WindowedStream:
        """Grouping needs windows on a stream: use ``window(...).group_by(...)``."""
        raise PlanError(
            "a stream never ends, so groups need windows: write "
            "with_watermark(time_column).window(sl.tumbling('5min')).group_by(...).agg(...)")

    def key_by(self, *keys: str) -> KeyedStream:
        """Partition the stream by key for per-key state: finish with ``.process(fn)``."""
        return KeyedStream(self, tuple(keys))

    def window(self, window: Tumbling | Hopping | Session) -> WindowedStream:
        """Group rows into event-time windows; finish with ``.agg(...)`` or
        ``.group_by(keys).agg(...)``. Needs :meth:`with_watermark` upstream."""
        return WindowedStream(self, window, ())

    def top_n(self, n: int, by: str, with_ties: bool = False) -> Stream:
        """Keep the ``n`` groups with the largest ``by`` in every window, with their ``rank``
        (ties: smaller group keys first). ``with_ties=True`` also keeps every group tied with
        the ``n``-th, tied groups sharing a rank (SQL's ``RANK() <= n``).

        Applies to a windowed aggregation without allowed lateness (an update would change a
        ranking already emitted).
        """
        window = self.node
        if not isinstance(window, WindowAggregate):
            raise PlanError("top_n() ranks the groups of a window: call it right after "
                            "window(...).group_by(...).agg(...)")
        if window.allowed_lateness_ns:
            raise PlanError("top_n() with allowed lateness is not supported yet: updates "
                            "would change rankings already emitted. Use with_watermark(..., "
                            "allowed_lateness='0s') for the ranked job")
        return Stream(TopN(self.node, n, by, group_keys=window.keys, with_ties=with_ties))

    def union(self, *others: Stream) -> Stream:
        """Concatenate streams with the same columns and types.

        >>> a = Stream.from_table(pa.table({"x": [1]}))
        >>> a.union(Stream.from_table(pa.table({"x": [2]}))).to_table()["x"].to_pylist()
        [1, 2]
        """
        return Stream(Union((self.node, *(o.node for o in others))))

    # --- plans and sinks -----------------------------------------------------------------
    def graph(self, target: SinkTarget | None = None) -> JobGraph:
        """The job graph of this stream ending in ``target`` (default: collect a table)."""
        return JobGraph(Sink(self.node, target if target is not None else CollectSink()))

    def explain(self, show_schema: bool = False) -> str:
        """The plan as text, root first."""
        return self.graph().explain(show_schema=show_schema)

    def optimized(self, target: SinkTarget | None = None) -> JobGraph:
        """The plan after :class:`~sabot_lab.plan.optimizer.PlanOptimizer` rewrote it."""
        return PlanOptimizer().optimize(self.graph(target))

    def run(self, runner: Any = None, target: SinkTarget | None = None,
            optimize: bool | PlanOptimizer = True, checkpoint_dir: str | Path | None = None,
            checkpoint_every: int = 10, resume: bool | str = False,
            dashboard: bool | Dashboard = False) -> Result:
        """Execute the stream and return a :class:`~sabot_lab.result.Result`.

        Parameters
        ----------
        runner
            A runner such as :class:`~sabot_lab.runtime.local.LocalRunner` (the default).
        target
            Where the output goes (default: collected into ``result.table``).
        optimize
            Rewrite the plan with the :class:`~sabot_lab.plan.optimizer.PlanOptimizer`
            first (the default; pass an optimizer to use your own rules); the rows are the
            same either way.
        checkpoint_dir, checkpoint_every, resume
            Write a checkpoint (operator state, source positions, output so far) every
            ``checkpoint_every`` source batches; ``resume=True`` continues a run that
            stopped, with the same final output as an uninterrupted run (local runner). A
            checkpoint is bound to the job and its input: resuming another job, other
            parameters or other data raises ``CheckpointError`` saying what differs, as does
            a damaged checkpoint. ``resume="trust"`` also resumes sources that cannot be
            identified (iterators, generator functions without ``source_id``).
        dashboard
            ``True`` or a :class:`~sabot_lab.dashboard.Dashboard`: watch the run live (rows/s
            per operator, the watermark, state size; on Dask the partitions done and the Dask
            dashboard link). In Jupyter it shows a widget; elsewhere it logs a summary.
        """
        checkpoints = None if checkpoint_dir is None else CheckpointSpec(
            checkpoint_dir, checkpoint_every, resume)
        return run_job(self.graph(target), runner, optimize=optimize, checkpoints=checkpoints,
                       dashboard=dashboard)

    def start(self, runner: Any = None, target: SinkTarget | None = None,
              optimize: bool | PlanOptimizer = True) -> LiveJob:
        """Run the stream in the background and return at once with a
        :class:`~sabot_lab.live.LiveJob`: ``job.status``, ``job.latest()`` (the newest
        output), ``job.stop()`` (ends it, returns the result of what was read) and
        ``job.result()`` (waits for the end of the input). For unbounded or slow sources.

        >>> job = Stream.from_table(pa.table({"a": [1, 2, 3]})).start()
        >>> job.result().table["a"].to_pylist()
        [1, 2, 3]
        """
        return LiveJob(self.graph(target), runner, optimize)

    def to_table(self, runner: Any = None, optimize: bool = True) -> pa.Table:
        """Run and return the output as a ``pyarrow.Table``."""
        return self.run(runner, optimize=optimize).table

    def to_pandas(self, runner: Any = None, optimize: bool = True) -> pd.DataFrame:
        """Run and return the output as a pandas DataFrame."""
        return self.to_table(runner, optimize).to_pandas()

    def to_parquet(self, path: str | Path, runner: Any = None, optimize: bool = True,
                   overwrite: bool = False) -> Result:
        """Run and write the output to one Parquet file, which appears whole or not at all.
        An existing file or directory at ``path`` is refused before the job runs; pass
        ``overwrite=True`` to replace a file."""
        return self.run(runner, ParquetSink(path, overwrite=overwrite), optimize)

    def for_each_batch(self, fn: Callable[[pa.RecordBatch], object], runner: Any = None,
                       optimize: bool = True) -> Result:
        """Run and call ``fn`` on every output batch, in order.

        >>> seen = []
        >>> _ = Stream.from_table(pa.table({"a": [1, 2, 3]}), batch_size=2).for_each_batch(
        ...     lambda b: seen.append(b.num_rows))
        >>> seen
        [2, 1]
        """
        return self.run(runner, CallbackSink(fn), optimize)

    def __repr__(self) -> str:
        return f"Stream\n{self.explain()}"

    def _repr_mimebundle_(self, include: object = None, exclude: object = None
                          ) -> dict[str, str]:
        """In Jupyter a stream shows its plan picture (and the plan as text elsewhere)."""
        return self.graph()._repr_mimebundle_(include, exclude)


def _watermark_of(node: Node) -> Watermark:
    """The nearest :class:`Watermark` upstream of ``node`` along single-input operators."""
    while not isinstance(node, Watermark):
        if len(node.children) != 1:
            raise PlanError(
                f"window() needs event time: call with_watermark(time_column, ...) on the "
                f"stream before window() (none found above {node.label})")
        node = node.children[0]
    return node


class WindowedStream:
    """A stream cut into event-time windows, waiting for its aggregates.

    >>> import sabot_lab as sl
    >>> t = pa.table({"t": [1, 2, 70], "k": ["a", "b", "a"], "v": [1.0, 2.0, 3.0]})
    >>> (Stream.from_table(t).with_watermark("t", unit="s").window(sl.tumbling("1min"))
    ...  .group_by("k").agg(n=sl.count(), top=sl.max("v")).to_table()
    ...  .select(["window_start", "k", "n", "top"]).to_pylist())  # doctest: +NORMALIZE_WHITESPACE
    [{'window_start': 0, 'k': 'a', 'n': 1, 'top': 1.0},
     {'window_start': 0, 'k': 'b', 'n': 1, 'top': 2.0},
     {'window_start': 60, 'k': 'a', 'n': 1, 'top': 3.0}]
    """

    def __init__(self, stream: Stream, window: Tumbling | Hopping | Session,
                 keys: tuple[str, ...]
                 ) -> None:
        self.stream = stream
        self.window_spec = window
        self.keys = keys

    def __repr__(self) -> str:
        """What is waiting for ``agg``.

        >>> import sabot_lab as sl
        >>> t = pa.table({"t": [1], "k": ["a"]})
        >>> Stream.from_table(t).with_watermark("t", unit="s").window(sl.tumbling("1min")
        ...                                                          ).group_by("k")
        WindowedStream(tumbling('1min') by ['k']: call .agg(name=sl.count(), ...))
        """
        keys = f" by {list(self.keys)}" if self.keys else ""
        return f"WindowedStream({self.window_spec!r}{keys}: call .agg(name=sl.count(), ...))"

    def group_by(self, *keys: str) -> WindowedStream:
        """Aggregate per key within each window."""
        return WindowedStream(self.stream, self.window_spec, tuple(keys))

    def agg(self, **aggregates: AggSpec) -> Stream:
        """Name the aggregates: ``agg(n=sl.count(), p95=sl.quantile("bytes", 0.95))``."""
        if not aggregates:
            raise PlanError("agg() needs at least one aggregate, e.g. n=sl.count()")
        watermark = _watermark_of(self.stream.node)
        if self.window_spec.is_session and watermark.allowed_lateness_ns:
            raise PlanError(
                "allowed lateness is not supported for session windows; rows after the "
                "watermark go to the late side output (use with_watermark(..., "
                "allowed_lateness='0s'))")
        return Stream(WindowAggregate(
            self.stream.node, self.window_spec, self.keys, tuple(aggregates.items()),
            watermark.time_col, watermark.time_unit, watermark.out_of_orderness_ns,
            watermark.allowed_lateness_ns))


class KeyedStream:
    """A stream partitioned by key, waiting for a keyed process function.

    On a DaskRunner rows are exchanged by a hash of the key, so each agent keeps the state of
    its keys and sees their rows in arrival order: the output equals a local run.
    """

    def __init__(self, stream: Stream, keys: tuple[str, ...]) -> None:
        self.stream = stream
        self.keys = keys

    def __repr__(self) -> str:
        """What is waiting for ``process``.

        >>> Stream.from_table(pa.table({"k": [1]})).key_by("k")
        KeyedStream(by ['k']: call .process(function))
        """
        return f"KeyedStream(by {list(self.keys)}: call .process(function))"

    def process(self, function: Any, state: str = "memory", state_path: str | None = None
                ) -> Stream:
        """Run ``function`` (a :class:`~sabot_lab.process.ProcessFunction`) with per-key
        state kept in ``state``: ``"memory"`` or ``"rocksdict"`` (at ``state_path``, for
        state larger than memory)."""
        return Stream(KeyedProcess(self.stream.node, self.keys, function, state,
                                   None if state_path is None else str(state_path)))


def _version_feed(versions: Stream, on: str | Sequence[str] | Mapping[str, str] | None
                  ) -> VersionFeed:
    """A stream of versions as the reference side of an as-of join: its ``valid_from`` is
    the column its watermark is on (below any stateless steps), its key the reference side
    of ``on``."""
    node = versions.node
    while not isinstance(node, Watermark):
        if not node.stateless or len(node.children) != 1:
            raise PlanError(
                "a stream of versions needs a watermark on its valid_from column, with only "
                "stateless steps after it: versions.with_watermark('updated_at', "
                f"max_out_of_orderness=...); found {node.label}")
        node = node.children[0]
    if on is None:
        raise PlanError("enrich() with a stream of versions needs on=: the key columns, e.g. "
                        "on={'sec_id': 'sec_id'} (stream column: versions column)")
    key = (on,) if isinstance(on, str) else tuple(on.values()) if isinstance(on, Mapping) \
        else tuple(on)
    schema = versions.schema.remove(versions.schema.get_field_index(WATERMARK_COLUMN))
    time_type = schema.field(node.time_col).type
    # One unit of the watermark in the join's unit: nanoseconds, but for integer times.
    per_unit = 1 if pa.types.is_integer(time_type) else parse_duration(f"1{node.time_unit}")
    return VersionFeed(schema, key, node.time_col, None,
                       to_unit(node.out_of_orderness_ns, node.time_unit), per_unit,
                       functools.partial(run_versions, versions.graph()), versions.graph())
