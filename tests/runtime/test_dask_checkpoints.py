"""Checkpoints on Dask: the key-range agents' consistent cuts written to a directory, a job
that failed resumed from them with the output of an uninterrupted local run, and a
checkpoint refused when the job or the way it is cut differs."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import sabot_lab as sl
from sabot_lab.datasets import clicks, transactions
from sabot_lab.patterns.fraud import detect_fraud
from sabot_lab.patterns.silence import Silence
from sabot_lab.runtime.checkpoint import CheckpointError
from sabot_lab.runtime.dask import DaskRunner
from tests.oracle import assert_balanced
from tests.patterns.test_silence_pattern import BOUND, GAP, heartbeats


class CrashAt:
    """A pass-through stage that raises on a batch holding ``column`` >= ``value`` while
    armed: a job that fails part-way, in whichever task meets that row."""

    __name__ = "crash"

    def __init__(self, column: str, value: object, armed: bool = True) -> None:
        self.column, self.value, self.armed = column, value, armed

    def fingerprint(self) -> str:
        """The same stage whether armed or not (a crash is not part of the job)."""
        return "crash"

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.armed and pc.any(pc.greater_equal(batch[self.column], self.value)).as_py():
            raise RuntimeError("simulated crash")
        return batch


def _fraud_job(crash: CrashAt) -> sl.Stream:
    txns = transactions(60_000, n_accounts=2_000, seed=5)
    stream = sl.Stream.from_table(txns, batch_size=1_000).map_batches(crash, txns.schema)
    return detect_fraud(stream)


def _window_job(crash: CrashAt) -> sl.Stream:
    events = clicks(40_000, seed=3)
    return (sl.Stream.from_table(events, batch_size=800).map_batches(crash, events.schema)
            .with_watermark("event_time", max_out_of_orderness="5s", allowed_lateness="30s")
            .window(sl.tumbling("1min")).group_by("path").agg(n=sl.count(),
                                                               p95=sl.quantile("bytes", 0.95)))


def _silence_job(crash: CrashAt) -> sl.Stream:
    """Event-time timers: alerts from the absence of heartbeats."""
    beats = heartbeats()
    return (sl.Stream.from_table(beats, batch_size=300).map_batches(crash, beats.schema)
            .with_watermark("t", unit="s", max_out_of_orderness=f"{BOUND}s")
            .key_by("device").process(Silence("device", "t", GAP)))


def _crash(make_job: object, armed: bool = True) -> CrashAt:
    """A crash in the last third of the input."""
    if make_job is _silence_job:
        return CrashAt("seq", 4_000, armed)
    if make_job is _fraud_job:
        txns = transactions(60_000, n_accounts=2_000, seed=5)
        return CrashAt("txn_id", txns["txn_id"][45_000].as_py(), armed)
    events = clicks(40_000, seed=3)
    return CrashAt("event_time", pc.max(events["event_time"].slice(0, 30_000)), armed)


#: What differs from run to run (a timing, not a row).
MEASURED = {_fraud_job: ("detection_latency_ms",), _window_job: (), _silence_job: ()}


@pytest.mark.parametrize("make_job", [_fraud_job, _window_job, _silence_job])
def test_dask_resumes_a_failed_job_from_its_checkpoint(runner, tmp_path, make_job):
    expected = make_job(_crash(make_job, armed=False)).run()
    dask = DaskRunner(runner.client, partitions_per_worker=6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_job(_crash(make_job)).run(dask, checkpoint_dir=tmp_path, checkpoint_every=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["manifest"]
    assert manifest["epoch"] >= 1  # the failure came after at least one cut
    resumed = make_job(_crash(make_job, armed=False)).run(
        dask, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    sl.assert_same_results(resumed, expected, rtol=1e-9, ignore_columns=MEASURED[make_job])
    for name, table in expected.side_outputs.items():
        sl.assert_same_results(resumed.side_outputs[name], table)
    assert [m.rows_in for m in resumed.operator_metrics] == [
        m.rows_in for m in expected.operator_metrics]
    assert_balanced(resumed.operator_metrics)


def test_a_dask_checkpoint_is_bound_to_how_the_job_is_cut(runner, tmp_path):
    job = _fraud_job(_crash(_fraud_job, armed=False))
    job.run(DaskRunner(runner.client, partitions_per_worker=4), checkpoint_dir=tmp_path,
            checkpoint_every=2)
    with pytest.raises(CheckpointError, match="dask:agents"):
        job.run(DaskRunner(runner.client, partitions_per_worker=3), checkpoint_dir=tmp_path,
                checkpoint_every=2, resume=True)
    with pytest.raises(CheckpointError, match="another job"):
        job.run(checkpoint_dir=tmp_path, resume=True)


def test_a_stateless_job_on_dask_refuses_checkpoints(runner, tmp_path):
    job = sl.Stream.from_table(pa.table({"a": list(range(100))})).filter(sl.col("a") > 5)
    with pytest.raises(sl.PlanError, match="stateless job re-runs a lost partition"):
        job.run(runner, checkpoint_dir=tmp_path)


def test_a_dask_job_resumes_with_another_checkpoint_interval(runner, tmp_path):
    expected = _window_job(_crash(_window_job, armed=False)).run()
    dask = DaskRunner(runner.client, partitions_per_worker=6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _window_job(_crash(_window_job)).run(dask, checkpoint_dir=tmp_path, checkpoint_every=3)
    resumed = _window_job(_crash(_window_job, armed=False)).run(
        dask, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    sl.assert_same_results(resumed.table, expected.table, rtol=1e-9)


def test_a_damaged_agent_carry_is_refused_even_with_a_valid_manifest(runner, tmp_path):
    """An attacker who rewrites a state file and re-signs the manifest still gets a clear
    refusal, not a job that quietly restarts its watermark."""
    job = _window_job(_crash(_window_job, armed=False))
    dask = DaskRunner(runner.client, partitions_per_worker=4)
    job.run(dask, checkpoint_dir=tmp_path, checkpoint_every=2)
    path = tmp_path / "manifest.json"
    body = json.loads(path.read_text())["manifest"]
    name = body["states"]["carry@range-00000"]
    data = b"\0" * 16
    (tmp_path / name).write_bytes(data)
    body["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    path.write_text(json.dumps({"manifest": body,
                                "sha256": hashlib.sha256(canonical).hexdigest()}))
    with pytest.raises(CheckpointError, match="carry of key range 0 has 16 bytes"):
        job.run(dask, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
