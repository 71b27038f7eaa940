"""Synthetic heartbeats: devices that report every few seconds, and sometimes go silent.

For rules on the absence of events (:mod:`sabot_lab.patterns.silence`): each device's
heartbeats come in its own time order, while devices interleave out of order by up to
``bound`` (as several senders do on one queue), so a watermark with that bound is exact.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["heartbeats"]


def heartbeats(n: int, devices: int = 1_000, *, bound: int = 20, silence: float = 0.01,
               seed: int = 1) -> pa.Table:
    """``n`` heartbeats of ``devices`` devices, in arrival order.

    A device's next heartbeat comes 1 to 29 seconds after its previous one, or, with
    probability ``silence``, 5 to 30 minutes after it. Columns: ``device`` (int64), ``t``
    (int64 seconds) and ``seq`` (the arrival position).

    >>> beats = heartbeats(1_000, devices=10)
    >>> beats.column_names, beats.num_rows
    (['device', 't', 'seq'], 1000)
    >>> frame = beats.to_pandas()
    >>> bool((frame.groupby("device")["t"].diff().dropna() > 0).all())  # each device in order
    True
    """
    rng = np.random.default_rng([seed, 29])
    device = rng.integers(0, devices, n)
    step = np.where(rng.random(n) < silence, rng.integers(300, 1_800, n),
                    rng.integers(1, 30, n))
    by_device = np.argsort(device, kind="stable")
    steps = step[by_device]
    total = np.cumsum(steps)
    starts = np.flatnonzero(np.r_[True, device[by_device][1:] != device[by_device][:-1]])
    offset = np.repeat(total[starts] - steps[starts], np.diff(np.r_[starts, n]))
    t = np.empty(n, dtype=np.int64)
    t[by_device] = total - offset  # each device's own walk
    arrival = np.argsort(t + rng.integers(0, bound, n), kind="stable")
    device, t = device[arrival], t[arrival]
    # A device's rows keep its time order: its times, sorted, in its arrival positions.
    in_arrival = np.lexsort((np.arange(n), device))
    in_time = np.lexsort((t, device))
    t[in_arrival] = t[in_time]
    return pa.table({"device": device, "t": t, "seq": np.arange(n)})
