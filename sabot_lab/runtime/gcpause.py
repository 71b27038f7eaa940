"""No full garbage collections while jobs run.

A full (oldest-generation) collection of CPython's cyclic garbage collector scans every
object of the process: with pandas, Dask and sabot_lab loaded that is tens of milliseconds,
and it starts whenever allocation counts say so, so a stream sees it as one batch that
suddenly takes that much longer. While any job runs, :func:`paused` raises
the threshold of the oldest generation out of reach; young generations are still collected
(most garbage of a batch is freed by reference counting anyway), and the threshold comes
back when the last running job ends, so garbage that reached the oldest generation meanwhile
is collected afterwards as usual. (``gc.freeze`` would keep such pauses away too, but it also
keeps the garbage that exists when a job starts until the next full collection, which rarely
comes after many short runs: Dask workers running thousands of tasks held on to dead Arrow
buffers.)

Examples
--------
>>> import gc
>>> before = gc.get_threshold()
>>> with paused():
...     gc.get_threshold()[2] > before[2]
True
>>> gc.get_threshold() == before
True
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused"]

_lock = threading.Lock()
_running = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def paused() -> Iterator[None]:
    """No full collections until the last of the nested or concurrent ``paused()`` ends."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_saved[0], _saved[1], 2**30)
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _saved is not None:
                gc.set_threshold(*_saved)
