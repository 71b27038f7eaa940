"""What every benchmark script prints about the machine and the run (imported by the scripts).

Benchmarks here run on a shared 2-core machine: a busy neighbour skews every number, most of
all for the parallel engines, so each script reports the background CPU while it timed.
With ``--json PATH`` a script also writes a :class:`Record` of its run, from which
``benchmarks/report.py`` generates the README's performance tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["CpuMonitor", "Record", "TreeCpuMonitor", "add_json_option", "cores", "cpu_model",
           "describe_background", "format_table", "git_revision", "load_average",
           "package_versions", "spread", "target_cell", "versus"]

#: Packages every record names the versions of (with Python), when installed.
BASE_PACKAGES = ("sabot_lab", "pyarrow", "numpy", "numba")


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

    def cores_elsewhere(self) -> dict[str, float] | None:
        """Cores busy outside this process and cores stolen by the hypervisor, on average
        since creation (``None`` without ``/proc/stat``)."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, steal, own, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return {"cores_busy_elsewhere": max(busy - own, 0.0) / wall,
                "cores_stolen": steal / wall}

    def report(self) -> str:
        """One line: cores busy outside this process, and cores stolen, while timing."""
        return describe_background(self.cores_elsewhere())


class TreeCpuMonitor(CpuMonitor):
    """:class:`CpuMonitor`, counting the CPU of finished child processes (measured runs,
    Dask workers, and their own children) as this process's rather than as background."""

    def __init__(self) -> None:
        self.orphans = 0.0
        super().__init__()

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        sample = CpuMonitor._sample()
        if sample is None:
            return None
        t = os.times()
        busy, steal, own, wall = sample
        return busy, steal, own + t.children_user + t.children_system, wall

    def cores_elsewhere(self) -> dict[str, float] | None:
        if self.orphans:
            assert self.start is not None
            busy, steal, own, wall = self.start
            self.start = (busy, steal, own - self.orphans, wall)
            self.orphans = 0.0
        return super().cores_elsewhere()

    @contextlib.contextmanager
    def killing_descendants(self) -> Iterator[None]:
        """Around code that kills this process's descendants (a cluster closing): their CPU,
        which no parent reaps into :func:`os.times` once their parent is killed first, still
        counts as this process's."""
        import psutil

        def descendants_cpu() -> float:
            total = 0.0
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    t = child.cpu_times()
                    total += t.user + t.system
            return total

        before, reaped = descendants_cpu(), os.times()
        yield
        after = os.times()
        reaped_cpu = (after.children_user + after.children_system
                      - reaped.children_user - reaped.children_system)
        self.orphans += max(before - reaped_cpu, 0.0)


def describe_background(background: Mapping[str, float] | None) -> str:
    """The line :meth:`CpuMonitor.report` prints, from :meth:`CpuMonitor.cores_elsewhere`."""
    if background is None:
        return "background CPU: unknown (no /proc/stat)"
    return (f"background CPU while timing: {background['cores_busy_elsewhere']:.2f} cores busy "
            f"outside this process, {background['cores_stolen']:.2f} cores stolen by the "
            f"hypervisor")


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


# --- ratios and targets ------------------------------------------------------------------


def spread(seconds: Sequence[float]) -> dict[str, float]:
    """Min, median and max of timed runs, and how many there were.

    >>> spread([0.3, 0.1, 0.2])
    {'min': 0.1, 'median': 0.2, 'max': 0.3, 'runs': 3}
    """
    return {"min": min(seconds), "median": statistics.median(seconds), "max": max(seconds),
            "runs": len(seconds)}


