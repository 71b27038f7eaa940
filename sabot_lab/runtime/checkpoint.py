"""Checkpoints of a local run that can be trusted: bound to one job, verified, never executed.

Every ``every`` source batches the :class:`~sabot_lab.runtime.local.LocalRunner` stops
pulling (between two batches nothing is in flight) and writes an *epoch* into its directory:

* the state of every stateful operator (its ``snapshot()`` bytes: numeric arrays and JSON,
  or Arrow IPC for keyed state; never pickle),
* the output and side-output rows produced since the previous epoch (Arrow IPC files),

then commits it by atomically replacing ``manifest.json``, which names every file of every
epoch with its size and SHA-256, the source positions, every operator's metrics and the
job's fingerprint (:meth:`~sabot_lab.plan.graph.JobGraph.fingerprint`: every operator's
parameters, the batch sizes and the sources' identity). The manifest carries a SHA-256 of
itself. Files are fsynced before the rename that publishes them.

A run started with ``resume=True`` refuses, with a :class:`CheckpointError` that names the
file or the parameter, a checkpoint that

* belongs to another job or to other input (``old -> new`` for what differs),
* reads a source that cannot be identified (an iterator or a generator function) unless the
  stream names it with ``source_id=`` or the run says ``resume="trust"``,
* has a damaged, truncated, missing or extra-large file, a malformed manifest, or a path
  that leaves the directory,
* is in use by another run (an exclusive lock is held for the whole run).

Otherwise operators get their state back, sources skip what they had delivered and the sink
first receives the committed output again: the final output equals an uninterrupted run.

Examples
--------
>>> import tempfile
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> events = pa.table({"k": [1, 2, 1, 1] * 50, "v": list(range(200))})
>>> job = (sl.Stream.from_table(events, batch_size=10).key_by("k")
...        .process(sl.PythonProcessFunction(
...            lambda key, row, state: [], state={"n": "int64"}, columns=["v"],
...            output=pa.schema([("k", pa.int64())]))))
>>> with tempfile.TemporaryDirectory() as directory:
...     result = job.run(checkpoint_dir=directory, checkpoint_every=5)
...     sorted(p.name for p in __import__("pathlib").Path(directory).iterdir())[-1]
'manifest.json'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from sabot_lab.errors import CheckpointError
from sabot_lab.plan.fingerprint import UNKNOWN, differences

__all__ = ["CheckpointSpec", "Checkpoints", "Epoch", "fsync_directory",
           "write_durably"]

log = logging.getLogger(__name__)
_MANIFEST = "manifest.json"
_LOCK = ".lock"
_FORMAT = "sabot_lab.checkpoint/2"
#: Every file a manifest may name: an epoch folder and one of three kinds of file.
_FILE = re.compile(r"epoch-(\d{6})/(output\.arrow|side-\d+\.arrow|state-\d+\.bin)")
_MAX_MANIFEST = 64 << 20

Resume = bool | Literal["trust"]


@dataclass(frozen=True)
class CheckpointSpec:
    """Where a run writes its checkpoints, every how many source batches, and whether it
    resumes the one there (``True``, or ``"trust"``: see :class:`Checkpoints`)."""

    directory: str | Path
    every: int = 10
    resume: Resume = False


@dataclass
class Epoch:
    """What a committed checkpoint holds."""

    number: int
    positions: dict[str, int]
    metrics: dict[str, dict]
    states: dict[str, bytes]
    outputs: list[pa.Table] = field(default_factory=list)
    side_outputs: dict[str, list[pa.Table]] = field(default_factory=dict)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (a no-op where directories
    cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_durably(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` and fsync it; returns its SHA-256 (hex)."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return hashlib.sha256(data).hexdigest()


def _ipc_bytes(batches: list[pa.RecordBatch], schema: pa.Schema) -> bytes:
    """An Arrow IPC file of ``batches``. Dictionary columns are unified first: the file
    format holds one dictionary per column, while a stream may change it between batches."""
    table = pa.Table.from_batches(batches, schema)
    if any(pa.types.is_dictionary(f.type) for f in schema):
        table = table.unify_dictionaries()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _unknown_sources(fingerprint: Mapping[str, Any]) -> list[str]:
    """Operator ids of sources whose data cannot be identified (and carry no source_id)."""
    def holds_unknown(value: Any) -> bool:
        if isinstance(value, dict):
            return any(holds_unknown(v) for v in value.values())
        if isinstance(value, list):
            return any(holds_unknown(v) for v in value)
        return value == UNKNOWN

    return [op_id for op_id, node in fingerprint.items()
            if isinstance(node, dict) and node.get("source_id") is None and holds_unknown(node)]


class Checkpoints:
    """A checkpoint directory for one job, locked for the lifetime of this object.

    Parameters
    ----------
    directory
        Where epochs are written (created if missing).
    every
        Source batches between two checkpoints.
    resume
        ``True``: continue from the committed epoch (start fresh if there is none);
        ``"trust"``: the same, also for sources that cannot be identified (the caller vouches
        that they deliver the same batches again). Without it, a directory that already holds
        a checkpoint is an error, so that nothing is overwritten by accident.
    job
        The job's fingerprint (:meth:`~sabot_lab.plan.graph.JobGraph.fingerprint`).
    """

    def __init__(self, directory: str | Path, every: int, resume: Resume,
                 job: Mapping[str, Any]) -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 batch, got {every}")
        if resume not in (True, False, "trust"):
            raise ValueError(f"resume must be True, False or 'trust', got {resume!r}")
        self.directory = Path(directory)
        self.every = every
        self.resume = resume
        self.job = json.loads(json.dumps(job))  # as it will read back from the manifest
        self.since = 0
        self.epoch = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.outputs: list[str] = []
        self.side_files: dict[str, list[str]] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        try:
            self._clean_uncommitted()
            if (self.directory / _MANIFEST).exists() and not resume:
                raise CheckpointError(
                    f"{self.directory} holds a checkpoint: pass resume=True to continue that "
                    f"run, or choose an empty directory (or delete this one) to start over")
        except BaseException:
            self.close()
            raise

    # --- the lock ------------------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise CheckpointError(
                    f"{self.directory} is in use by another run (it holds the lock "
                    f"{self.directory / _LOCK}); wait for it to finish, or use another "
                    f"directory") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def close(self) -> None:
        """Release the directory's lock (the run is over)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clean_uncommitted(self) -> None:
        """Remove what a run that died mid-checkpoint left: a manifest being written."""
        (self.directory / f".{_MANIFEST}.tmp").unlink(missing_ok=True)

    # --- reading -------------------------------------------------------------------------

    def _path(self, name: Any) -> Path:
        """The file a manifest names, which must be one this module writes, in the
        directory (no absolute path, no ``..``, no link out)."""
        if not isinstance(name, str) or not _FILE.fullmatch(name):
            raise CheckpointError(f"{self.directory / _MANIFEST} names a file {name!r} that is "
                                  f"not part of a checkpoint: refusing to read it")
        path = self.directory / name
        if path.is_symlink() or path.parent.is_symlink():
            raise CheckpointError(f"{path} is a symbolic link: refusing to follow it")
        return path

    def _read_verified(self, name: str) -> bytes:
        path = self._path(name)
        entry = self.files.get(name)
        if not isinstance(entry, dict):
            raise CheckpointError(f"{self.directory / _MANIFEST} does not list {name}")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
        except OSError as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from None
        if len(data) != entry.get("bytes"):
            raise CheckpointError(f"{path} has {len(data):,} bytes, the manifest says "
                                  f"{entry.get('bytes')!r}: the file is truncated or damaged")
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CheckpointError(f"{path} does not match its SHA-256 in the manifest: the "
                                  f"file is damaged")
        return data

    def _read_table(self, name: str) -> pa.Table:
        data = self._read_verified(name)
        try:
            return pa.ipc.open_file(pa.py_buffer(data)).read_all()
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise CheckpointError(f"{self.directory / name} is not a valid Arrow file "
                                  f"({exc})") from None

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.directory / _MANIFEST
        try:
            if path.stat().st_size > _MAX_MANIFEST:
                raise CheckpointError(f"{path} is larger than any manifest this writes")
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            outer = json.loads(raw)
            body = outer["manifest"]
            digest = outer["sha256"]
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{path} is not a checkpoint manifest ({exc!r})") from None
        if not isinstance(body, dict) or hashlib.sha256(_canonical(body)).hexdigest() != digest:
            raise CheckpointError(f"{path} does not match its own SHA-256: the manifest is "
                                  f"damaged")
        if body.get("format") != _FORMAT:
            raise CheckpointError(f"{path} has format {body.get('format')!r}; this version of "
                                  f"sabot_lab reads {_FORMAT!r} (start over in a new directory)")
        return body

    def _check_job(self, old: Any) -> None:
        if old != self.job:
            changed = "\n  ".join(differences(old, self.job))
            raise CheckpointError(
                f"the checkpoint in {self.directory} belongs to another job or other input; "
                f"what differs (checkpoint -> this run):\n  {changed}\nRun the same job over "
                f"the same input to resume, or start over in a new directory")
        unknown = _unknown_sources(self.job)
        if unknown and self.resume != "trust":
            raise CheckpointError(
                f"source {', '.join(unknown)} reads an iterator or a generator function, so "
                f"this run cannot check that it delivers the same batches as the run that "
                f"wrote {self.directory}. Name the data with source_id= (from_generator, "
                f"from_batches), or pass resume='trust' if you know it does")

    def load(self, stateful: set[str], sources: set[str]) -> Epoch | None:
        """The committed epoch, verified, or ``None`` when there is none.

        ``stateful`` and ``sources`` are the operator ids of this job's stateful operators
        and sources: the epoch must hold a state for each of the first and nothing else.
        """
        body = self._read_manifest()
        if body is None:
            return None
        self._check_job(body.get("job"))
        try:
            number = body["epoch"]
            positions = body["positions"]
            metrics = body["metrics"]
            states = body["states"]
            self.files = body["files"]
            self.outputs = body["outputs"]
            self.side_files = body["side_outputs"]
        except KeyError as exc:
            raise CheckpointError(f"{self.directory / _MANIFEST} lacks {exc}") from None
        self._check_shapes(number, positions, metrics, states, stateful, sources)
        epoch = Epoch(number, positions, metrics,
                      {op_id: self._read_verified(name) for op_id, name in states.items()})
        epoch.outputs = [self._read_table(name) for name in self.outputs]
        epoch.side_outputs = {side: [self._read_table(name) for name in names]
                              for side, names in self.side_files.items()}
        self.epoch = number
        log.info("resuming from checkpoint epoch %d in %s", number, self.directory)
        return epoch

    def _check_shapes(self, number: Any, positions: Any, metrics: Any, states: Any,
                      stateful: set[str], sources: set[str]) -> None:
        where = self.directory / _MANIFEST

        def require(condition: bool, what: str) -> None:
            if not condition:
                raise CheckpointError(f"{where} is malformed: {what}")

        require(type(number) is int and number >= 1, f"epoch {number!r}")
        require(isinstance(positions, dict) and set(positions) <= sources and all(
            type(v) is int and v >= 0 for v in positions.values()), "source positions")
        require(isinstance(metrics, dict) and all(
            isinstance(m, dict) and all(type(v) in (int, float) or v is None
                                        for v in m.values()) for m in metrics.values()),
                "operator metrics")
        require(isinstance(states, dict) and set(states) == stateful,
                f"states for {sorted(states) if isinstance(states, dict) else states!r}, "
                f"the job's stateful operators are {sorted(stateful)}")
        require(isinstance(self.files, dict) and isinstance(self.outputs, list)
                and isinstance(self.side_files, dict)
                and all(isinstance(v, list) for v in self.side_files.values()), "file lists")
        named = [*states.values(), *self.outputs, *(n for v in self.side_files.values()
                                                    for n in v)]
        for name in named:
            self._path(name)
        require(set(named) == set(self.files), "the files listed and the files used differ")

    # --- writing -------------------------------------------------------------------------

    def due(self) -> bool:
        """Count one more source batch; true when a checkpoint is due before it."""
        self.since += 1
        return self.since > self.every

    def write(self, positions: dict[str, int], metrics: dict[str, dict],
              states: dict[str, bytes], output: list[pa.RecordBatch], schema: pa.Schema,
              side_outputs: dict[str, tuple[list[pa.RecordBatch], pa.Schema]]) -> None:
        """Write and commit the next epoch."""
        number = self.epoch + 1
        folder = self.directory / f"epoch-{number:06d}"
        if folder.exists():  # left by a run that died before committing it
            shutil.rmtree(folder)
        folder.mkdir()
        files = dict(self.files)

        def put(name: str, data: bytes) -> str:
            files[name] = {"sha256": write_durably(self.directory / name, data),
                           "bytes": len(data)}
            return name

        outputs = [*self.outputs, put(f"{folder.name}/output.arrow", _ipc_bytes(output, schema))]
        side_files = {k: list(v) for k, v in self.side_files.items()}
        for i, (name, (batches, side_schema)) in enumerate(sorted(side_outputs.items())):
            side_files.setdefault(name, []).append(
                put(f"{folder.name}/side-{i}.arrow", _ipc_bytes(batches, side_schema)))
        old_states = {n for n in files if n.startswith(f"epoch-{self.epoch:06d}/state-")}
        names = {op_id: put(f"{folder.name}/state-{i}.bin", state)
                 for i, (op_id, state) in enumerate(sorted(states.items()))}
        for name in old_states:  # superseded: only the committed epoch's state is ever read
            del files[name]
        fsync_directory(folder)
        body = {"format": _FORMAT, "job": self.job, "epoch": number, "positions": positions,
                "metrics": metrics, "states": names, "files": files, "outputs": outputs,
                "side_outputs": side_files}
        tmp = self.directory / f".{_MANIFEST}.tmp"
        write_durably(tmp, json.dumps({"manifest": body, "sha256": hashlib.sha256(
            _canonical(body)).hexdigest()}).encode())
        os.replace(tmp, self.directory / _MANIFEST)  # the commit
        fsync_directory(self.directory)
        for name in old_states:
            (self.directory / name).unlink(missing_ok=True)
        self.epoch, self.files, self.outputs, self.side_files = number, files, outputs, \
            side_files
        self.since = 1
        log.debug("checkpoint epoch %d committed", number)
