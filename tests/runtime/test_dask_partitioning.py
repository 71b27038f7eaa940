"""DaskRunner sizes partitions by bytes: larger inputs make more partitions, not larger ones,
and any partition count gives the rows of a local run."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sabot_lab as sl
from sabot_lab.datasets import flights, transactions
from sabot_lab.ops.sources import TableScan
from sabot_lab.patterns.fraud import detect_fraud
from sabot_lab.runtime.dask import DaskRunner, JobManager
from tests.oracle import assert_same_rows

pytest.importorskip("distributed")


def test_a_table_gets_a_partition_per_partition_bytes(runner):
    table = flights()
    manager = JobManager(runner.client, partitions_per_worker=1,
                         partition_bytes=table.nbytes // 10)
    scan = TableScan(table)
    assert manager.partitions_for(scan) == math.ceil(table.nbytes / (table.nbytes // 10))
    parts = scan.partitions(manager.partitions_for(scan))
    assert sum(p.table.num_rows for p in parts) == table.num_rows
    assert max(p.table.nbytes for p in parts) <= table.nbytes // 10 + table.nbytes // 1000


def test_small_inputs_keep_partitions_per_worker(runner):
    manager = JobManager(runner.client, partitions_per_worker=3)
    assert manager.partitions_for(TableScan(pa.table({"a": [1, 2]}))) == 3 * 2


def test_parquet_row_groups_bound_the_partitions(runner, tmp_path):
    path = tmp_path / "flights.parquet"
    pq.write_table(flights(), path, row_group_size=500)  # 20 row groups
    groups = pq.ParquetFile(path).metadata.num_row_groups
    stream = sl.Stream.from_parquet(path).filter(sl.col("distance") > 300)
    local = stream.run()
    sized = DaskRunner(runner.client, partitions_per_worker=1, partition_bytes=1)
    result = stream.run(sized)
    # One row group per partition: the finest split a Parquet source has.
    assert len(result.execution.tasks) == groups
    assert_same_rows(result.table, local.table)


@pytest.mark.parametrize("partition_bytes", [1 << 40, 200_000])
def test_windows_and_keyed_state_give_local_rows_for_any_partitioning(runner, partition_bytes):
    txns = transactions(30_000, n_accounts=500)
    sized = DaskRunner(runner.client, partitions_per_worker=1, partition_bytes=partition_bytes)
    fraud = detect_fraud(sl.Stream.from_table(txns, batch_size=2_000))
    fraud_dask = fraud.run(sized)
    assert len(fraud_dask.execution.tasks) == max(2, math.ceil(txns.nbytes / partition_bytes))
    assert_same_rows(fraud_dask.table.drop_columns(["detection_latency_ms"]),
                     fraud.run().table.drop_columns(["detection_latency_ms"]))
    windows = (sl.Stream.from_table(txns, batch_size=2_000).with_watermark("ts")
               .window(sl.tumbling("10min")).group_by("account_id")
               .agg(n=sl.count(), total=sl.sum("amount"), p90=sl.quantile("amount", 0.9)))
    assert_same_rows(windows.run(sized).table, windows.run().table)
