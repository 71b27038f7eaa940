"""Every deliberate error is in sl.errors, exported from sl, and raised where documented."""

from __future__ import annotations

import inspect

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab import errors


def test_every_error_is_exported_from_sl_and_is_a_builtin_kind():
    classes = [v for _, v in inspect.getmembers(errors, inspect.isclass)
               if issubclass(v, Exception) and v.__module__ == "sabot_lab.errors"]
    assert sorted(c.__name__ for c in classes) == sorted(errors.__all__)
    for cls in classes:
        assert getattr(sl, cls.__name__) is cls
        assert issubclass(cls, ValueError | RuntimeError | ConnectionError | AssertionError)


def test_dir_lists_the_lazily_imported_dask_runner():
    assert "DaskRunner" in dir(sl) and "JobManager" not in dir(sl)
    assert {"MemoryState", "RocksDictState", "StateSpec", "diagnose", "errors"} <= set(dir(sl))


def test_a_plan_error_is_raised_as_sl_plan_error():
    with pytest.raises(sl.PlanError, match="column 'z' not found"):
        sl.Stream.from_table(pa.table({"a": [1]})).filter(sl.col("z") > 1)