def versus(ours: Sequence[float], theirs: Sequence[float], target: float | None = None
           ) -> dict[str, Any]:
    """How many times faster ``ours`` ran than ``theirs`` (both in seconds per run).

    Parameters
    ----------
    ours, theirs
        Wall-clock seconds of the timed runs of the two engines.
    target
        The ratio to reach, if there is one.

    Returns
    -------
    dict
        ``median`` (on medians), ``worst`` (our slowest run against their fastest), ``best``
        (the reverse), ``target``, and ``met``: ``None`` without a target, else whether the
        whole range clears it, i.e. ``worst >= target``.

    Examples
    --------
    >>> r = versus([1.0, 2.0], [3.0, 4.0], target=1.5)
    >>> r["worst"], r["best"], r["met"]
    (1.5, 4.0, True)
    """
    worst = min(theirs) / max(ours)
    return {"median": statistics.median(theirs) / statistics.median(ours), "worst": worst,
            "best": max(theirs) / min(ours), "target": target,
            "met": None if target is None else worst >= target}


def target_cell(ratio: Mapping[str, Any]) -> str:
    """A table cell for a :func:`versus` result: ``>= 1.5x: met``, or ``-`` without target.

    >>> target_cell(versus([1.0], [1.2], target=1.5))
    '>= 1.5x: not met'
    """
    if ratio["target"] is None:
        return "-"
    return f">= {ratio['target']:g}x: {'met' if ratio['met'] else 'not met'}"


# --- the machine-readable record -----------------------------------------------------------


def package_versions(packages: Iterable[str] = ()) -> dict[str, str]:
    """Python's version and those of :data:`BASE_PACKAGES` and ``packages`` that are
    installed (a missing optional engine is left out)."""
    found = {"python": platform.python_version()}
    for name in dict.fromkeys([*BASE_PACKAGES, *packages]):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def command_line() -> str:
    """This process's command line, the interpreter relative to the working directory when
    it lies below it (``.venv/bin/python benchmarks/windows.py --json ...``)."""
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json PATH`` option every benchmark script takes."""
    parser.add_argument("--json", type=Path, metavar="PATH", default=None,
                        help="also write a machine-readable record of the run to PATH "
                             "(read by benchmarks/report.py)")


class Record:
    """The machine-readable record of one benchmark run, written by ``--json PATH``.

    Created when the run starts, it notes the command line, the date (UTC), the git revision,
    package versions, the machine and the load average; it starts a :class:`CpuMonitor`.
    The script adds its tables (as printed) and result rows, then :meth:`write` adds the
    cores busy elsewhere since the start.

    Parameters
    ----------
    benchmark
        The name ``report.py`` knows the benchmark by (its README marker).
    packages
        Packages whose versions matter besides :data:`BASE_PACKAGES`.
    monitor
        What measures the background CPU (default: a new :class:`CpuMonitor`).
    """

    def __init__(self, benchmark: str, packages: Iterable[str] = (),
                 monitor: CpuMonitor | None = None) -> None:
        one, five, fifteen = os.getloadavg()
        self.data: dict[str, Any] = {
            "benchmark": benchmark,
            "command": command_line(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": git_revision(),
            "versions": package_versions(packages),
            "machine": {"cores": cores(), "cpu": cpu_model()},
            "load_before": {"1 min": one, "5 min": five, "15 min": fifteen},
            "background": None,
            "tables": [],
            "results": [],
            "notes": [],
        }
        self.monitor = monitor if monitor is not None else CpuMonitor()

    def add_table(self, name: str, title: str, headers: Sequence[str],
                  rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> None:
        """A table as printed: ``name`` identifies it (``report.markdown(..., name)``),
        ``title`` says what it shows, ``left`` lists the left-aligned columns."""
        self.data["tables"].append({"name": name, "title": title, "headers": list(headers),
                                    "rows": [list(r) for r in rows], "left": list(left)})

    def add_results(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Machine-readable result rows (seconds, ratios, targets)."""
        self.data["results"] += [dict(r) for r in rows]

    def note(self, text: str) -> None:
        """A remark worth keeping with the figures (an engine skipped, a size left out)."""
        self.data["notes"].append(text)

    def write(self, path: Path, background: Mapping[str, float] | None = None) -> None:
        """Write the record as JSON to ``path`` (replacing it whole).

        ``background`` (cores busy elsewhere, cores stolen) defaults to the monitor's
        measurement since the record was created.
        """
        data = dict(self.data)
        data["background"] = (dict(background) if background is not None
                              else self.monitor.cores_elsewhere())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        partial.replace(path)
