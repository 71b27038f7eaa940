"""What checkpoints cost: the fraud job with and without them, and the input's fingerprint.

A checkpointed run writes, every ``--every`` source batches, the keyed state (Arrow IPC), the
alerts since the last checkpoint, SHA-256 digests of both and a manifest, fsynced; once per
run it hashes the input table for the job's fingerprint. Runs are interleaved round by round
(each setting once per round), ``--rounds`` rounds after a warm-up. Run from the repository
root::

    .venv/bin/python benchmarks/checkpoints.py
    .venv/bin/python benchmarks/checkpoints.py --transactions 200000 --rounds 5 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import pyarrow as pa
from common import CpuMonitor, cores, cpu_model, format_table, git_revision, load_average

import sabot_lab as sl
from sabot_lab.datasets import transactions
from sabot_lab.patterns.fraud import detect_fraud
from sabot_lab.plan.fingerprint import table_digest

HEADERS = ("setting", "min s", "median s", "max s", "vs no checkpoints (median)")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=10, help="source batches per checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("at least 5 rounds: a median of fewer says little on a shared machine")

    txns = transactions(args.transactions, n_accounts=args.accounts, seed=1)
    job = detect_fraud(sl.Stream.from_table(txns, batch_size=args.batch_size))

    def checkpointed() -> None:
        with tempfile.TemporaryDirectory() as directory:
            job.run(checkpoint_dir=directory, checkpoint_every=args.every)

    settings = {"no checkpoints": job.run,
                f"checkpoint every {args.every} batches": checkpointed,
                "input fingerprint alone (SHA-256)": lambda: table_digest(txns)}
    for fn in settings.values():  # warm-up: kernels compiled, caches filled
        fn()
    monitor = CpuMonitor()
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, fn in settings.items():
            seconds[name].append(_timed(fn))
    base = statistics.median(seconds["no checkpoints"])
    rows = [(name, f"{min(s):.3f}", f"{statistics.median(s):.3f}", f"{max(s):.3f}",
             f"{statistics.median(s) / base:.2f}x") for name, s in seconds.items()]
    checkpoints = -(-args.transactions // args.batch_size) // args.every
    print(f"fraud: {args.transactions:,} transactions, {args.accounts:,} accounts, "
          f"{args.batch_size:,}-row batches, {checkpoints} checkpoints per checkpointed run; "
          f"input {txns.nbytes / 2**20:.0f} MB; {args.rounds} interleaved rounds")
    print(format_table(HEADERS, rows, args.markdown))
    print(f"machine: {cores()} cores ({cpu_model()}), pyarrow {pa.__version__}, "
          f"sabot_lab {sl.__version__} (git {git_revision()}); {monitor.report()}; "
          f"{load_average()}")


if __name__ == "__main__":
    main()
