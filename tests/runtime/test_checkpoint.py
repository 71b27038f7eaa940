"""Checkpoints: a run that dies mid-stream and resumes gives exactly the uninterrupted output."""

from __future__ import annotations

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import clicks, transactions
from sabot_lab.patterns.fraud import detect_fraud
from sabot_lab.runtime.checkpoint import CheckpointError
from tests.oracle import assert_balanced


class Crash:
    """A pass-through stage that raises when it sees batch number ``at`` (a simulated
    crash of the process), until it is disarmed."""

    __name__ = "crash"

    def __init__(self, at: int | None) -> None:
        self.at, self.seen = at, 0

    def fingerprint(self) -> str:
        """The same stage whether armed or not (a crash is not part of the job)."""
        return "crash"

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.seen += 1
        if self.at is not None and self.seen == self.at:
            raise RuntimeError("simulated crash")
        return batch


def _fraud_job(crash: Crash) -> sl.Stream:
    txns = transactions(40_000, n_accounts=1_500, seed=2)
    stream = sl.Stream.from_table(txns, batch_size=1_000).map_batches(crash, txns.schema)
    return detect_fraud(stream)


def _window_job(crash: Crash) -> sl.Stream:
    events = clicks(30_000, seed=1)
    return (sl.Stream.from_table(events, batch_size=700).map_batches(crash, events.schema)
            .with_watermark("event_time", max_out_of_orderness="5s", allowed_lateness="30s")
            .window(sl.tumbling("1min")).group_by("path").agg(n=sl.count(),
                                                               p95=sl.quantile("bytes", 0.95)))


def _rows(result: sl.Result) -> pa.Table:
    table = result.table
    return table.drop_columns(["detection_latency_ms"]) if "detection_latency_ms" in \
        table.column_names else table


@pytest.mark.parametrize("make_job", [_fraud_job, _window_job])
@pytest.mark.parametrize("crash_at", [2, 17, 33])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, make_job, crash_at):
    expected = make_job(Crash(None)).run()
    crash = Crash(crash_at)
    job = make_job(crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        job.run(checkpoint_dir=tmp_path, checkpoint_every=5)
    crash.at = None
    resumed = job.run(checkpoint_dir=tmp_path, checkpoint_every=5, resume=True)
    # Same rows in the same order: none lost, none doubled (latency is a timing, not a row).
    assert _rows(resumed).equals(_rows(expected))
    for name, table in expected.side_outputs.items():
        assert resumed.side_outputs[name].equals(table), name
    assert [m.rows_in for m in resumed.operator_metrics] == [
        m.rows_in for m in expected.operator_metrics]
    assert_balanced(resumed.operator_metrics)


def test_a_checkpoint_is_not_overwritten_or_resumed_by_another_job(tmp_path):
    job = _fraud_job(Crash(None))
    job.run(checkpoint_dir=tmp_path, checkpoint_every=4)
    with pytest.raises(CheckpointError, match="resume=True"):
        job.run(checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another job"):
        _window_job(Crash(None)).run(checkpoint_dir=tmp_path, resume=True)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    job = _fraud_job(Crash(None))
    fresh = job.run(checkpoint_dir=tmp_path / "new", resume=True)
    assert _rows(fresh).equals(_rows(job.run()))
