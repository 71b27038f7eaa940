"""Immutable logical plan nodes.

Every node is a frozen dataclass with ``children``, an inferred output ``schema`` and
``with_children()``. Equality is structural (expressions compare by structure, data payloads
such as source scans and reference tables by identity), so a rewrite-rule test is one ``==``.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab.expr import col
>>> from sabot_lab.ops.sources import TableScan
>>> src = Source(TableScan(pa.table({"a": [1, 2], "b": ["x", "y"]})))
>>> Filter(src, col("a") > 1) == Filter(src, col("a") > 1)
True
>>> Project(src, (("c", col("a") * 2),)).schema
c: int64
>>> Filter(src, col("z") > 1).schema
Traceback (most recent call last):
...
sabot_lab.errors.PlanError: Filter[(col('z') > 1)]: column 'z' not found ... ['a', 'b']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from sabot_lab.errors import PlanError
from sabot_lab.expr import Column, Expr, ExprError
from sabot_lab.plan.fingerprint import fingerprint_value
from sabot_lab.reference import Table

__all__ = [
    "NO_WATERMARK",
    "WATERMARK_COLUMN",
    "AsOfEnrich",
    "Enrich",
    "Filter",
    "Fused",
    "KeyedProcess",
    "MapBatches",
    "Node",
    "Project",
    "Scan",
    "Sink",
    "SinkTarget",
    "Source",
    "TopN",
    "Union",
    "Watermark",
    "WindowAggregate",
]


class Scan(Protocol):
    """What a :class:`Source` reads (implemented in :mod:`sabot_lab.ops.sources`)."""

    @property
    def schema(self) -> pa.Schema: ...

    def describe(self) -> str: ...


class SinkTarget(Protocol):
    """Where a :class:`Sink` writes (implemented in :mod:`sabot_lab.ops.sinks`)."""

    def describe(self) -> str: ...


def _structural(value: Any) -> Any:
    if isinstance(value, Expr):
        return ("expr", value.key())
    if isinstance(value, tuple):
        return tuple(_structural(v) for v in value)
    # Everything else (scans, sink targets, reference tables, functions) compares with its
    # own ``==``, which is identity unless the class says otherwise.
    return value


def _holds_nodes(value: Any) -> bool:
    return isinstance(value, Node) or (isinstance(value, tuple) and any(
        isinstance(v, Node) for v in value))


@dataclass(frozen=True, eq=False)
class Node:
    """Base class of plan nodes.

    Two traits say how a runner may place a node: ``stateless`` nodes process each batch on
    its own (they may be fused, and run wherever the batch is); ``stateful`` ones keep state
    across batches in arrival order (on Dask they run after an exchange by key).
    """

    stateless: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    @property
    def children(self) -> tuple[Node, ...]:
        """The input nodes."""
        return ()

    def with_children(self, children: tuple[Node, ...]) -> Node:
        """A copy of this node with new inputs (nodes are immutable)."""
        if children:
            raise PlanError(f"{self.label} takes no inputs")
        return self

    @property
    def label(self) -> str:
        """One line naming the operator and its key parameters."""
        return type(self).__name__

    def map(self, fn: Callable[[Node], Node]) -> Node:
        """The plan rebuilt bottom-up with ``fn`` applied to every node (and to every stage
        of a fused chain); subtrees ``fn`` leaves alone are shared, not copied.

        >>> from sabot_lab.expr import col
        >>> from sabot_lab.ops.sources import TableScan
        >>> plan = Filter(Source(TableScan(pa.table({"a": [1]}))), col("a") > 0)
        >>> plan.map(lambda n: dataclasses.replace(n, columns=("a",))
        ...          if isinstance(n, Source) else n).children[0].columns
        ('a',)
        """
        children = tuple(c.map(fn) for c in self.children)
        node = self if all(a is b for a, b in zip(children, self.children, strict=True)) \
            else self.with_children(children)
        return fn(node)

    @property
    def schema(self) -> pa.Schema:
        """The output schema, inferred (and validated) from the inputs."""
        return self._schema

    @cached_property
    def _schema(self) -> pa.Schema:
        try:
            return self._infer_schema()
        except (ExprError, KeyError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise PlanError(f"{self.label}: {message}") from None

    def _infer_schema(self) -> pa.Schema:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """Every parameter of this node (not its inputs) as JSON-able values, so that a
        checkpoint is resumed only by the same job (see :mod:`sabot_lab.plan.fingerprint`).

        >>> from sabot_lab.expr import col
        >>> from sabot_lab.ops.sources import TableScan
        >>> src = Source(TableScan(pa.table({"a": [1, 2]})))
        >>> Filter(src, col("a") > 1).fingerprint()
        {'node': 'Filter', 'predicate': "(col('a') > 1)"}
        """
        return {"node": type(self).__name__, **{
            f.name: fingerprint_value(getattr(self, f.name)) for f in dataclasses.fields(self)
            if not _holds_nodes(getattr(self, f.name))}}

    def _fields(self) -> tuple:
        return tuple(_structural(getattr(self, f.name)) for f in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.label))


@dataclass(frozen=True, eq=False)
class Source(Node):
    """Reads batches from a :class:`Scan`; the optimizer may push columns and a filter into it."""

    scan: Scan
    columns: tuple[str, ...] | None = None
    predicate: Expr | None = None
    #: Names the data of a source that cannot be identified by reading it (an iterator, a
    #: generator function), so that a checkpoint of the job can be resumed.
    source_id: str | None = None

    @property
    def label(self) -> str:
        extra = f" filter={self.predicate!r}" if self.predicate is not None else ""
        if self.columns is not None:
            total = len(self.scan.schema)
            extra += (f" columns={list(self.columns)}" if len(self.columns) <= 3
                      else f" {len(self.columns)} of {total} columns")
        return f"Source[{self.scan.describe()}{extra}]"

    def _infer_schema(self) -> pa.Schema:
        schema = self.scan.schema
        if self.predicate is not None:
            self.predicate.output_type(schema)
        if self.columns is None:
            return schema
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise KeyError(f"column {missing[0]!r} not found; available columns: {schema.names}")
        return pa.schema([schema.field(c) for c in self.columns])


@dataclass(frozen=True, eq=False)
class _Unary(Node):
    child: Node

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    def with_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return dataclasses.replace(self, child=child)


@dataclass(frozen=True, eq=False)
class Filter(_Unary):
    """Keeps the rows where ``predicate`` is true (null counts as false, as in SQL)."""

    stateless = True

    predicate: Expr

    @property
    def label(self) -> str:
        return f"Filter[{self.predicate!r}]"

    def _infer_schema(self) -> pa.Schema:
        schema = self.child.schema
        out = self.predicate.output_type(schema)
        if not pa.types.is_boolean(out):
            raise ExprError(f"a filter predicate must be boolean, {self.predicate!r} is {out}")
        return schema


@dataclass(frozen=True, eq=False)
class Project(_Unary):
    """Outputs exactly the named expressions, in order (``select`` and ``with_columns``)."""

    stateless = True

    exprs: tuple[tuple[str, Expr], ...]

    @property
    def label(self) -> str:
        parts = [
            name if isinstance(e, Column) and e.name == name else f"{name}={e!r}"
            for name, e in self.exprs
        ]
        return f"Project[{', '.join(parts)}]"

    def _infer_schema(self) -> pa.Schema:
        schema = self.child.schema
        names = [name for name, _ in self.exprs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ExprError(f"output column {dupes[0]!r} is defined twice")
        fields = []
        for name, e in self.exprs:
            if isinstance(e, Column) and e.name in schema.names:
                fields.append(schema.field(e.name).with_name(name))
            else:
                fields.append(pa.field(name, e.output_type(schema)))
        return pa.schema(fields)


@dataclass(frozen=True, eq=False)
class MapBatches(_Unary):
    """A vectorized user function ``RecordBatch -> RecordBatch`` with a declared output schema."""

    stateless = True

    fn: Callable[[pa.RecordBatch], pa.RecordBatch]
    output_schema: pa.Schema
    name: str = "map_batches"

    @property
    def label(self) -> str:
        return f"MapBatches[{self.name}]"

    def _infer_schema(self) -> pa.Schema:
        return self.output_schema


def _key_types_compatible(left: pa.DataType, right: pa.DataType) -> bool:
    def base(t: pa.DataType) -> pa.DataType:
        t = t.value_type if pa.types.is_dictionary(t) else t
        return pa.string() if pa.types.is_large_string(t) or pa.types.is_string_view(t) else t

    left, right = base(left), base(right)
    both_int = pa.types.is_integer(left) and pa.types.is_integer(right)
    return left == right or both_int


def _is_text(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


@dataclass(frozen=True, eq=False)
class Enrich(_Unary):
    """Lookup join of the stream against a reference :class:`~sabot_lab.reference.Table`.

    ``on`` pairs stream key columns with reference key columns. ``how`` is ``"inner"`` (rows
    without a match leave, counted as unmatched, or go to the ``unmatched`` side output) or
    ``"left"`` (they stay, with null reference columns). Reference columns whose names clash
    with stream columns get ``suffix``. With ``dictionary_strings`` (the default), string and
    binary reference columns come out dictionary-encoded: indices into the reference column,
    so no string is copied per row.
    """

    stateless = True

    reference: Table
    on: tuple[tuple[str, str], ...]
    how: str = "inner"
    columns: tuple[str, ...] = ()
    suffix: str = "_ref"
    unmatched_side_output: bool = False
    dictionary_strings: bool = True

    @property
    def label(self) -> str:
        keys = ", ".join(s if s == r else f"{s}={r}" for s, r in self.on)
        side = " unmatched->side" if self.unmatched_side_output else ""
        where = getattr(self.reference, "predicate", None)
        where = f" reference where {where!r}" if where is not None else ""
        return f"Enrich[{self.how} on {keys} +{list(self.columns)}{side}{where}]"

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names of the reference columns (after the clash suffix)."""
        stream_names = set(self.child.schema.names)
        return tuple(c + self.suffix if c in stream_names else c for c in self.columns)

    def _infer_schema(self) -> pa.Schema:
        schema = self.child.schema
        ref = self.reference.schema
        if self.how not in ("inner", "left"):
            raise ExprError(f"how must be 'inner' or 'left', got {self.how!r}")
        for stream_col, ref_col in self.on:
            if stream_col not in schema.names:
                raise KeyError(
                    f"stream key column {stream_col!r} not found; "
                    f"available columns: {schema.names}"
                )
            if ref_col not in self.reference.key:
                raise KeyError(
                    f"{ref_col!r} is not a key of the reference table "
                    f"(its key is {list(self.reference.key)})"
                )
            left, right = schema.field(stream_col).type, ref.field(ref_col).type
            if not _key_types_compatible(left, right):
                raise ExprError(
                    f"key type mismatch: stream column {stream_col!r} is {left} but reference "
                    f"key {ref_col!r} is {right}; cast one side, e.g. "
                    f".with_columns({stream_col}=col({stream_col!r}).cast('{right}'))"
                )
        for c in self.columns:
            if c not in ref.names:
                raise KeyError(
                    f"reference column {c!r} not found; available columns: {ref.names}"
                )
        fields = list(schema)
        for c, name in zip(self.columns, self.output_names, strict=True):
            if name in schema.names:
                raise ExprError(
                    f"reference column {c!r} would be named {name!r}, which the stream "
                    f"already has; choose another suffix"
                )
            field = ref.field(c).with_name(name).with_nullable(True)
            if self.dictionary_strings and _is_text(field.type):
                field = field.with_type(pa.dictionary(pa.int32(), field.type))
            fields.append(field)
        return pa.schema(fields)


