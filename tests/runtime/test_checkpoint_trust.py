"""Checkpoints you can trust: never run foreign code, never mix two jobs or two inputs, never
use damaged state (each test failed on the pickle-and-printed-plan checkpoints it replaces)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from sabot_lab.datasets import clicks, transactions
from sabot_lab.datasets.clicks import clicks_batch
from sabot_lab.patterns.fraud import FraudRules, detect_fraud
from sabot_lab.runtime.checkpoint import CheckpointError, Checkpoints
from tests.runtime.test_checkpoint import Crash, _rows


def _windows(crash: Crash, batch_size: int = 100) -> sl.Stream:
    events = clicks(4_000, seed=3)
    return (sl.Stream.from_table(events, batch_size=batch_size)
            .map_batches(crash, events.schema)
            .with_watermark("event_time", max_out_of_orderness="5s", allowed_lateness="30s")
            .window(sl.hopping("1min", "30s")).group_by("path")
            .agg(n=sl.count(), p95=sl.quantile("bytes", 0.95),
                 p50=sl.approx_quantile("latency_ms", 0.5)))


def _sessions(crash: Crash) -> sl.Stream:
    events = clicks(4_000, seed=4)
    return (sl.Stream.from_table(events, batch_size=100).map_batches(crash, events.schema)
            .with_watermark("event_time", max_out_of_orderness="5s")
            .window(sl.session("20s")).group_by("user_id").agg(n=sl.count(),
                                                                  top=sl.max("bytes")))


def _fraud(crash: Crash, rules: FraudRules | None = None, data: pa.Table | None = None,
           batch_size: int = 500, **state: str) -> sl.Stream:
    txns = transactions(10_000, n_accounts=400, seed=2) if data is None else data
    stream = sl.Stream.from_table(txns, batch_size=batch_size).map_batches(crash, txns.schema)
    return detect_fraud(stream, rules, **state)


def _crashed(job_of, directory: Path, at: int, every: int = 4) -> None:
    """Run the job until batch ``at`` crashes it, leaving a checkpoint in ``directory``."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        job_of(Crash(at)).run(checkpoint_dir=directory, checkpoint_every=every)


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())["manifest"]


