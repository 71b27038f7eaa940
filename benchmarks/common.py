"""What every benchmark script prints about the machine and the run (imported by the scripts).

Benchmarks here run on a shared 2-core machine: a busy neighbour skews every number, most of
all for the parallel engines, so each script reports the background CPU while it timed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CpuMonitor", "cores", "cpu_model", "git_revision", "load_average"]


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The processor's name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """The sabot_lab commit benchmarked, with ``+dirty`` when sabot_lab has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no", "--", "sabot_lab"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def load_average() -> str:
    """The 1- and 5-minute load averages, and the core count they compare to."""
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {cores()} cores"


class CpuMonitor:
    """CPU used by other processes (and stolen by the hypervisor) between creation and
    :meth:`report`."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        own = os.times()
        return ((user + nice + system + irq + softirq) / tick, steal / tick,
                own.user + own.system, time.perf_counter())

    def report(self) -> str:
        """One line: cores busy outside this process, and cores stolen, while timing."""
        end = self._sample()
        if self.start is None or end is None:
            return "background CPU: unknown (no /proc/stat)"
        busy, steal, own, wall = (b - a for a, b in zip(self.start, end, strict=True))
        other = max(busy - own, 0.0) / wall
        return (f"background CPU while timing: {other:.2f} cores busy outside this process, "
                f"{steal / wall:.2f} cores stolen by the hypervisor")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool,
                 left: Sequence[int] = (0,)) -> str:
    """A plain-text table (numbers right-aligned), or Markdown."""
    if markdown:
        align = ["---" if i in left else "---:" for i in range(len(headers))]
        lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])
