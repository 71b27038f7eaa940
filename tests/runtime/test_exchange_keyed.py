"""Keyed state on the DaskRunner: the same fraud alerts as a local run."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import transactions
from sabot_lab.patterns.fraud import FraudRules, detect_fraud
from sabot_lab.runtime.dask import DaskRunner
from tests.oracle import assert_balanced
from tests.runtime.killing import run_killing_a_worker


@pytest.mark.parametrize("partitions_per_worker", [1, 3])
def test_fraud_alerts_on_dask_equal_the_local_run(runner, partitions_per_worker):
    txns = transactions(60_000, n_accounts=3_000, seed=4)
    job = detect_fraud(sl.Stream.from_table(txns, batch_size=3_000)
                       .filter(sl.col("amount") > 1.0), FraudRules(log_amount=True))
    local = job.run()
    dask = job.run(DaskRunner(runner.client, partitions_per_worker=partitions_per_worker))
    assert local.table.num_rows > 100
    columns = [c for c in local.table.column_names if c != "detection_latency_ms"]
    sl.assert_same_results(dask.table.select(columns), local.table.select(columns), rtol=1e-12)
    assert_balanced(dask.operator_metrics)
    assert "exchange by ['account_id']" in repr(dask.execution)


def test_rocksdict_state_on_dask_equals_a_local_run_with_memory_state(runner, tmp_path):
    """Every key range keeps its own store under ``state_path`` (one RocksDB store opens in
    one process at a time), and the alerts equal a local run's with memory state."""
    txns = transactions(60_000, n_accounts=3_000, seed=4)

    def job(**state: object) -> sl.Stream:
        return detect_fraud(sl.Stream.from_table(txns, batch_size=3_000),
                            FraudRules(log_amount=True), **state)

    local = job().run()
    dask_runner = DaskRunner(runner.client, partitions_per_worker=2)
    dask = job(state="rocksdict", state_path=tmp_path / "state").run(dask_runner)
    assert local.table.num_rows > 100
    columns = [c for c in local.table.column_names if c != "detection_latency_ms"]
    sl.assert_same_results(dask.table.select(columns), local.table.select(columns), rtol=1e-12)
    assert_balanced(dask.operator_metrics)
    ranges = sum(runner.client.nthreads().values())  # one key range per worker thread
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        f"range-{r:05d}" for r in range(ranges)]


def test_keyed_state_then_window_is_refused_with_a_reason(runner):
    txns = pa.table({"account_id": [1], "txn_id": [1], "ts": pa.array([0], pa.timestamp("ms")),
                     "amount": [1.0], "lat": [0.0], "lon": [0.0]})
    job = (detect_fraud(sl.Stream.from_table(txns)).with_watermark("ts")
           .window(sl.tumbling("1min")).agg(n=sl.count()))
    with pytest.raises(NotImplementedError, match="one stateful stage per job"):
        job.run(runner)


def test_keyed_state_survives_a_killed_worker(runner):
    """A worker dies mid-job: its agents start again elsewhere from the last cut and the
    partitions after it are replayed; the alerts equal a clean run, none lost or doubled."""
    txns = transactions(300_000, n_accounts=20_000, seed=6)
    job = detect_fraud(sl.Stream.from_table(txns, batch_size=5_000))
    expected = job.run()
    killed = run_killing_a_worker(job, DaskRunner(runner.client, partitions_per_worker=6),
                                  "exchange")
    columns = [c for c in expected.table.column_names if c != "detection_latency_ms"]
    got = killed.table.select(columns)
    sl.assert_same_results(got, expected.table.select(columns), rtol=1e-12)
    assert got.num_rows == expected.table.num_rows > 0


def test_keyed_state_survives_two_killed_workers(runner):
    """Two workers die one after the other: the agents they held start again from the last
    checkpoint each time, and the alerts equal a clean run."""
    txns = transactions(600_000, n_accounts=40_000, seed=8)
    job = detect_fraud(sl.Stream.from_table(txns, batch_size=5_000))
    expected = job.run()
    killed = run_killing_a_worker(job, DaskRunner(runner.client, partitions_per_worker=12),
                                  "exchange", kills=2)
    columns = [c for c in expected.table.column_names if c != "detection_latency_ms"]
    sl.assert_same_results(killed.table.select(columns), expected.table.select(columns),
                           rtol=1e-12)
    # The second kill may hit the worker that replaced the first one, holding no agent yet:
    # Dask then runs its partition tasks again by itself, without restarting an agent.
    assert killed.execution.restarts >= 1
    assert_balanced(killed.operator_metrics)