def _rewrite_manifest(directory: Path, body: dict) -> None:
    """What an attacker who can write the directory does: a manifest with valid digests."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    (directory / "manifest.json").write_text(json.dumps(
        {"manifest": body, "sha256": hashlib.sha256(canonical).hexdigest()}))


def _replace_file(directory: Path, name: str, data: bytes) -> None:
    body = _manifest(directory)
    (directory / name).write_bytes(data)
    body["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _rewrite_manifest(directory, body)


# --- 1. no pickle, no path out of the directory -------------------------------------------

class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("job_of", [_windows, _sessions])
def test_a_pickle_planted_in_a_checkpoint_is_refused_and_never_run(tmp_path, job_of):
    directory = tmp_path / "ckpt"
    _crashed(job_of, directory, at=13)
    state_files = list(_manifest(directory)["states"].values())
    for name in state_files:
        assert b"\x80\x04" not in (directory / name).read_bytes()[:2]  # no pickle protocol
    marker = tmp_path / "code-ran"
    window_state = next(n for op, n in _manifest(directory)["states"].items()
                        if "window" in op)
    _replace_file(directory, window_state, pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"cannot be restored.*not a snapshot archive"):
        job_of(Crash(None)).run(checkpoint_dir=directory, resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "epoch-000001/../../x.bin",
                                  "epoch-000001/state-0.bin/../../../y"])
def test_a_manifest_naming_a_path_outside_the_directory_is_refused(tmp_path, name):
    directory = tmp_path / "ckpt"
    _crashed(_fraud, directory, at=9)
    body = _manifest(directory)
    op_id = next(iter(body["states"]))
    body["files"][name] = body["files"].pop(body["states"][op_id])
    body["states"][op_id] = name
    _rewrite_manifest(directory, body)
    with pytest.raises(CheckpointError, match="not part of a checkpoint"):
        _fraud(Crash(None)).run(checkpoint_dir=directory, resume=True)


def test_a_state_file_linked_out_of_the_directory_is_not_followed(tmp_path):
    directory = tmp_path / "ckpt"
    _crashed(_fraud, directory, at=9)
    name = next(iter(_manifest(directory)["states"].values()))
    secret = tmp_path / "secret"
    secret.write_bytes((directory / name).read_bytes())
    (directory / name).unlink()
    (directory / name).symlink_to(secret)
    with pytest.raises(CheckpointError, match="symbolic link"):
        _fraud(Crash(None)).run(checkpoint_dir=directory, resume=True)


# --- 2. one job, one input ----------------------------------------------------------------

def _transactions_like(txns: pa.Table) -> pa.Table:
    """Other data with the same schema and row count (amounts changed)."""
    amounts = pa.compute.multiply(txns["amount"], 1.5)
    return txns.set_column(txns.schema.get_field_index("amount"), "amount",
                           amounts).cast(txns.schema)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda crash: _fraud(crash, FraudRules(z_threshold=1.5)), r"z_threshold: 3\.0 -> 1\.5"),
    (lambda crash: _fraud(crash, batch_size=250), r"batch_size: 500 -> 250"),
    (lambda crash: _fraud(crash, data=_transactions_like(transactions(10_000, 400, seed=2))),
     r"0:source\.scan\.table: 'sha256:10000:[0-9a-f]+' -> 'sha256:10000:[0-9a-f]+'\n"),
    (lambda crash: _fraud(crash, FraudRules(log_amount=True)), r"log_amount: False -> True"),
    (lambda crash: _windows(crash), r"0:source"),
])
def test_resuming_another_job_or_other_input_names_what_differs(tmp_path, change, expected):
    directory = tmp_path / "ckpt"
    _crashed(_fraud, directory, at=9)
    with pytest.raises(CheckpointError, match=expected):
        change(Crash(None)).run(checkpoint_dir=directory, resume=True)


def _batches_job(batches: list[pa.RecordBatch], crash: Crash) -> sl.Stream:
    stream = sl.Stream.from_batches(batches, batches[0].schema).map_batches(
        crash, batches[0].schema)
    return detect_fraud(stream)


def test_a_shuffled_batch_list_is_other_input(tmp_path):
    batches = transactions(6_000, n_accounts=300, seed=5).to_batches(max_chunksize=500)
    directory = tmp_path / "ckpt"
    _crashed(lambda crash: _batches_job(batches, crash), directory, at=7)
    shuffled = [batches[i] for i in np.random.default_rng(0).permutation(len(batches))]
    with pytest.raises(CheckpointError, match=r"0:source\.scan\.batches"):
        _batches_job(shuffled, Crash(None)).run(checkpoint_dir=directory, resume=True)
    resumed = _batches_job(batches, Crash(None)).run(checkpoint_dir=directory, resume=True)
    assert _rows(resumed).equals(_rows(_batches_job(batches, Crash(None)).run()))


def _generated(crash: Crash, source_id: str | None, seed: int = 7) -> sl.Stream:
    schema = clicks_batch(0, 10).schema
    return (sl.Stream.from_generator(lambda i: clicks_batch(i, 300, seed=seed), 20, schema,
                                     source_id=source_id)
            .map_batches(crash, schema)
            .with_watermark("event_time", max_out_of_orderness="10s")
            .window(sl.tumbling("30s")).group_by("status").agg(n=sl.count()))


def test_a_generator_resumes_only_when_named_or_trusted(tmp_path):
    expected = _generated(Crash(None), None).run().table
    directory = tmp_path / "anonymous"
    _crashed(lambda crash: _generated(crash, None), directory, at=11)
    with pytest.raises(CheckpointError, match=r"source_id=.*resume='trust'"):
        _generated(Crash(None), None).run(checkpoint_dir=directory, resume=True)
    trusted = _generated(Crash(None), None).run(checkpoint_dir=directory, resume="trust")
    assert trusted.table.equals(expected)

    named = tmp_path / "named"
    _crashed(lambda crash: _generated(crash, "clicks-seed-7"), named, at=11)
    with pytest.raises(CheckpointError, match="source_id: 'clicks-seed-7' -> 'clicks-seed-8'"):
        _generated(Crash(None), "clicks-seed-8", seed=8).run(checkpoint_dir=named, resume=True)
    resumed = _generated(Crash(None), "clicks-seed-7").run(checkpoint_dir=named, resume=True)
    assert resumed.table.equals(expected)


def test_a_parquet_source_rewritten_since_the_checkpoint_is_other_input(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "txns.parquet"
    txns = transactions(6_000, n_accounts=300, seed=6)
    pq.write_table(txns, path, row_group_size=1_000)

    def job(crash: Crash) -> sl.Stream:
        source = sl.Stream.from_parquet(path, batch_size=500)
        return detect_fraud(source.map_batches(crash, source.schema))

    directory = tmp_path / "ckpt"
    _crashed(job, directory, at=7)
    pq.write_table(_transactions_like(txns), path, row_group_size=1_000)
    with pytest.raises(CheckpointError, match=r"0:source\.scan\.path\.files"):
        job(Crash(None)).run(checkpoint_dir=directory, resume=True)


# --- 3. damage ------------------------------------------------------------------------------

def test_truncated_missing_and_malformed_files_are_named(tmp_path):
    directory = tmp_path / "ckpt"
    _crashed(_windows, directory, at=13)
    pristine = tmp_path / "pristine"
    shutil.copytree(directory, pristine)
    state = next(iter(_manifest(directory)["states"].values()))

    def fresh() -> Path:
        shutil.rmtree(directory)
        shutil.copytree(pristine, directory)
        return directory

    def resume() -> None:
        _windows(Crash(None)).run(checkpoint_dir=directory, resume=True)

    data = (fresh() / state).read_bytes()
    (directory / state).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{state}.*truncated or damaged"):
        resume()
    (fresh() / "epoch-000001" / "output.arrow").unlink()
    with pytest.raises(CheckpointError, match=r"output\.arrow is missing"):
        resume()
    (fresh() / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest\.json is not a checkpoint manifest"):
        resume()
    body = _manifest(fresh())
    del body["positions"]
    _rewrite_manifest(directory, body)
    with pytest.raises(CheckpointError, match="lacks 'positions'"):
        resume()
    body = _manifest(fresh())
    body["positions"] = {"0:source": -3}
    _rewrite_manifest(directory, body)
    with pytest.raises(CheckpointError, match="malformed: source positions"):
        resume()


@pytest.fixture(scope="module")
def damaged_runs(tmp_path_factory):
    """A window job and a fraud job, each with a checkpoint left by a crash, and the output
    of an uninterrupted run."""
    root = tmp_path_factory.mktemp("damage")
    out = {}
    for name, job_of in (("windows", _windows), ("fraud", _fraud)):
        pristine = root / name
        _crashed(job_of, pristine, at=13)
        expected = job_of(Crash(None)).run()
        files = sorted(str(p.relative_to(pristine)) for p in pristine.rglob("*")
                       if p.is_file() and p.name != ".lock")
        out[name] = (job_of, pristine, files, expected)
    return out


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=st.sampled_from(["windows", "fraud"]), which=st.integers(0, 10**6),
       where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused_or_harmless(tmp_path_factory, damaged_runs, job, which,
                                                where, bit):
    """Flip one bit anywhere in any file of a checkpoint: the resume raises CheckpointError
    or gives exactly the uninterrupted run's rows; it never gives other rows."""
    job_of, pristine, files, expected = damaged_runs[job]
    directory = tmp_path_factory.mktemp("flip")
    shutil.rmtree(directory)
    shutil.copytree(pristine, directory)
    target = directory / files[which % len(files)]
    data = bytearray(target.read_bytes())
    data[int(where * len(data))] ^= 1 << bit
    target.write_bytes(bytes(data))
    try:
        resumed = job_of(Crash(None)).run(checkpoint_dir=directory, resume=True)
    except CheckpointError:
        return
    assert _rows(resumed).equals(_rows(expected))
    for side, table in expected.side_outputs.items():
        assert resumed.side_outputs[side].equals(table)


