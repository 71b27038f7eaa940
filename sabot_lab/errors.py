"""Every error sabot_lab raises on purpose, in one place (``sl.errors``).

Each names what is wrong (the column, row, file or parameter) and what to do; the classes
subclass the built-in error a caller would expect (``ValueError`` for bad input or plans,
``RuntimeError`` for runs that cannot go on, ``ConnectionError`` for an unreachable cluster).

>>> import sabot_lab as sl
>>> issubclass(sl.errors.PlanError, ValueError), sl.PlanError is sl.errors.PlanError
(True, True)
"""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "CheckpointError",
    "ClusterError",
    "ColumnConversionError",
    "CsvParseError",
    "DuplicateKeyError",
    "ExprError",
    "ParquetReadError",
    "PlanError",
    "SchedulerUnreachableError",
    "SchemaMismatchError",
    "SnapshotError",
    "StaleBlockError",
]


class ExprError(ValueError):
    """An expression cannot be applied to the schema it was given."""


class PlanError(ValueError):
    """A plan is invalid: unknown column, type mismatch, incompatible schemas."""


class DuplicateKeyError(ValueError):
    """A reference table declared unique has repeated key values."""


class ColumnConversionError(ValueError, TypeError):
    """A DataFrame column does not convert to one Arrow column (e.g. an object column mixing
    numbers and strings). Both a ``ValueError`` and a ``TypeError``, as pyarrow raises one or
    the other for such a column."""


class SchemaMismatchError(ValueError):
    """A batch does not have the schema its stream declared."""


class CsvParseError(ValueError):
    """A CSV row does not parse; the message names the file, the line and the column."""


class ParquetReadError(ValueError):
    """A Parquet file cannot be read; the message names it."""


class SnapshotError(ValueError):
    """Operator state that cannot be restored: damaged, from another operator or version."""


class CheckpointError(RuntimeError):
    """A checkpoint directory cannot be used for this run (and nothing was run from it)."""


class AccountingError(AssertionError):
    """An operator's counters do not add up (rows were lost or invented)."""


class StaleBlockError(RuntimeError):
    """A block was released after the state moved on (another acquire, expire or restore)."""


class SchedulerUnreachableError(ConnectionError):
    """The Dask scheduler did not answer."""


class ClusterError(RuntimeError):
    """The Dask cluster failed a job: the scheduler went away, or workers kept dying."""


class JobInterrupted(KeyboardInterrupt):
    """A blocking ``run()`` was interrupted (Ctrl-C, Jupyter's stop button); nothing of the
    job is left running. Still a ``KeyboardInterrupt``, so it stops a script as one does."""
