"""Jobs on Dask with the cluster failing under them: run a job in a thread, wait until it is
under way (polling the scheduler), SIGKILL a worker (a real process, not a mock)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import sabot_lab as sl


def run_in_thread(job: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Start ``job()`` in a thread; the dict receives its ``result`` or its ``error``."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = job()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_for_done_tasks(client: object, n: int, key_part: str = "") -> None:
    """Until ``n`` tasks whose key contains ``key_part`` hold results on the cluster (the job
    is under way), at most a minute."""
    def done() -> int:
        return client.run_on_scheduler(lambda dask_scheduler: sum(
            ts.state == "memory" for key, ts in dask_scheduler.tasks.items()
            if key_part in str(key)))

    deadline = time.monotonic() + 60
    while done() < n and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the scheduler, not standing in for work


def run_killing_a_worker(job: sl.Stream, runner: object, key_part: str, victim: int = 0,
                         after: int = 2) -> sl.Result:
    """``job.run(runner)``, killing worker ``victim`` (by address order) once ``after`` tasks
    whose key contains ``key_part`` are done; returns the result (asserts the job ends)."""
    client = runner.client
    thread, outcome = run_in_thread(lambda: job.run(runner))
    wait_for_done_tasks(client, after, key_part)
    pids = client.run(os.getpid)
    os.kill(pids[sorted(pids)[victim]], signal.SIGKILL)
    thread.join(timeout=180)
    assert "result" in outcome, f"the job did not finish after a worker was killed: {outcome}"
    client.wait_for_workers(2, timeout=60)
    return outcome["result"]