def test_a_valid_digest_over_inconsistent_state_is_refused(tmp_path):
    """A hostile checkpoint with recomputed digests: state whose indices point outside its
    arrays is refused before any kernel reads it."""
    directory = tmp_path / "ckpt"
    _crashed(_sessions, directory, at=13)
    body = _manifest(directory)
    name = next(n for op, n in body["states"].items() if "window" in op)
    archive = dict(np.load(directory / name, allow_pickle=False))
    archive["slots.head"] = np.full_like(archive["slots.head"], 10**9)
    from io import BytesIO

    out = BytesIO()
    np.savez(out, **archive)
    _replace_file(directory, name, out.getvalue())
    with pytest.raises(CheckpointError, match="session slots out of range"):
        _sessions(Crash(None)).run(checkpoint_dir=directory, resume=True)


# --- 4. rocksdict stores ----------------------------------------------------------------------

def test_a_rocksdict_store_is_not_reused_by_a_new_run(tmp_path):
    expected = _rows(_fraud(Crash(None)).run())
    store = str(tmp_path / "store")
    for _ in range(2):
        again = _fraud(Crash(None), state="rocksdict", state_path=store).run()
        assert _rows(again).equals(expected)
        assert again.side_outputs["invalid"].num_rows == 0


@pytest.mark.parametrize(("crash_at", "every"), [
    (3, 10),  # before the first checkpoint: the resume starts on an empty store
    (15, 9),  # 5 batches past the checkpoint went into the store: the resume must not see them
])
def test_a_resume_puts_the_store_back_to_the_checkpoint(tmp_path, crash_at, every):
    expected = _rows(_fraud(Crash(None)).run())
    store, directory = str(tmp_path / "store"), tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fraud(Crash(crash_at), state="rocksdict", state_path=store).run(
            checkpoint_dir=directory, checkpoint_every=every)
    resumed = _fraud(Crash(None), state="rocksdict", state_path=store).run(
        checkpoint_dir=directory, resume=True)
    assert _rows(resumed).equals(expected)


