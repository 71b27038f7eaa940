"""How generated data sets are cut into batches (shared by the generators).

>>> list(batch_bounds(250, 100))
[(0, 0, 100), (1, 100, 100), (2, 200, 50)]
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["batch_bounds"]


def batch_bounds(n: int, batch_size: int) -> Iterator[tuple[int, int, int]]:
    """``(batch index, first row, rows)`` of each batch of ``n`` rows (the last may be short)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for index, first in enumerate(range(0, n, batch_size)):
        yield index, first, min(batch_size, n - first)
