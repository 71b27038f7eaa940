"""A scaling model for stateful jobs on Dask, from the costs ``benchmarks/agents.py`` measured.

Weak scaling: every worker brings the same data (``rows_per_worker`` transactions, a tenth
as many accounts), so a perfect cluster of W workers has W times one worker's throughput.
From part 2 of the agents benchmark (one run per cluster size, counts):

* ``c1``: worker CPU per row with one worker (no row crosses workers);
* ``c_remote``: extra worker CPU per byte pushed to an agent on another worker (serializing,
  sending, receiving), from W = 2, where about half the rows cross;
* ``b_row``: bytes pushed to agents per row;
* ``s_task``: scheduler CPU per extra task, between W = 1 and W = 2 (the clusters that fit a
  2-core machine: above it, workers' heartbeats and a starved event loop inflate the
  scheduler's CPU with what a real cluster does not pay), and tasks per worker (partitions
  and agents), from the largest cluster measured.

Assumptions (stated, not measured): every worker has a core of its own (no
oversubscription); ``bandwidth`` bytes/s of network per worker (default 1.25e9, 10 GbE), not
overlapped with CPU (pessimistic); rows are spread evenly over key ranges, so a fraction
(W - 1) / W of them crosses workers; the scheduler is one core, serial; fixed per-job costs
(starting agents, planning) are left out, as they do not grow with W.

Projected job time at W workers: ``max(worker, scheduler)`` with
``worker = rows_per_worker * (c1 + (W - 1) / W * b_row * (c_remote + 1 / bandwidth))`` and
``scheduler = tasks(W) * s_task``; efficiency is throughput over W x the one-worker
throughput. Target: >= 0.8 at 64 workers.

Run it from the repository root on a record of the agents benchmark::

    .venv/bin/python benchmarks/scaling_model.py benchmarks/results/agents.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROJECT = (1, 4, 16, 64)
TARGET = 0.8
BANDWIDTH = 1.25e9


def fit(overheads: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The model's costs from the measured rows (one per cluster size, W = 1 and 2 needed).

    >>> rows = [{"workers": 1, "rows": 100, "worker_cpu_s": 1.0, "bytes_pushed": 1000,
    ...          "bytes_to_other_workers": 0, "tasks": 2, "scheduler_cpu_s": 0.01},
    ...         {"workers": 2, "rows": 200, "worker_cpu_s": 3.0, "bytes_pushed": 2000,
    ...          "bytes_to_other_workers": 1000, "tasks": 4, "scheduler_cpu_s": 0.02}]
    >>> fit(rows)["c_remote"], fit(rows)["s_task"], fit(rows)["tasks_per_worker"]
    (0.001, 0.005, 2.0)
    """
    by_w = {row["workers"]: row for row in overheads}
    one, two, big = by_w[1], by_w[2], by_w[max(by_w)]
    c1 = one["worker_cpu_s"] / one["rows"]
    extra = two["worker_cpu_s"] - two["rows"] * c1
    more_tasks = max(two["tasks"] - one["tasks"], 1)
    return {"c1": c1,
            "c_remote": max(extra, 0.0) / max(two["bytes_to_other_workers"], 1),
            "b_row": two["bytes_pushed"] / two["rows"],
            "s_task": max(two["scheduler_cpu_s"] - one["scheduler_cpu_s"], 0.0) / more_tasks,
            "tasks_per_worker": big["tasks"] / big["workers"]}


def project(costs: Mapping[str, float], rows_per_worker: int, workers: Sequence[int] = PROJECT,
            bandwidth: float = BANDWIDTH) -> list[dict[str, float]]:
    """Job time, throughput and efficiency at each cluster size.

    >>> costs = {"c1": 1e-6, "c_remote": 0.0, "b_row": 0.0, "s_task": 1e-3,
    ...          "tasks_per_worker": 2.0}
    >>> [round(p["efficiency"], 2) for p in project(costs, 1_000_000, (1, 64))]
    [1.0, 1.0]
    """
    out = []
    single = rows_per_worker * costs["c1"]
    for w in workers:
        crossing = (w - 1) / w * costs["b_row"] * (costs["c_remote"] + 1 / bandwidth)
        worker = rows_per_worker * (costs["c1"] + crossing)
        scheduler = costs["tasks_per_worker"] * w * costs["s_task"]
        seconds = max(worker, scheduler)
        out.append({"workers": w, "tasks": costs["tasks_per_worker"] * w,
                    "worker_s": worker, "scheduler_s": scheduler,
                    "rows_per_s": w * rows_per_worker / seconds,
                    "efficiency": single / seconds})
    return out


def table(record: Mapping[str, Any], rows_per_worker: int, bandwidth: float = BANDWIDTH
          ) -> tuple[list[str], list[list[str]], dict[str, float]]:
    """Headers, rows and costs of the projection from an agents benchmark record."""
    overheads = [r["overheads"] for r in record["results"] if "overheads" in r]
    costs = fit(overheads)
    rows = []
    for p in project(costs, rows_per_worker, bandwidth=bandwidth):
        verdict = "-"
        if p["workers"] == max(PROJECT):
            verdict = f">= {TARGET}: {'met' if p['efficiency'] >= TARGET else 'not met'}"
        rows.append([f"{p['workers']}", f"{p['tasks']:.0f}", f"{p['worker_s']:.3f}",
                     f"{p['scheduler_s']:.3f}", f"{p['rows_per_s'] / 1e6:,.1f}M",
                     f"{p['efficiency']:.2f}", verdict])
    headers = ["W", "tasks", "worker s", "scheduler s", "rows/s", "efficiency", "target"]
    return headers, rows, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path, help="the agents benchmark's --json record")
    parser.add_argument("--rows-per-worker", type=int, default=1_000_000)
    parser.add_argument("--bandwidth", type=float, default=BANDWIDTH,
                        help="network bytes/s per worker")
    args = parser.parse_args()
    record = json.loads(args.record.read_text())
    headers, rows, costs = table(record, args.rows_per_worker, args.bandwidth)
    print("costs:", {k: f"{v:.3g}" for k, v in costs.items()})
    print(" | ".join(headers))
    for row in rows:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