@dataclass(frozen=True, eq=False)
class AsOfEnrich(Enrich):
    """Temporal (as-of) join against a versioned :class:`~sabot_lab.reference.Table`.

    Each stream row gets the latest version of its key whose ``valid_from`` is at or before
    the row's ``as_of`` time; that version must still be valid then: before its ``valid_to``
    (when the table has one) and at most ``tolerance`` after its ``valid_from`` (when set).
    ``tolerance`` is in nanoseconds for timestamp and date columns, in the column's own unit
    for integer times. Rows without such a version are unmatched, as in :class:`Enrich`.
    """

    as_of: str = ""
    tolerance: int | None = None
    #: The versions arrive as a stream: an event without a version cannot tell whether its
    #: key has none at all or none yet, so both are one reason.
    streamed: bool = False

    @property
    def label(self) -> str:
        keys = ", ".join(s if s == r else f"{s}={r}" for s, r in self.on)
        side = " unmatched->side" if self.unmatched_side_output else ""
        within = "" if self.tolerance is None else f" within {self.tolerance}"
        feed = " versions streamed" if self.streamed else ""
        return (f"AsOfEnrich[{self.how} on {keys} as of {self.as_of}{within}{feed} "
                f"+{list(self.columns)}{side}]")

    def _infer_schema(self) -> pa.Schema:
        schema = super()._infer_schema()
        valid_from = getattr(self.reference, "valid_from", None)
        if valid_from is None:
            raise PlanError("an as-of join needs a versioned reference table: "
                            "Table(data, key=..., valid_from='<column>')")
        stream = self.child.schema
        if self.as_of not in stream.names:
            raise KeyError(f"as_of column {self.as_of!r} not found; available columns: "
                           f"{stream.names}")
        event = stream.field(self.as_of).type
        ref = self.reference.schema
        for column in (valid_from, getattr(self.reference, "valid_to", None)):
            if column is not None and time_kind(event) != time_kind(ref.field(column).type):
                raise ExprError(
                    f"as_of column {self.as_of!r} is {event} but the reference's {column!r} is "
                    f"{ref.field(column).type}: an as-of join compares timestamps and dates "
                    f"with each other (both with a time zone or both without), and integer "
                    f"times with integer times; cast one side")
        if self.tolerance is not None and self.tolerance < 0:
            raise ExprError(f"tolerance must not be negative, got {self.tolerance}")
        return schema


