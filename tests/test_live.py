"""Live jobs (``Stream.start``) and interrupted runs on the LocalRunner: a job stopped at any
point returns the output of the input it read (only final windows), and leaves nothing
running."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import clicks
from tests.oracle import assert_same_rows

PATIENCE = 60  # seconds a test waits for a job before failing (a hang guard, not a timing)
BATCH = 1_000


class Gate:
    """A source that yields ``table`` in batches and, before batch ``at``, says it got there
    and waits until the test opens it (so a stop lands at a known point)."""

    def __init__(self, table: pa.Table, at: int) -> None:
        self.table, self.at = table, at
        self.reached, self.open = threading.Event(), threading.Event()

    def __call__(self):
        for i, batch in enumerate(self.table.to_batches(max_chunksize=BATCH)):
            if i == self.at:
                self.reached.set()
                assert self.open.wait(PATIENCE), "the test never opened the gate"
            yield batch


def _windows(source: sl.Stream) -> sl.Stream:
    return (source.with_watermark("event_time", max_out_of_orderness="500ms")
            .window(sl.tumbling("2s")).group_by("path").agg(n=sl.count(),
                                                             total=sl.sum("bytes")))


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return clicks(30_000, seed=4).select(["event_time", "path", "bytes"])


def _threads() -> set[str]:
    """The threads a job may start (its own, and the LocalRunner's pool)."""
    return {t.name for t in threading.enumerate()
            if t.name.startswith(("sabot-live-job", "ThreadPoolExecutor"))}


def final_at(full: pd.DataFrame, read: pa.Table) -> pd.DataFrame:
    """The windows of a full run that are final once ``read`` is read: those that end at
    or before its watermark (its largest event time less the bound)."""
    mark = pd.Timestamp(read["event_time"].to_pandas().max()) - pd.Timedelta(milliseconds=500)
    return full[full["window_end"] <= mark]


@pytest.mark.parametrize("at", [3, 7, 23])
def test_a_stopped_window_job_returns_the_final_windows_of_what_it_read(events, at):
    before = _threads()
    full = _windows(sl.Stream.from_table(events, batch_size=BATCH)).run().to_pandas()
    gate = Gate(events, at)
    job = _windows(sl.Stream.from_batches(gate, events.schema)).start()
    assert gate.reached.wait(PATIENCE)
    assert job.status == "running"
    job.stop(wait=False)
    assert job.status == "stopping"
    gate.open.set()
    result = job.result(timeout=PATIENCE)
    assert job.status == "stopped"
    read = events.slice(0, result.rows_in)
    assert result.rows_in == (at + 1) * BATCH  # the batch in flight, and no more
    expected = final_at(full, read)
    assert len(expected) > 0
    assert_same_rows(result.table, pa.Table.from_pandas(expected, preserve_index=False))
    assert job.output().num_rows == result.table.num_rows
    assert _threads() <= before  # nothing of the job is left running


def test_stop_with_flush_fires_the_open_windows_with_what_they_hold(events):
    gate = Gate(events, 10)
    job = _windows(sl.Stream.from_batches(gate, events.schema)).start()
    assert gate.reached.wait(PATIENCE)
    job.stop(flush=True, wait=False)
    gate.open.set()
    flushed = job.result(timeout=PATIENCE)
    read = events.slice(0, flushed.rows_in)
    # The same as a whole run over just the rows read (its end flushes every window).
    bounded = _windows(sl.Stream.from_table(read, batch_size=BATCH)).run()
    assert_same_rows(flushed.table, bounded.table)


def test_a_job_that_ends_by_itself_is_finished(events):
    job = _windows(sl.Stream.from_table(events, batch_size=BATCH)).start()
    result = job.result(timeout=PATIENCE)
    assert job.status == "finished"
    assert_same_rows(result.table, _windows(sl.Stream.from_table(events)).run().table)
    assert job.stop().table.equals(result.table)  # stopping an ended job: its result
    assert "finished" in repr(job) and "LiveJob" in job._repr_html_()


def test_the_newest_rows_while_it_runs(events):
    gate = Gate(events, 5)
    stream = sl.Stream.from_batches(gate, events.schema).filter(sl.col("bytes") > 0)
    job = stream.start(sl.LocalRunner(threads=1))  # a batch reaches the sink as it is done
    assert gate.reached.wait(PATIENCE)
    newest = job.latest(3)
    assert len(newest) == 3 and job.rows_out >= 3
    expected = events.filter(pa.compute.greater(events["bytes"], 0))
    assert newest["bytes"].tolist() == expected["bytes"].to_pylist()[job.rows_out - 3:
                                                                     job.rows_out]
    gate.open.set()
    assert job.result(timeout=PATIENCE).table.num_rows == expected.num_rows


def test_a_failed_job_hands_over_its_error():
    def broken(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise ValueError("bad batch")

    job = sl.Stream.from_table(pa.table({"a": [1, 2]})).map_batches(
        broken, pa.schema([("a", pa.int64())])).start()
    with pytest.raises(ValueError, match="bad batch"):
        job.result(timeout=PATIENCE)
    assert job.status == "failed"


class Interrupt:
    """A stage that raises KeyboardInterrupt at batch ``at``, as Ctrl-C does."""

    __name__ = "interrupt"

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt
        return batch


@pytest.mark.parametrize("threads", [1, 4])
def test_an_interrupted_run_says_how_to_keep_a_partial_result(events, threads):
    before = _threads()
    job = _windows(sl.Stream.from_table(events, batch_size=BATCH).map_batches(
        Interrupt(5), events.schema))
    with pytest.raises(sl.JobInterrupted, match=r"job = stream\.start\(\)"):
        job.run(sl.LocalRunner(threads=threads))
    assert _threads() <= before


def test_an_unbounded_source_runs_until_stopped():
    def forever():
        i = 0
        while True:
            yield pa.record_batch({"i": np.arange(i, i + 100)})
            i += 100

    job = sl.Stream.from_batches(forever, pa.schema([("i", pa.int64())])).start()
    deadline = time.monotonic() + PATIENCE
    while job.rows_out < 1_000:  # polling the job: it runs on its own thread
        assert time.monotonic() < deadline and job.status == "running", job
        time.sleep(0.01)
    result = job.stop(timeout=PATIENCE)
    assert result.table["i"].to_pylist() == list(range(result.table.num_rows))
    assert result.table.num_rows >= 1_000
