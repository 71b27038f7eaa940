"""Event-time timers (an alert from the absence of events) against a plain-Python, event by
event simulation: the teaching path and the numba path, across batch sizes, disorder within
the watermark's bound, a crash and resume, and a Dask cluster."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab import datasets
from sabot_lab.patterns import silence
from sabot_lab.patterns.silence import Silence
from tests.runtime.test_checkpoint import Crash

GAP = 60
BOUND = 20


def heartbeats(n: int = 6_000, devices: int = 40, seed: int = 1) -> pa.Table:
    """Heartbeats with random gaps (some longer than GAP); across devices out of order by up
    to BOUND, each device's own in order; and some rows sent twice."""
    beats = datasets.heartbeats(n, devices, bound=BOUND, silence=0.05, seed=seed)
    device, t = beats["device"].to_numpy(), beats["t"].to_numpy()
    rng = np.random.default_rng(seed)
    # Some rows sent twice (the copy right after, or a few rows later: then late, as an
    # older time than its device's latest may be): neither may raise an alert again.
    again = np.sort(rng.choice(n, n // 50, replace=False))
    where = np.minimum(again + rng.integers(1, 4, len(again)), n)
    device, t = np.insert(device, where, device[again]), np.insert(t, where, t[again])
    return pa.table({"device": device, "t": t, "seq": np.arange(len(t))})


def simulate(table: pa.Table, gap: int = GAP, bound: int = BOUND) -> Counter:
    """Row by row in arrival order: the watermark before a row is the largest earlier time
    minus ``bound``; every timer at or before it fires first (any device), then the row."""
    timers: dict[int, int] = {}
    last: dict[int, int] = {}
    alerts: Counter = Counter()
    high = None
    for device, t in zip(table["device"].to_pylist(), table["t"].to_pylist(), strict=True):
        mark = None if high is None else high - bound
        for d, due in sorted(timers.items(), key=lambda kv: kv[1]):
            if mark is not None and due <= mark:
                alerts[(d, last[d], due)] += 1
                del timers[d]
        if device in timers and timers[device] <= t:
            alerts[(device, last[device], timers.pop(device))] += 1
        if device not in last or t > last[device]:  # a repeated or older time changes nothing
            last[device] = t
            timers[device] = t + gap
        high = t if high is None else max(high, t)
    for d, due in timers.items():  # the end of the input: every timer fires
        alerts[(d, last[d], due)] += 1
    return alerts


def python_silence() -> sl.PythonProcessFunction:
    """The same rule written row by row, for teaching."""
    return silence.python_silence("device", "t", GAP)


def _job(table: pa.Table, function: sl.ProcessFunction, batch_size: int,
         crash: Crash | None = None) -> sl.Stream:
    stream = sl.Stream.from_table(table, batch_size=batch_size)
    if crash is not None:
        stream = stream.map_batches(crash, table.schema)
    return (stream.with_watermark("t", unit="s", max_out_of_orderness=f"{BOUND}s")
            .key_by("device").process(function))


def _alerts(result: sl.Result) -> Counter:
    t = result.table
    return Counter(zip(t["device"].to_pylist(), t["silent_since"].to_pylist(),
                       t["alert_at"].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def beats() -> tuple[pa.Table, Counter]:
    table = heartbeats()
    expected = simulate(table)
    assert sum(expected.values()) > 100  # silences happen, mid-stream and at the end
    return table, expected


@pytest.mark.parametrize("batch_size", [1, 37, 1_000, 7_000])
@pytest.mark.parametrize("make", [lambda: Silence("device", "t", GAP), python_silence])
def test_timers_match_an_event_by_event_simulation(beats, make, batch_size):
    table, expected = beats
    if batch_size == 1 and make is python_silence:
        table = table.slice(0, 1_500)
        expected = simulate(table)
    assert _alerts(_job(table, make(), batch_size).run()) == expected


@pytest.mark.parametrize("seed", [2, 3])
def test_other_disorder_and_timestamps(seed):
    table = heartbeats(3_000, devices=15, seed=seed)
    expected = simulate(table)
    stamped = table.set_column(1, "t", table["t"].cast(pa.timestamp("s")))
    result = (sl.Stream.from_table(stamped, batch_size=250)
              .with_watermark("t", max_out_of_orderness=f"{BOUND}s")
              .key_by("device").process(Silence("device", "t", GAP))).run()
    got = Counter((d, s.timestamp(), a.timestamp()) for d, s, a in zip(
        result.table["device"].to_pylist(), result.table["silent_since"].to_pylist(),
        result.table["alert_at"].to_pylist(), strict=True))
    assert got == Counter({(d, float(s), float(a)): n for (d, s, a), n in expected.items()})


@pytest.mark.parametrize("crash_at", [3, 11])
def test_timers_survive_a_crash_and_resume(tmp_path, beats, crash_at):
    table, expected = beats
    crash = Crash(crash_at)
    job = _job(table, Silence("device", "t", GAP), 400, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        job.run(checkpoint_dir=tmp_path, checkpoint_every=2)
    crash.at = None
    resumed = job.run(checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    assert _alerts(resumed) == expected


def test_timers_need_a_watermark():
    with pytest.raises(sl.PlanError, match=r"add \.with_watermark"):
        sl.Stream.from_table(heartbeats(10)).key_by("device").process(Silence("device", "t", 5))


def test_timers_with_a_ttl_are_refused():
    fn = sl.PythonProcessFunction(lambda key, row, state: [], {"last": "int64"}, ["t"],
                                  pa.schema([("device", pa.int64())]), ttl=100, time_col="t",
                                  on_timer=lambda key, time, state: [])
    with pytest.raises(sl.PlanError, match="lose its timer"):
        _job(heartbeats(10), fn, 5)


def test_a_periodic_timer_fires_once_more_at_the_end_of_the_input():
    def tick(key, row, state):
        if state["_timer"] == sl.NO_TIMER:
            state["_timer"] = row["t"] + 10
        return []

    def every_ten(key, time, state):
        state["_timer"] = time + 10  # a periodic timer: due again at once at the end
        return [{"device": key, "at": time}]

    fn = sl.PythonProcessFunction(tick, {"n": "int64"}, ["t"],
                                  pa.schema([("device", pa.int64()), ("at", pa.int64())]),
                                  on_timer=every_ten)
    beats = pa.table({"device": [1, 1, 2], "t": [0, 35, 36]})
    got = (sl.Stream.from_table(beats, batch_size=1).with_watermark("t", unit="s")
           .key_by("device").process(fn)).to_table().to_pylist()
    # 10, 20, 30 fire as the watermark passes them; at the end 40 (device 1), 46 (device 2)
    assert sorted((r["device"], r["at"]) for r in got) == [(1, 10), (1, 20), (1, 30), (1, 40),
                                                           (2, 46)]


def test_timers_fire_on_a_batch_whose_rows_all_went_aside():
    beats = pa.table({"device": pa.array([1, None, None], pa.int64()), "t": [0, 20, 30]})
    result = (sl.Stream.from_table(beats, batch_size=1).with_watermark("t", unit="s")
              .key_by("device").process(Silence("device", "t", 5))).run()
    assert result.table.to_pylist() == [{"device": 1, "silent_since": 0, "alert_at": 5}]
    assert result.side_outputs["null_key"].num_rows == 2


def test_a_timer_set_again_at_the_time_that_fired_is_refused():
    def seen(key, row, state):
        state["_timer"] = row["t"]
        return []

    def again(key, time, state):
        state["_timer"] = time
        return []

    fn = sl.PythonProcessFunction(seen, {"n": "int64"}, ["t"],
                                  pa.schema([("device", pa.int64())]), on_timer=again)
    job = (sl.Stream.from_table(pa.table({"device": [1, 1], "t": [5, 9]}))
           .with_watermark("t", unit="s").key_by("device").process(fn))
    with pytest.raises(ValueError, match="not later than the time that fired"):
        job.run()


def test_timers_on_dask_fire_in_the_key_range_that_owns_them(beats):
    pytest.importorskip("distributed")
    table, expected = beats
    with sl.DaskRunner(n_workers=2, threads_per_worker=1, partitions_per_worker=3) as runner:
        for make in (lambda: Silence("device", "t", GAP), python_silence):
            result = _job(table, make(), 500).run(runner)
            assert _alerts(result) == expected