def time_kind(t: pa.DataType) -> str:
    """What an as-of join compares a time column as: ``"integer"``, ``"instant"`` (a
    timestamp with a time zone), ``"local time"`` (without one, and dates) or ``"other"``.

    >>> time_kind(pa.timestamp("ms", "UTC")), time_kind(pa.date32()), time_kind(pa.int16())
    ('instant', 'local time', 'integer')
    """
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_timestamp(t):
        return "instant" if t.tz is not None else "local time"
    return "local time" if pa.types.is_date(t) else "other"


@dataclass(frozen=True, eq=False)
class Union(Node):
    """Concatenates streams with the same schema (inputs in order, batches interleaved)."""

    inputs: tuple[Node, ...]

    @property
    def children(self) -> tuple[Node, ...]:
        return self.inputs

    def with_children(self, children: tuple[Node, ...]) -> Node:
        return Union(tuple(children))

    @property
    def label(self) -> str:
        return f"Union[{len(self.inputs)} inputs]"

    def _infer_schema(self) -> pa.Schema:
        first = self.inputs[0].schema
        for i, other in enumerate(self.inputs[1:], start=1):
            s = other.schema
            if s.names != first.names:
                raise ExprError(
                    f"input {i} has columns {s.names} but input 0 has {first.names}; "
                    f"select the same columns in the same order before union"
                )
            for a, b in zip(first, s, strict=True):
                if a.type != b.type:
                    raise ExprError(
                        f"column {a.name!r} is {a.type} in input 0 but {b.type} in input {i}; "
                        f"cast one side with with_columns"
                    )
        return first


