"""Parquet partitions read their row groups in file order (pyarrow reorders a fragment's
explicit row groups when splitting it: [25..37] came back as [32..37, 25..31])."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sabot_lab.ops.sources import ParquetScan


def test_every_partitioning_reads_rows_in_file_order(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"i": np.arange(50_000)}), path, row_group_size=1_000)
    scan = ParquetScan(str(path))
    for n in range(1, 14):
        rows = np.concatenate([b.column(0).to_numpy() for part in scan.partitions(n)
                               for b in part.batches()])
        assert (rows == np.arange(50_000)).all(), f"{n} partitions"
