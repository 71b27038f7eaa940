"""One LocalCluster (2 workers x 1 thread) shared by the runtime tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def runner():
    pytest.importorskip("distributed")
    from sabot_lab.runtime.dask import DaskRunner

    with DaskRunner(n_workers=2, threads_per_worker=1) as r:
        yield r