@dataclass(frozen=True, eq=False)
class Sink(_Unary):
    """The end of a job: collect into a table, write files, or call a function per batch."""

    target: SinkTarget

    @property
    def label(self) -> str:
        return f"Sink[{self.target.describe()}]"

    def fingerprint(self) -> dict[str, Any]:
        """Any sink: a resumed run replays the committed output into whichever it has."""
        return {"node": "Sink"}

    def _infer_schema(self) -> pa.Schema:
        return self.child.schema



@dataclass(frozen=True, eq=False)
class KeyedProcess(_Unary):
    """Per-key stateful processing: rows are grouped by ``keys`` and handed, batch by batch
    and in arrival order, to ``function`` (a :class:`~sabot_lab.process.ProcessFunction`)
    together with the state of their keys. Emits what the function returns (e.g. alerts);
    rows the function cannot use go to a side output with a reason."""

    stateful = True

    keys: tuple[str, ...]
    function: Any
    #: ``"memory"`` or ``"rocksdict"`` (persistent, larger than memory; needs ``state_path``).
    state: str = "memory"
    state_path: str | None = None

    @property
    def label(self) -> str:
        backend = "" if self.state == "memory" else f" state={self.state}"
        return f"KeyedProcess[{self.function.name} by {', '.join(self.keys)}{backend}]"

    def _infer_schema(self) -> pa.Schema:
        schema = self.child.schema
        if len(self.keys) != 1:
            raise ExprError(f"key_by takes one key column for now, got {list(self.keys)}: "
                            "combine several into one with a projection first")
        if self.state not in ("memory", "rocksdict"):
            raise ExprError(f"state must be 'memory' or 'rocksdict', got {self.state!r}")
        if self.state == "rocksdict" and not self.state_path:
            raise ExprError("state='rocksdict' needs state_path: the directory of the store")
        for name in (*self.keys, *self.function.columns):
            if name not in schema.names:
                raise KeyError(f"{self.function.name} needs column {name!r}; available "
                               f"columns: {schema.names}")
        if getattr(self.function, "timers", False):
            if WATERMARK_COLUMN not in schema.names:
                raise ExprError(f"{self.function.name} sets event-time timers, which fire when "
                                f"the watermark passes them: add .with_watermark(time_column, "
                                f"...) before key_by()")
            if self.function.state_spec().ttl is not None:
                raise ExprError(f"{self.function.name} sets event-time timers and a state ttl: "
                                f"a key that expires would lose its timer. Drop the ttl and "
                                f"clear a key's state in on_timer instead")
        return self.function.output_schema(schema)