def test_a_local_run_starts_fresh_where_a_dask_run_kept_its_range_stores(tmp_path):
    from sabot_lab.state import RocksDictState, StateSpec

    store = tmp_path / "store"
    for r in range(3):  # what a Dask run leaves: one store per key range
        with RocksDictState(StateSpec({"n": np.int64}), store / f"range-{r:05d}") as state:
            state.release(state.acquire(np.array([1, 2])))
    again = _fraud(Crash(None), state="rocksdict", state_path=str(store)).run()
    assert _rows(again).equals(_rows(_fraud(Crash(None)).run()))
    assert not (store / "range-00000").exists()


def test_a_state_path_holding_other_files_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileExistsError, match="not a sabot_lab state store"):
        _fraud(Crash(None), state="rocksdict", state_path=str(tmp_path / "photos")).run()
    assert (tmp_path / "photos" / "cat.jpg").exists()


# --- 6. dictionaries that change between batches ---------------------------------------------

def test_dictionary_columns_that_change_between_batches_are_checkpointed(tmp_path):
    """Windows grouped by a dictionary column emit a new dictionary with every firing."""
    events = clicks(20_000, seed=8)

    def job(crash: Crash) -> sl.Stream:
        return (sl.Stream.from_table(events, batch_size=500).map_batches(crash, events.schema)
                .with_watermark("event_time", max_out_of_orderness="5s")
                .window(sl.tumbling("1s")).group_by("path").agg(n=sl.count()))

    expected = job(Crash(None)).run().table
    paths = expected["path"].chunks
    assert len(paths) > 1 and not all(c.dictionary.equals(paths[0].dictionary) for c in paths)
    directory = tmp_path / "ckpt"
    _crashed(job, directory, at=33, every=10)
    resumed = job(Crash(None)).run(checkpoint_dir=directory, resume=True).table
    assert resumed.to_pylist() == expected.to_pylist()


# --- 10. one run at a time ------------------------------------------------------------------

_HOLD = """
import sys
from sabot_lab.runtime.checkpoint import Checkpoints
with Checkpoints(sys.argv[1], 5, True, {}):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_resuming_the_same_directory_gets_a_clear_error(tmp_path):
    directory = tmp_path / "ckpt"
    _crashed(_fraud, directory, at=9)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match="in use by another run"):
            _fraud(Crash(None)).run(checkpoint_dir=directory, resume=True)
    finally:
        holder.communicate("")
    resumed = _fraud(Crash(None)).run(checkpoint_dir=directory, resume=True)
    assert _rows(resumed).equals(_rows(_fraud(Crash(None)).run()))


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    directory = tmp_path / "ckpt"
    _crashed(_fraud, directory, at=9)
    with Checkpoints(directory, 5, True, {}):
        pass
    _crashed(_fraud, tmp_path / "other", at=5)  # a failed run released its lock ...
    Checkpoints(tmp_path / "other", 5, True, {}).close()  # ... so this takes it
