"""The worker-killing helpers of the failure tests fail loudly when they prove nothing: a
job that ends before the kill, or a kill after which no task ran again."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.runtime.dask import DaskRunner
from tests.runtime.killing import run_killing_a_worker

pytest.importorskip("distributed")


def test_killing_after_the_job_has_ended_fails_the_test(runner):
    """One partition task: the job is over long before three tasks are done."""
    job = sl.Stream.from_table(pa.table({"a": list(range(100))})).filter(sl.col("a") > 5)
    one_partition = DaskRunner(runner.client, partitions_per_worker=1)
    with pytest.raises(AssertionError, match="not running when the cluster was to fail"):
        run_killing_a_worker(job, one_partition, "sabot-partition", after=3)