@dataclass(frozen=True, eq=False)
class Fused(Node):
    """A chain of stateless operators run as one physical stage: one pass per batch.

    ``top`` is the last operator of the chain; it and the ``depth - 1`` operators below it
    are fused. Each keeps its own metrics.
    """

    stateless = True

    top: Node
    depth: int

    @property
    def stages(self) -> tuple[Node, ...]:
        """The fused operators, in data-flow order (first operator first)."""
        out, node = [], self.top
        for _ in range(self.depth):
            out.append(node)
            node = node.children[0]
        return tuple(reversed(out))

    @property
    def children(self) -> tuple[Node, ...]:
        return self.stages[0].children

    def with_children(self, children: tuple[Node, ...]) -> Node:
        node = children[0]
        for stage in self.stages:
            node = stage.with_children((node,))
        return Fused(node, self.depth)

    @property
    def label(self) -> str:
        return "Fused[" + " → ".join(type(s).__name__ for s in self.stages) + "]"

    def map(self, fn: Callable[[Node], Node]) -> Node:
        current = self.children[0].map(fn)
        for stage in self.stages:
            current = fn(stage.with_children((current,)))
        return Fused(current, self.depth)

    def _infer_schema(self) -> pa.Schema:
        return self.top.schema


#: Name of the per-row watermark column that :class:`Watermark` adds.
WATERMARK_COLUMN = "_watermark"
#: The watermark before any row has been seen (the smallest int64).
NO_WATERMARK = -(2**63)


def _time_unit(schema: pa.Schema, time_col: str, unit: str | None) -> str:
    if time_col not in schema.names:
        raise KeyError(f"event-time column {time_col!r} not found; available columns: "
                       f"{schema.names}")
    t = schema.field(time_col).type
    if pa.types.is_timestamp(t):
        return t.unit
    if pa.types.is_integer(t) and unit in ("s", "ms", "us", "ns"):
        return unit
    if pa.types.is_integer(t):
        raise ExprError(f"event-time column {time_col!r} holds integers: say their unit, "
                        f"e.g. with_watermark({time_col!r}, unit='ms')")
    raise ExprError(f"event-time column {time_col!r} is {t}; it must be a timestamp or an "
                    f"integer epoch (cast it with with_columns)")


