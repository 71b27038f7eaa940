"""Jobs on Dask with the cluster failing under them: run a job in a thread, wait until it is
under way (polling the scheduler), SIGKILL a worker that is running tasks of the job (a real
process, not a mock), and check with a scheduler plugin that its tasks ran again.

Every wait fails the test instead of returning quietly: a kill that comes after the job has
ended, or that hits an idle worker, proves nothing about recovery.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

from distributed.diagnostics.plugin import SchedulerPlugin

import sabot_lab as sl

#: Seconds a helper waits for the job to reach a state before it fails the test (a guard
#: against a hang on a very busy machine, not a measure of speed).
PATIENCE = 120


def run_in_thread(job: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Start ``job()`` in a thread; the dict receives its ``result`` or its ``error``.

    The thread is a daemon: a job that hangs fails its test (see :func:`join`), and must
    not keep the test process from exiting."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = job()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def join(thread: threading.Thread, what: str = "the job") -> None:
    """Wait for ``thread``; fail the test if it is still running after :data:`PATIENCE`."""
    thread.join(timeout=PATIENCE)
    assert not thread.is_alive(), f"{what} did not end within {PATIENCE} s: it hangs"


def done_tasks(client: object, key_part: str = "") -> int:
    """Tasks whose key contains ``key_part`` that hold results on the cluster now, or with
    :class:`CountStarts` registered, that have finished since (a stateful job lets go of a
    partition's small result as soon as it has it)."""
    def count(dask_scheduler: object) -> int:
        plugin = dask_scheduler.plugins.get(CountStarts.name)
        if plugin is not None:
            return sum(n for key, n in plugin.finished.items() if key_part in key)
        return sum(ts.state == "memory" for key, ts in dask_scheduler.tasks.items()
                   if key_part in str(key))

    return client.run_on_scheduler(count)


def wait_for_done_tasks(client: object, n: int, key_part: str = "",
                        running: Callable[[], bool] | None = None) -> None:
    """Until ``n`` tasks whose key contains ``key_part`` hold results on the cluster (the job
    is under way). Fails the test if the job ends first (``running()`` turns false) or if
    that does not happen within :data:`PATIENCE` seconds."""
    deadline = time.monotonic() + PATIENCE
    while (done := done_tasks(client, key_part)) < n:
        assert running is None or running(), (
            f"the job ended with {done} of the {n} '{key_part}' tasks waited for done: it was "
            f"not running when the cluster was to fail under it")
        assert time.monotonic() < deadline, (
            f"only {done} of {n} '{key_part}' tasks done after {PATIENCE} s")
        time.sleep(0.02)  # polling the scheduler, not standing in for work


def _kill_a_busy_worker(dask_scheduler: object, pids: dict[str, int]
                        ) -> tuple[str, list[str]]:
    """On the scheduler, between two of its events: SIGKILL a worker that is running
    tasks, and return its address and their keys (none: every worker idle, nothing
    killed)."""
    for address in sorted(dask_scheduler.workers):
        keys = [str(ts.key) for ts in dask_scheduler.workers[address].processing]
        if keys and address in pids:
            os.kill(pids[address], signal.SIGKILL)
            return address, keys
    return "", []


def kill_a_busy_worker(client: object, running: Callable[[], bool]) -> list[str]:
    """SIGKILL a worker while it runs tasks of the job (``running()`` must stay true until
    then); return the keys of the tasks it was running, once the scheduler has noticed."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + PATIENCE
    while True:
        assert running(), "the job ended before a worker could be killed under it"
        address, keys = client.run_on_scheduler(_kill_a_busy_worker, pids=pids)
        if keys:
            while address in client.nthreads():
                assert time.monotonic() < deadline, f"{address} still there after a kill"
                time.sleep(0.01)  # waiting for the scheduler to notice
            return keys
        assert time.monotonic() < deadline, f"no worker ran a task for {PATIENCE} s"
        time.sleep(0.01)  # between two tasks: try again


class CountStarts(SchedulerPlugin):
    """On the scheduler: how often each task was handed to a worker, and how often it
    finished (the scheduler's own transition log keeps only the last thousand
    transitions)."""

    name = "sabot-test-count-starts"

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()

    def transition(self, key: object, start: str, finish: str, *args: object,
                   **kwargs: object) -> None:
        if finish == "processing":
            self.started[str(key)] += 1
        elif start == "processing" and finish == "memory":
            self.finished[str(key)] += 1


def replayed_as(key: str) -> str:
    """What a task's key and its replays' keys share: a stateful job replays a partition
    after a failure as new tasks, ``sabot-<stage>-<partition>-<job>-<restarts>``, and starts
    a lost agent again as ``sabot-agent-<key range>-<job>-<start>``."""
    return key.rsplit("-", 1)[0] + "-" if key.startswith("sabot-") else key


def times_started(client: object, keys: list[str]) -> dict[str, int]:
    """How often each task (or a replay of it) was handed to a worker since
    :class:`CountStarts` was added."""
    def count(dask_scheduler: object, prefixes: dict[str, str]) -> dict[str, int]:
        started = dask_scheduler.plugins[CountStarts.name].started
        return {key: sum(n for k, n in started.items() if k.startswith(prefix))
                for key, prefix in prefixes.items()}

    return client.run_on_scheduler(count, prefixes={key: replayed_as(key) for key in keys})


def run_killing_a_worker(job: sl.Stream, runner: object, key_part: str,
                         after: int = 2, kills: int = 1) -> sl.Result:
    """``job.run(runner)``, killing a worker that is running tasks of the job once ``after``
    tasks whose key contains ``key_part`` are done (``kills`` times, each once the cluster
    has replaced the last one killed); returns the result.

    Asserts that the job was running at each kill, that the tasks the worker was running
    were started again elsewhere, and that the job then ended with a result."""
    client = runner.client
    workers = len(client.nthreads())
    client.register_plugin(CountStarts())
    try:
        thread, outcome = run_in_thread(lambda: job.run(runner))
        wait_for_done_tasks(client, after, key_part, running=thread.is_alive)
        killed = []
        for kill in range(kills):
            if kill:  # the cluster has replaced the worker killed before
                client.wait_for_workers(workers, timeout=PATIENCE)
            killed += kill_a_busy_worker(client, running=thread.is_alive)
        join(thread, "the job, after a worker was killed,")
        assert "result" in outcome, f"the job failed after a worker was killed: {outcome}"
        started = times_started(client, killed)
    finally:
        client.unregister_scheduler_plugin(CountStarts.name)
    # Every task the worker was running is still wanted by the job: it must start again.
    assert min(started.values()) >= 2, (
        f"tasks of the killed worker did not run again ({started}): nothing was recovered")
    client.wait_for_workers(workers, timeout=PATIENCE)
    return outcome["result"]
