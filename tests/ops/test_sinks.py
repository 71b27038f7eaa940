"""The Parquet sink (issue 13, items 10 and 13): nowhere to write fails before the job
runs, a failed or refused run leaves no temporary file, temporary files of killed writers
are cleaned up, and the file is flushed to disk before the rename that publishes it.

Outputs are read back with plain pyarrow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sabot_lab as sl
from sabot_lab.ops.sinks import ParquetSink

ROOT = Path(__file__).resolve().parents[2]
TABLE = pa.table({"a": list(range(10)), "b": [f"v{i}" for i in range(10)]})


class CountingSource:
    """A ``from_batches`` callable that counts how often the job read it."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> list[pa.RecordBatch]:
        self.reads += 1
        return TABLE.to_batches(max_chunksize=4)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_to_parquet_onto_a_directory_fails_before_the_job_runs(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("untouched")
    source = CountingSource()
    with pytest.raises(IsADirectoryError, match=rf"{target}: it is a directory.*name a file"):
        sl.Stream.from_batches(source, TABLE.schema).to_parquet(target)
    assert source.reads == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_to_parquet_onto_an_existing_file_fails_before_the_job_runs(tmp_path):
    target = tmp_path / "out.parquet"
    target.write_bytes(b"earlier output")
    source = CountingSource()
    with pytest.raises(FileExistsError, match=rf"{target}: the file already exists.*overwrite"):
        sl.Stream.from_batches(source, TABLE.schema).to_parquet(target)
    assert source.reads == 0
    assert target.read_bytes() == b"earlier output"
    assert temp_files(tmp_path) == []


def test_overwrite_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.parquet"
    target.write_bytes(b"earlier output")
    sl.Stream.from_table(TABLE, batch_size=3).run(target=ParquetSink(target, overwrite=True))
    assert pq.read_table(target).equals(TABLE)
    assert temp_files(tmp_path) == []


def test_a_file_that_appears_while_the_job_runs_is_not_replaced(tmp_path):
    target = tmp_path / "out.parquet"

    def intrude(batch: pa.RecordBatch) -> pa.RecordBatch:
        if not target.exists():
            target.write_bytes(b"another writer")
        return batch

    job = sl.Stream.from_table(TABLE, batch_size=3).map_batches(intrude, TABLE.schema)
    with pytest.raises(FileExistsError, match="appeared there while the job ran"):
        job.to_parquet(target)
    assert target.read_bytes() == b"another writer"
    assert temp_files(tmp_path) == []


def _killed_writer(target: Path) -> None:
    """Start writing ``target`` in another process, which dies before it closes the file."""
    code = (
        "import os, pyarrow as pa\n"
        "from sabot_lab.ops.sinks import ParquetSink\n"
        f"writer = ParquetSink({str(target)!r}).open(pa.schema({{'a': pa.int64()}}))\n"
        "writer.write(pa.record_batch({'a': [1, 2, 3]}))\n"
        "os._exit(1)  # killed: neither close nor abort runs\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, timeout=120)


def test_temp_files_of_killed_writers_are_removed_by_the_next_writer(tmp_path):
    _killed_writer(tmp_path / "first.parquet")
    stale = temp_files(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".first.parquet.")  # what a kill leaves
    alive = ParquetSink(tmp_path / "live.parquet").open(TABLE.schema)  # a writer still busy
    try:
        sl.Stream.from_table(TABLE).to_parquet(tmp_path / "second.parquet")
        assert temp_files(tmp_path) == [alive.tmp.name]
    finally:
        alive.abort()
    assert pq.read_table(tmp_path / "second.parquet").equals(TABLE)
    assert temp_files(tmp_path) == []


def test_the_file_is_flushed_to_disk_before_the_rename_that_publishes_it(tmp_path,
                                                                         monkeypatch):
    target = tmp_path / "sub" / "out.parquet"
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: object, dst: object, **kwargs: object) -> None:
        events.append(("publish", str(dst)))
        real_link(src, dst, **kwargs)

    def replace(src: object, dst: object, **kwargs: object) -> None:
        events.append(("publish", str(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    sl.Stream.from_table(TABLE).to_parquet(target)
    monkeypatch.undo()

    published = events.index(("publish", str(target)))
    before, after = events[:published], events[published + 1:]
    assert any(kind == "fsync" and Path(p).name.startswith(".out.parquet.") and
               p.endswith(".tmp") for kind, p in before), events
    assert ("fsync", str(target.parent)) in after, events
    assert ("fsync", str(tmp_path)) in after, events  # "sub" was made for this file
    assert pq.read_table(target).equals(TABLE)