@dataclass(frozen=True, eq=False)
class Watermark(_Unary):
    """Assigns event-time watermarks with bounded out-of-orderness.

    The watermark before each row is the largest event time of the rows before it (in
    arrival order) minus ``out_of_orderness_ns``; it is added as column ``_watermark``. Rows
    whose event time is null, or more than ``max_future_skew_ns`` ahead of every earlier row,
    go to the ``rejected`` side output with a reason and do not move the watermark. Durations
    are integer nanoseconds (:func:`~sabot_lab.plan.windows.parse_duration` reads them).
    """

    stateful = True

    time_col: str
    out_of_orderness_ns: int = 0
    allowed_lateness_ns: int = 0
    max_future_skew_ns: int | None = None
    unit: str | None = None

    @property
    def label(self) -> str:
        from sabot_lab.plan.windows import format_duration

        skew = "" if self.max_future_skew_ns is None else \
            f" max_future_skew={format_duration(self.max_future_skew_ns)}"
        return (f"Watermark[{self.time_col} "
                f"max_out_of_orderness={format_duration(self.out_of_orderness_ns)} "
                f"allowed_lateness={format_duration(self.allowed_lateness_ns)}{skew}]")

    @property
    def time_unit(self) -> str:
        """The unit of the event-time column."""
        return _time_unit(self.child.schema, self.time_col, self.unit)

    def _infer_schema(self) -> pa.Schema:
        for name in ("out_of_orderness_ns", "allowed_lateness_ns", "max_future_skew_ns"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ExprError(f"{name} must be a non-negative number of nanoseconds, got "
                                f"{value!r}")
        self.time_unit  # noqa: B018 - validates the time column
        schema = self.child.schema
        if WATERMARK_COLUMN in schema.names:
            raise ExprError("the stream already has watermarks; call with_watermark once")
        return schema.append(pa.field(WATERMARK_COLUMN, pa.int64()))


@dataclass(frozen=True, eq=False)
class WindowAggregate(_Unary):
    """Event-time window aggregation (tumbling or hopping), per key or global.

    Emits one row per window and key when the watermark passes the window's end (revision
    0), and one more, with the updated aggregates, for every row that arrives later but
    within the allowed lateness (revision 1, 2…, ``is_update`` true). Rows later than that
    go to the ``late`` side output with the window they missed and by how much.
    """

    stateful = True

    window: Any
    keys: tuple[str, ...]
    aggs: tuple[tuple[str, Any], ...]
    time_col: str
    time_unit: str
    out_of_orderness_ns: int = 0
    allowed_lateness_ns: int = 0
    #: Groups to keep, a predicate on the keys only (set by the optimizer from a filter
    #: above the window): other rows are counted as filtered once their lateness is decided,
    #: so the ``late`` side output stays the same.
    key_filter: Expr | None = None

    @property
    def label(self) -> str:
        keys = f" by {', '.join(self.keys)}" if self.keys else ""
        aggs = ", ".join(f"{n}={a!r}" for n, a in self.aggs)
        where = f" where {self.key_filter!r}" if self.key_filter is not None else ""
        return f"Window[{self.window!r} on {self.time_col}{keys}{where}: {aggs}]"

    def _infer_schema(self) -> pa.Schema:
        schema = self.child.schema
        if WATERMARK_COLUMN not in schema.names:
            raise ExprError("windows need event time: call with_watermark(time_column, ...) "
                            "before window()")
        for k in self.keys:
            if k not in schema.names:
                raise KeyError(f"group key {k!r} not found; available columns: {schema.names}")
            if pa.types.is_nested(schema.field(k).type):
                raise ExprError(f"group key {k!r} is {schema.field(k).type}: keys must be "
                                f"scalars (numbers, strings, times); flatten it first")
        if not self.window.is_session:
            from sabot_lab.plan.windows import to_unit

            for what, ns in (("size", self.window.size_ns), ("slide", self.window.slide_ns)):
                if to_unit(ns, self.time_unit) < 1:
                    raise ExprError(f"the window {what} {self.window!r} is below one "
                                    f"{self.time_unit}, the unit of {self.time_col!r}")
        time_type = schema.field(self.time_col).type
        fields = [pa.field("window_start", time_type), pa.field("window_end", time_type)]
        fields += [schema.field(k) for k in self.keys]
        names = [f.name for f in fields]
        for name, agg in self.aggs:
            if name in names:
                raise ExprError(f"output column {name!r} is defined twice")
            fields.append(pa.field(name, agg.output_type(schema)))
            names.append(name)
        fields += [pa.field("revision", pa.int32()), pa.field("is_update", pa.bool_())]
        return pa.schema(fields)


@dataclass(frozen=True, eq=False)
class TopN(_Unary):
    """The ``n`` rows with the largest ``by`` of every window (ties: smaller keys first),
    with their ``rank`` (1 = largest). With ``with_ties``, also every row tied with the
    ``n``-th, ranked as SQL's ``RANK()`` (tied rows share a rank). Sits on a
    :class:`WindowAggregate`."""

    #: Ranks whole windows, so it runs after the exchange with its window.
    stateful = True

    n: int
    by: str
    window_keys: tuple[str, ...] = ("window_start",)
    #: The window's group keys: ties in ``by`` rank smaller keys first.
    group_keys: tuple[str, ...] = ()
    with_ties: bool = False

    @property
    def label(self) -> str:
        ties = " with ties" if self.with_ties else ""
        return f"TopN[{self.n} by {self.by} per window{ties}]"

    def _infer_schema(self) -> pa.Schema:
        schema = self.child.schema
        if self.by not in schema.names:
            raise KeyError(f"top_n column {self.by!r} not found; available columns: "
                           f"{schema.names}")
        if self.n < 1:
            raise ExprError(f"top_n needs n >= 1, got {self.n}")
        return schema.append(pa.field("rank", pa.int32()))
