"""Run a job on Dask and SIGKILL a worker in the middle of it (a real process, not a mock)."""

from __future__ import annotations

import os
import signal
import threading
import time

import sabot_lab as sl


def run_killing_a_worker(job: sl.Stream, runner: object, key_part: str, victim: int = 0,
                         after: int = 2) -> sl.Result:
    """``job.run(runner)``, killing worker ``victim`` (by address order) once ``after`` tasks
    whose key contains ``key_part`` are done; returns the result (asserts the job ends)."""
    client = runner.client
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", job.run(runner)))
    thread.start()

    def done() -> int:
        return client.run_on_scheduler(lambda dask_scheduler: sum(
            ts.state == "memory" for key, ts in dask_scheduler.tasks.items()
            if key_part in str(key)))

    deadline = time.monotonic() + 60
    while done() < after and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the scheduler, not standing in for work
    pids = client.run(os.getpid)
    os.kill(pids[sorted(pids)[victim]], signal.SIGKILL)
    thread.join(timeout=180)
    assert "result" in outcome, "the job did not finish after a worker was killed"
    client.wait_for_workers(2, timeout=60)
    return outcome["result"]
