"""Sink targets: collect into a table, write Parquet, or call a function per batch.

Each target opens a writer for one run (``open(schema)``), which takes batches with
``write(batch)`` and ends with ``close() -> pa.Table | None`` (the collected table, if any).

Examples
--------
>>> import pyarrow as pa
>>> writer = CollectSink().open(pa.schema({"a": pa.int64()}))
>>> writer.write(pa.record_batch({"a": [1, 2]}))
>>> writer.close().num_rows
2
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["CallbackSink", "CollectSink", "ParquetSink", "check_parquet_target",
           "remove_stale_temp_files"]

logger = logging.getLogger(__name__)


class _CollectWriter:
    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def close(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)

    def abort(self) -> None:
        self.batches.clear()


class CollectSink:
    """Collects every batch into one ``pyarrow.Table`` (all collect sinks are equal)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CollectSink)

    def __hash__(self) -> int:
        return hash(CollectSink)

    def describe(self) -> str:
        return "collect"

    def open(self, schema: pa.Schema) -> _CollectWriter:
        return _CollectWriter(schema)


#: A Parquet sink writes ``.<name>.sabot-tmp-<host>-<pid>-<token>.tmp`` beside its target,
#: then renames it; the host and process id tell whether the writer is still alive.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.sabot-tmp-(?P<host>.+)-(?P<pid>\d+)-"
                        r"(?P<token>[0-9a-f]{32})\.tmp$")


def _temp_path(path: Path) -> Path:
    """A fresh temporary name for ``path``, in its directory (so the rename is atomic)."""
    return path.with_name(f".{path.name}.sabot-tmp-{socket.gethostname()}-{os.getpid()}-"
                          f"{uuid.uuid4().hex}.tmp")


def check_parquet_target(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a place a Parquet sink may write to, or an error saying what to do.

    Called when a sink is made, so that a job with nowhere to write fails before it runs,
    and again when it starts writing.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     check_parquet_target(d)
    Traceback (most recent call last):
    ...
    IsADirectoryError: cannot write Parquet to ... it is a directory ...
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot write Parquet to {path}: it is a directory (to_parquet writes one file); "
            f"name a file inside it, e.g. {path / 'part-0.parquet'}, or remove the directory")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"cannot write Parquet to {path}: the file already exists; remove it, choose "
            f"another path, or pass overwrite=True to replace it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write Parquet to {path}: {parent} is a "
                                         f"file, not a directory")
            break
    return path


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux): signal 0 is all we know
        return True
    return stat[stat.rindex(")") + 2:][:1] != "Z"


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files that Parquet sinks on this host left in ``directory``
    when their process died (killed mid-write); return them.

    Only files named as :class:`ParquetSink` names them, written by a process of this host
    that no longer runs, are touched: a live writer's file, or another host's (on a shared
    file system, whose processes cannot be checked from here), is left alone.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    host = socket.gethostname()
    removed = []
    for entry in directory.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if (match is None or match["host"] != host or int(match["pid"]) == os.getpid()
                or _process_alive(int(match["pid"]))):
            continue
        entry.unlink(missing_ok=True)
        logger.warning("removed %s, left by Parquet writer process %s, which is no longer "
                       "running", entry, match["pid"])
        removed.append(entry)
    return removed


def _made_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, outermost last."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or on POSIX a directory's entries) to stable storage."""
    if path.is_dir() and os.name != "posix":
        return  # directories cannot be opened for fsync elsewhere
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give ``tmp`` the name ``path`` atomically; without ``overwrite`` never replace a file
    that appeared there while the job ran."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if ``path`` exists, atomically (a rename would replace it)
    except FileExistsError:
        raise FileExistsError(
            f"cannot write Parquet to {path}: a file appeared there while the job ran; "
            f"the output was not written (remove it, or pass overwrite=True)") from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(f"cannot write Parquet to {path}: a file appeared there "
                                  f"while the job ran; the output was not written") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


class _ParquetWriter:
    """Writes a temporary file beside the target; ``close`` makes it durable (fsync) and
    then gives it the target's name; ``abort`` or any failure removes it."""

    def __init__(self, path: Path, schema: pa.Schema, overwrite: bool) -> None:
        self.path, self.overwrite = path, overwrite
        self.tmp = _temp_path(path)
        self.created = _made_dirs(path.parent)
        try:
            self.writer = pq.ParquetWriter(self.tmp, schema)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        try:
            self.writer.close()
            _fsync(self.tmp)  # the data is on disk before its name says it is complete
            _publish(self.tmp, self.path, self.overwrite)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        # The new name (and any directory made for it) survives a crash from here on.
        for directory in (self.path.parent, *(d.parent for d in self.created)):
            _fsync(directory)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class ParquetSink:
    """Writes one Parquet file; it appears atomically when the run succeeds (temp + rename).

    Parameters
    ----------
    path
        The file to write. An existing directory there is an error, and so is an existing
        file unless ``overwrite``; both are found when the sink is made, before the job runs.
    overwrite
        Replace an existing file.

    Notes
    -----
    The rows go to a temporary file beside ``path`` (``.<name>.sabot-tmp-<host>-<pid>-...
    .tmp``), which is flushed to disk (fsync) before it is renamed to ``path``, and the
    directory after, so a crash leaves either the whole file or none. A failed run removes
    its temporary file; those of writers that were killed are removed by the next sink that
    writes into the same directory.
    """

    def __init__(self, path: str | Path, overwrite: bool = False) -> None:
        self.path = check_parquet_target(path, overwrite)
        self.overwrite = overwrite

    def describe(self) -> str:
        return f"parquet {self.path.name}"

    def open(self, schema: pa.Schema) -> _ParquetWriter:
        check_parquet_target(self.path, self.overwrite)  # again: time passed since
        remove_stale_temp_files(self.path.parent)
        return _ParquetWriter(self.path, schema, self.overwrite)


class _CallbackWriter:
    def __init__(self, fn: Callable[[pa.RecordBatch], object]) -> None:
        self.fn = fn

    def write(self, batch: pa.RecordBatch) -> None:
        self.fn(batch)

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


class CallbackSink:
    """Calls ``fn(batch)`` for every output batch, in order, in the caller's thread."""

    def __init__(self, fn: Callable[[pa.RecordBatch], object]) -> None:
        self.fn = fn

    def describe(self) -> str:
        return f"for_each_batch {getattr(self.fn, '__name__', 'fn')}"

    def open(self, schema: pa.Schema) -> _CallbackWriter:
        return _CallbackWriter(self.fn)
