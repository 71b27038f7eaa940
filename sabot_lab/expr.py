"""A tiny expression IR for predicates and computed columns.

We keep our own IR (instead of using ``pyarrow.compute.Expression`` directly) because the
optimizer must know which columns an expression reads, and pyarrow does not expose that.
Every expression knows its input columns (:attr:`Expr.columns`), evaluates on a
``pyarrow.RecordBatch`` and compiles to a ``pyarrow.compute.Expression``.

Examples
--------
>>> import pyarrow as pa
>>> from sabot_lab.expr import col, lit
>>> e = (col("price") * 2 > 100) & col("symbol").isin(["A", "B"])
>>> sorted(e.columns)
['price', 'symbol']
>>> batch = pa.record_batch({"price": [10.0, 60.0, 70.0], "symbol": ["A", "A", "C"]})
>>> e.evaluate(batch).to_pylist()
[False, True, False]
>>> e
((col('price') * 2) > 100) & col('symbol').isin(['A', 'B'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.errors import ExprError

__all__ = ["Expr", "coalesce", "col", "lit"]


def _as_expr(value: Any) -> Expr:
    return value if isinstance(value, Expr) else Literal(value)


class Expr:
    """Base class of all expressions.

    Operators build new expressions; ``==`` builds an equality *expression*, so use
    :meth:`equals` to compare two expressions structurally.
    """

    __slots__ = ()

    # --- structure -----------------------------------------------------------------------
    @property
    def columns(self) -> frozenset[str]:
        """The names of the columns this expression reads."""
        out: frozenset[str] = frozenset()
        for child in self.children():
            out |= child.columns
        return out

    def children(self) -> tuple[Expr, ...]:
        """The direct sub-expressions."""
        return ()

    def key(self) -> tuple:
        """A hashable structural key: two expressions are equal when their keys are equal."""
        raise NotImplementedError

    def equals(self, other: object) -> bool:
        """Structural equality (``==`` builds an expression instead).

        >>> (col("a") + 1).equals(col("a") + 1), (col("a") + 1).equals(col("a") + 2)
        (True, False)
        """
        return isinstance(other, Expr) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __bool__(self) -> bool:
        raise TypeError(
            "an expression has no truth value: combine predicates with & | ~ instead of "
            "and/or/not, and compare expressions with .equals()"
        )

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        """Replace column references by expressions (used to move predicates through projections).

        >>> (col("x") > 1).substitute({"x": col("a") + col("b")})
        ((col('a') + col('b')) > 1)
        """
        return self._rebuild(tuple(c.substitute(mapping) for c in self.children()))

    def _rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return self

    # --- evaluation ----------------------------------------------------------------------
    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.Scalar:
        """Evaluate on a batch; returns an array (or a scalar for a constant expression)."""
        raise NotImplementedError

    def to_pyarrow(self) -> pc.Expression:
        """Compile to a ``pyarrow.compute.Expression`` (for dataset scan filters).

        >>> (col("a") > 1).to_pyarrow()
        <pyarrow.compute.Expression (a > 1)>
        """
        raise NotImplementedError

    def output_type(self, schema: pa.Schema) -> pa.DataType:
        """The type this expression produces on ``schema``; unknown columns raise ExprError.

        >>> (col("a") / 2).output_type(pa.schema({"a": pa.int64()}))
        DataType(double)
        """
        missing = sorted(self.columns - set(schema.names))
        if missing:
            raise ExprError(
                f"column {missing[0]!r} not found in {self!r}; available columns: {schema.names}"
            )
        empty = pa.RecordBatch.from_pylist([], schema=schema)
        try:
            result = self.evaluate(empty)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            types = {c: str(schema.field(c).type) for c in sorted(self.columns)}
            raise ExprError(f"cannot evaluate {self!r} on columns {types}: {exc}") from exc
        return result.type

    # --- operators -----------------------------------------------------------------------
    def __eq__(self, other: object) -> Expr:  # type: ignore[override]
        return Binary("==", self, _as_expr(other))

    def __ne__(self, other: object) -> Expr:  # type: ignore[override]
        return Binary("!=", self, _as_expr(other))

    def __lt__(self, other: Any) -> Expr:
        return Binary("<", self, _as_expr(other))

    def __le__(self, other: Any) -> Expr:
        return Binary("<=", self, _as_expr(other))

    def __gt__(self, other: Any) -> Expr:
        return Binary(">", self, _as_expr(other))

    def __ge__(self, other: Any) -> Expr:
        return Binary(">=", self, _as_expr(other))

    def __and__(self, other: Any) -> Expr:
        return Binary("&", self, _as_expr(other))

    def __rand__(self, other: Any) -> Expr:
        return Binary("&", _as_expr(other), self)

    def __or__(self, other: Any) -> Expr:
        return Binary("|", self, _as_expr(other))

    def __ror__(self, other: Any) -> Expr:
        return Binary("|", _as_expr(other), self)

    def __invert__(self) -> Expr:
        return Unary("~", self)

    def __neg__(self) -> Expr:
        return Unary("-", self)

    def __add__(self, other: Any) -> Expr:
        return Binary("+", self, _as_expr(other))

    def __radd__(self, other: Any) -> Expr:
        return Binary("+", _as_expr(other), self)

    def __sub__(self, other: Any) -> Expr:
        return Binary("-", self, _as_expr(other))

    def __rsub__(self, other: Any) -> Expr:
        return Binary("-", _as_expr(other), self)

    def __mul__(self, other: Any) -> Expr:
        return Binary("*", self, _as_expr(other))

    def __rmul__(self, other: Any) -> Expr:
        return Binary("*", _as_expr(other), self)

    def __mod__(self, other: Any) -> Expr:
        """The remainder, as in SQL: its sign is the dividend's.

        >>> (col("a") % 3).evaluate(pa.record_batch({"a": [7, -7]})).to_pylist()
        [1, -1]
        """
        return Binary("%", self, _as_expr(other))

    def __rmod__(self, other: Any) -> Expr:
        return Binary("%", _as_expr(other), self)

    def __truediv__(self, other: Any) -> Expr:
        return Binary("/", self, _as_expr(other))

    def __rtruediv__(self, other: Any) -> Expr:
        return Binary("/", _as_expr(other), self)

    # --- methods -------------------------------------------------------------------------
    def isin(self, values: Iterable[Any]) -> Expr:
        """True where the value is one of ``values`` (null stays null).

        >>> col("s").isin(["a", "b"]).evaluate(pa.record_batch({"s": ["a", "z"]})).to_pylist()
        [True, False]
        """
        return IsIn(self, tuple(values))

    def is_null(self) -> Expr:
        """True where the value is null (or NaN for floats).

        >>> col("x").is_null().evaluate(pa.record_batch({"x": [1.0, None]})).to_pylist()
        [False, True]
        """
        return Call("is_null", (self,))

    def is_valid(self) -> Expr:
        """True where the value is not null.

        >>> col("x").is_valid().evaluate(pa.record_batch({"x": [1, None]})).to_pylist()
        [True, False]
        """
        return Call("is_valid", (self,))

    def cast(self, to: pa.DataType | str) -> Expr:
        """Cast to another Arrow type (safe cast: overflow or lossy casts raise).

        >>> col("x").cast("float64").evaluate(pa.record_batch({"x": [1, 2]})).type
        DataType(double)
        """
        return Cast(self, pa.type_for_alias(to) if isinstance(to, str) else to)

    def fill_null(self, value: Any) -> Expr:
        """Replace nulls by ``value``.

        >>> col("x").fill_null(0).evaluate(pa.record_batch({"x": [1, None]})).to_pylist()
        [1, 0]
        """
        return Call("fill_null", (self, _as_expr(value)))

    def abs(self) -> Expr:
        """Absolute value.

        >>> col("x").abs().evaluate(pa.record_batch({"x": [-2, 3]})).to_pylist()
        [2, 3]
        """
        return Call("abs", (self,))

    def round(self, ndigits: int = 0) -> Expr:
        """Round half to even to ``ndigits`` decimals.

        >>> col("x").round(1).evaluate(pa.record_batch({"x": [1.25, 2.0]})).to_pylist()
        [1.2, 2.0]
        """
        return Call("round", (self,), (("ndigits", ndigits),))

    def hour(self) -> Expr:
        """The hour (0-23) of a timestamp.

        >>> import datetime as dt
        >>> col("t").hour().evaluate(pa.record_batch({"t": [dt.datetime(2024, 1, 1, 9, 30)]})
        ...                          ).to_pylist()
        [9]
        """
        return Call("hour", (self,))

    def lower(self) -> Expr:
        """Text in lower case.

        >>> col("s").lower().evaluate(pa.record_batch({"s": ["Apple"]})).to_pylist()
        ['apple']
        """
        return Call("lower", (self,))

    def upper(self) -> Expr:
        """Text in upper case.

        >>> col("s").upper().evaluate(pa.record_batch({"s": ["Apple"]})).to_pylist()
        ['APPLE']
        """
        return Call("upper", (self,))

    def count_substring(self, pattern: str) -> Expr:
        """How often ``pattern`` (plain text) occurs in the text, without overlaps.

        >>> col("s").count_substring("c").evaluate(pa.record_batch({"s": ["cac", "x"]})
        ...                                       ).to_pylist()
        [2, 0]
        """
        return Call("count_substring", (self,), (("pattern", pattern),))

    def regex_extract(self, pattern: str, group: int = 1) -> Expr:
        """Capture group ``group`` (1 = the first) of the first match of the regular
        expression ``pattern`` (RE2 syntax), null where it does not match (SQL's
        ``regexp_extract``).

        >>> url = pa.record_batch({"u": ["a?channel_id=7&x=1", "a?x=1"]})
        >>> col("u").regex_extract("([?&])channel_id=([^&]*)", 2).evaluate(url).to_pylist()
        ['7', None]
        """
        if group < 1 or group > _count_groups(pattern):
            raise ExprError(f"regex_extract group {group} does not exist in {pattern!r}")
        return Call("regex_extract", (self,), (("pattern", _named_groups(pattern)),
                                               ("group", group)))

    def split_index(self, separator: str, index: int) -> Expr:
        """Part ``index`` (0 = the first) of the text cut at ``separator``, null when there
        are fewer parts (Flink's ``SPLIT_INDEX``).

        >>> col("u").split_index("/", 3).evaluate(pa.record_batch({"u": ["a//b/c", "a/b"]})
        ...                                      ).to_pylist()
        ['c', None]
        """
        if index < 0 or not separator:
            raise ExprError(f"split_index takes a separator and an index from 0, got "
                            f"{separator!r} and {index}")
        return Call("split_index", (self,), (("separator", separator), ("index", index)))

    def between(self, low: Any, high: Any) -> Expr:
        """``low <= self <= high`` (both ends included, as in SQL).

        >>> col("x").between(1, 2).evaluate(pa.record_batch({"x": [0, 1, 2, 3]})).to_pylist()
        [False, True, True, False]
        """
        return (self >= low) & (self <= high)


@dataclass(frozen=True, eq=False, repr=False)
class Column(Expr):
    """A reference to a column by name."""

    name: str

    @property
    def columns(self) -> frozenset[str]:
        return frozenset((self.name,))

    def key(self) -> tuple:
        return ("col", self.name)

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return mapping.get(self.name, self)

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array:
        return batch.column(self.name)

    def to_pyarrow(self) -> pc.Expression:
        return pc.field(self.name)

    def __repr__(self) -> str:
        return f"col({self.name!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Literal(Expr):
    """A constant value (optionally with an explicit Arrow type)."""

    value: Any
    type: pa.DataType | None = None

    def key(self) -> tuple:
        return ("lit", type(self.value).__name__, self.value, str(self.type))

    def _scalar(self) -> pa.Scalar:
        return pa.scalar(self.value, type=self.type)

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Scalar:
        return self._scalar()

    def to_pyarrow(self) -> pc.Expression:
        return pc.scalar(self._scalar())

    def __repr__(self) -> str:
        text = self.value.isoformat(sep=" ") if hasattr(self.value, "isoformat") else repr(
            self.value)
        return text if self.type is None else f"lit({text}, {self.type})"


def _true_divide(left: Any, right: Any) -> Any:
    """``/`` is true division, as in Python and DuckDB (Arrow's divide truncates integers)."""
    if pa.types.is_integer(left.type):
        left = pc.cast(left, pa.float64())
    if pa.types.is_integer(right.type):
        right = pc.cast(right, pa.float64())
    return pc.divide(left, right)


# Arithmetic uses the checked kernels so that overflow raises instead of wrapping silently.
_BINARY: dict[str, tuple[Callable[[Any, Any], Any], str]] = {
    "==": (pc.equal, "equal"),
    "!=": (pc.not_equal, "not_equal"),
    "<": (pc.less, "less"),
    "<=": (pc.less_equal, "less_equal"),
    ">": (pc.greater, "greater"),
    ">=": (pc.greater_equal, "greater_equal"),
    "&": (pc.and_kleene, "and_kleene"),
    "|": (pc.or_kleene, "or_kleene"),
    "+": (pc.add_checked, "add_checked"),
    "-": (pc.subtract_checked, "subtract_checked"),
    "*": (pc.multiply_checked, "multiply_checked"),
    "/": (_true_divide, "divide"),
    # SQL's remainder: the sign of the dividend (-7 % 3 is -1), an error on division by 0.
    "%": (pc.remainder_checked, "remainder_checked"),
}


@dataclass(frozen=True, eq=False, repr=False)
class Binary(Expr):
    """A binary operator: comparison, boolean logic (Kleene, as SQL) or checked arithmetic."""

    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def _rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Binary(self.op, *children)

    def key(self) -> tuple:
        return ("bin", self.op, self.left.key(), self.right.key())

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.Scalar:
        return _BINARY[self.op][0](self.left.evaluate(batch), self.right.evaluate(batch))

    def to_pyarrow(self) -> pc.Expression:
        left, right = self.left.to_pyarrow(), self.right.to_pyarrow()
        if self.op == "/":
            left, right = left.cast(pa.float64()), right.cast(pa.float64())
        return pc.Expression._call(_BINARY[self.op][1], [left, right])

    def __repr__(self) -> str:
        if self.op in "&|":
            return f"{self.left!r} {self.op} {self.right!r}"
        return f"({self.left!r} {self.op} {self.right!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Unary(Expr):
    """Boolean negation (``~``) or arithmetic negation (``-``)."""

    op: str
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def _rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Unary(self.op, children[0])

    def key(self) -> tuple:
        return ("un", self.op, self.operand.key())

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.Scalar:
        value = self.operand.evaluate(batch)
        return pc.invert(value) if self.op == "~" else pc.negate_checked(value)

    def to_pyarrow(self) -> pc.Expression:
        name = "invert" if self.op == "~" else "negate_checked"
        return pc.Expression._call(name, [self.operand.to_pyarrow()])

    def __repr__(self) -> str:
        return f"~({self.operand!r})" if self.op == "~" else f"-({self.operand!r})"


@dataclass(frozen=True, eq=False, repr=False)
class IsIn(Expr):
    """Membership in a constant set of values."""

    operand: Expr
    values: tuple

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def _rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return IsIn(children[0], self.values)

    def key(self) -> tuple:
        return ("isin", self.operand.key(), self.values)

    def _value_set(self, value_type: pa.DataType) -> pa.Array:
        if pa.types.is_dictionary(value_type):
            value_type = value_type.value_type
        return pa.array(self.values, type=value_type)

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.Scalar:
        value = self.operand.evaluate(batch)
        mask = pc.is_in(value, value_set=self._value_set(value.type))
        # Arrow's is_in says False for null input; SQL says null.
        return pc.if_else(pc.is_valid(value), mask, pa.scalar(None, pa.bool_()))

    def to_pyarrow(self) -> pc.Expression:
        return self.operand.to_pyarrow().isin(pa.array(self.values))

    def __repr__(self) -> str:
        return f"{self.operand!r}.isin({list(self.values)!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Cast(Expr):
    """A safe cast to an Arrow type."""

    operand: Expr
    to: pa.DataType

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def _rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Cast(children[0], self.to)

    def key(self) -> tuple:
        return ("cast", self.operand.key(), str(self.to))

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.Scalar:
        return pc.cast(self.operand.evaluate(batch), self.to)

    def to_pyarrow(self) -> pc.Expression:
        return self.operand.to_pyarrow().cast(self.to)

    def __repr__(self) -> str:
        return f"{self.operand!r}.cast({str(self.to)!r})"


def _round(value: Any, ndigits: int) -> Any:
    return pc.round(value, ndigits=ndigits, round_mode="half_to_even")


def _is_null(value: Any) -> Any:
    return pc.is_null(value, nan_is_null=True)


def _named_groups(pattern: str) -> str:
    """``pattern`` with its capturing groups named ``g1``, ``g2``... in order (Arrow's
    ``extract_regex`` returns named groups only)."""
    out, n, i, in_class = [], 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(" and not pattern.startswith("(?", i):
            n += 1
            out.append(f"(?P<g{n}>")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _count_groups(pattern: str) -> int:
    return _named_groups(pattern).count("(?P<g")


def _regex_extract(value: Any, pattern: str, group: int) -> Any:
    return pc.struct_field(pc.extract_regex(value, pattern=pattern), [f"g{group}"])


def _split_index(value: Any, separator: str, index: int) -> Any:
    # At most index + 1 splits: part ``index`` is whole, and a fixed-size slice pads the
    # shorter lists with null, so no row raises.
    parts = pc.split_pattern(value, pattern=separator, max_splits=index + 1)
    return pc.list_element(pc.list_slice(parts, index, index + 1, return_fixed_size_list=True),
                           0)


def _if_else(condition: Any, then: Any, otherwise: Any) -> Any:
    return pc.if_else(condition, then, otherwise)


_CALLS: dict[str, Callable[..., Any]] = {
    "hour": pc.hour,
    "lower": pc.utf8_lower,
    "upper": pc.utf8_upper,
    "count_substring": pc.count_substring,
    "regex_extract": _regex_extract,
    "split_index": _split_index,
    "if_else": _if_else,
    "is_null": _is_null,
    "is_valid": pc.is_valid,
    "fill_null": pc.fill_null,
    "abs": pc.abs_checked,
    "round": _round,
    "coalesce": pc.coalesce,
}


@dataclass(frozen=True, eq=False, repr=False)
class Call(Expr):
    """A named scalar function of the expressions in ``args``."""

    name: str
    args: tuple[Expr, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def _rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Call(self.name, children, self.options)

    def key(self) -> tuple:
        return ("call", self.name, tuple(a.key() for a in self.args), self.options)

    def evaluate(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.Scalar:
        return _CALLS[self.name](*(a.evaluate(batch) for a in self.args), **dict(self.options))

    def to_pyarrow(self) -> pc.Expression:
        args = [a.to_pyarrow() for a in self.args]
        if self.name == "is_null":
            return args[0].is_null(nan_is_null=True)
        if self.name == "is_valid":
            return args[0].is_valid()
        if self.name == "round":
            options = pc.RoundOptions(ndigits=dict(self.options)["ndigits"],
                                      round_mode="half_to_even")
            return pc.Expression._call("round", args, options)
        options = dict(self.options)
        if self.name == "count_substring":
            return pc.Expression._call("count_substring", args,
                                       pc.MatchSubstringOptions(options["pattern"]))
        if self.name == "regex_extract":
            struct = pc.Expression._call("extract_regex", args,
                                         pc.ExtractRegexOptions(options["pattern"]))
            return pc.Expression._call("struct_field", [struct],
                                       pc.StructFieldOptions([f"g{options['group']}"]))
        if self.name == "split_index":
            index = options["index"]
            parts = pc.Expression._call("split_pattern", args, pc.SplitPatternOptions(
                options["separator"], max_splits=index + 1))
            one = pc.Expression._call("list_slice", [parts], pc.ListSliceOptions(
                index, index + 1, return_fixed_size_list=True))
            return pc.Expression._call("list_element", [one, pc.scalar(0)])
        name = {"abs": "abs_checked", "fill_null": "coalesce", "lower": "utf8_lower",
                "upper": "utf8_upper"}.get(self.name, self.name)
        return pc.Expression._call(name, args)

    def __repr__(self) -> str:
        args = ", ".join(repr(a) for a in self.args[1:])
        args += "".join(f", {k}={v!r}" for k, v in self.options).lstrip(", ")
        return f"{self.args[0]!r}.{self.name}({args})"


def col(name: str) -> Expr:
    """Refer to a column by name.

    >>> col("price") > 100
    (col('price') > 100)
    """
    return Column(name)


def lit(value: Any, type: pa.DataType | None = None) -> Expr:
    """A constant, optionally with an explicit Arrow type.

    >>> lit(1.5).evaluate(None)
    <pyarrow.DoubleScalar: 1.5>
    """
    return Literal(value, type)


def if_else(condition: Any, then: Any, otherwise: Any) -> Expr:
    """``then`` where ``condition`` is true, else ``otherwise`` (SQL's ``CASE WHEN``; a null
    condition gives null). Nest them for several branches.

    >>> e = if_else(col("x") > 1, "big", "small")
    >>> e.evaluate(pa.record_batch({"x": [0, 5]})).to_pylist()
    ['small', 'big']
    """
    return Call("if_else", (_as_expr(condition), _as_expr(then), _as_expr(otherwise)))


def coalesce(*exprs: Any) -> Expr:
    """The first non-null value of ``exprs``, row by row.

    >>> batch = pa.record_batch({"a": [None, 1], "b": [5, 6]})
    >>> coalesce(col("a"), col("b")).evaluate(batch).to_pylist()
    [5, 1]
    """
    return Call("coalesce", tuple(_as_expr(e) for e in exprs))
