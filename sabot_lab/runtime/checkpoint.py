"""Checkpoints of a local run: operator state, source positions, output so far.

Every ``every`` source batches the :class:`~sabot_lab.runtime.local.LocalRunner` stops
pulling (between two batches nothing is in flight), and writes an *epoch*:

* the state of every stateful operator (its ``snapshot()`` bytes: Arrow IPC for keyed state),
* how many batches each source has delivered, and every operator's metrics,
* the output and side-output rows produced since the previous epoch (Arrow IPC files),

then commits it by atomically replacing ``manifest.json``. A run started with
``resume=True`` restores the committed epoch: operators get their state back, sources skip
what they had delivered, and the sink first receives the committed output again. Rows
produced after the last commit are produced again by the resumed run, so the final output
equals an uninterrupted run: nothing is lost and nothing is duplicated.

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

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

__all__ = ["CheckpointError", "Checkpoints", "Epoch"]

log = logging.getLogger(__name__)
_MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory cannot be used for this run."""


@dataclass
class Epoch:
    """What a committed checkpoint holds."""

    number: int
    positions: dict[str, int]
    metrics: dict[str, dict]
    states: dict[str, bytes]
    outputs: list[pa.Table] = field(default_factory=list)
    side_outputs: dict[str, list[pa.Table]] = field(default_factory=dict)


def _write_table(path: Path, batches: list[pa.RecordBatch], schema: pa.Schema) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


class Checkpoints:
    """A checkpoint directory for one job.

    Parameters
    ----------
    directory
        Where epochs are written (created if missing).
    every
        Source batches between two checkpoints.
    resume
        Continue from the committed epoch (start fresh if there is none). Without it, a
        directory that already holds a checkpoint is an error, so that nothing is overwritten
        by accident.
    job
        A fingerprint of the job (its plan); resuming a different job is refused.
    """

    def __init__(self, directory: str | Path, every: int, resume: bool, job: str) -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 batch, got {every}")
        self.directory = Path(directory)
        self.every = every
        self.job = job
        self.since = 0
        self.epoch = 0
        manifest = self.directory / _MANIFEST
        if manifest.exists() and not resume:
            raise CheckpointError(
                f"{self.directory} holds a checkpoint: pass resume=True to continue that run, "
                f"or choose an empty directory (or delete this one) to start over")
        self.directory.mkdir(parents=True, exist_ok=True)

    def load(self) -> Epoch | None:
        """The committed epoch, or ``None`` when there is none."""
        manifest = self.directory / _MANIFEST
        if not manifest.exists():
            return None
        meta = json.loads(manifest.read_text())
        if meta["job"] != self.job:
            raise CheckpointError(
                f"the checkpoint in {self.directory} belongs to another job; its plan was:\n"
                f"{meta['job']}")
        self.epoch = meta["epoch"]
        states = {op_id: (self.directory / name).read_bytes()
                  for op_id, name in meta["states"].items()}
        epoch = Epoch(self.epoch, meta["positions"], meta["metrics"], states)
        for number in range(1, self.epoch + 1):
            folder = self.directory / f"epoch-{number:06d}"
            epoch.outputs.append(_read_table(folder / "output.arrow"))
            for path in sorted(folder.glob("side-*.arrow")):
                name = path.stem.removeprefix("side-")
                epoch.side_outputs.setdefault(name, []).append(_read_table(path))
        log.info("resuming from checkpoint epoch %d in %s", self.epoch, self.directory)
        return epoch

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
        _write_table(folder / "output.arrow", output, schema)
        for name, (batches, side_schema) in side_outputs.items():
            _write_table(folder / f"side-{name}.arrow", batches, side_schema)
        names = {}
        for i, (op_id, state) in enumerate(sorted(states.items())):
            names[op_id] = f"{folder.name}/state-{i}.bin"
            (self.directory / names[op_id]).write_bytes(state)
        meta = {"job": self.job, "epoch": number, "positions": positions, "metrics": metrics,
                "states": names}
        tmp = self.directory / f".{_MANIFEST}.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.directory / _MANIFEST)  # the commit
        for old in self.directory.glob(f"epoch-{self.epoch:06d}/state-*.bin"):
            old.unlink()  # superseded: only the committed epoch's state is ever read
        self.epoch = number
        self.since = 1
        log.debug("checkpoint epoch %d committed", number)
