"""The Stream API end to end: sources, operators, sinks and their errors."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sabot_lab as sl
from sabot_lab.errors import CsvParseError, SchemaMismatchError
from tests.oracle import assert_balanced, assert_same_rows, duck


@pytest.fixture
def trades() -> pa.Table:
    return pa.table({
        "id": pa.array(range(10), pa.int64()),
        "sym": pa.array(list("ABCABCABCA")),
        "px": pa.array([float(i) * 1.5 for i in range(10)]),
        "qty": pa.array([5, 0, 7, None, 1, 2, 3, 4, 9, 8], pa.int64()),
    })


def test_filter_select_with_columns_match_sql(trades):
    result = (
        sl.Stream.from_table(trades, batch_size=3)
        .filter((sl.col("px") > 2) & sl.col("sym").isin(["A", "B"]))
        .with_columns(notional=sl.col("px") * sl.col("qty"))
        .select("id", symbol="sym", notional="notional", double_px=sl.col("px") * 2)
        .run()
    )
    expected = duck(
        "SELECT id, sym AS symbol, px * qty AS notional, px * 2 AS double_px FROM t "
        "WHERE px > 2 AND sym IN ('A', 'B')", t=trades)
    assert_same_rows(result.table, expected)
    assert_balanced(result.operator_metrics)
    assert result.metrics["rows_filtered"].sum() == trades.num_rows - expected.num_rows


def test_union_concatenates_in_order(trades):
    a = sl.Stream.from_table(trades.slice(0, 4))
    b = sl.Stream.from_table(trades.slice(4))
    assert a.union(b).to_table().equals(trades)


def test_union_rejects_different_schemas(trades):
    a = sl.Stream.from_table(trades)
    with pytest.raises(sl.PlanError, match=r"column 'px' is double in input 0 but int64"):
        a.union(a.with_columns(px=sl.col("id")))
    with pytest.raises(sl.PlanError, match="select the same columns"):
        a.union(a.select("id"))


def test_map_batches_infers_and_checks_schema(trades):
    def halve(batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch.filter(pc.less(batch["id"], 5)).select(["id"])

    out = sl.Stream.from_table(trades, batch_size=4).map_batches(halve).run()
    assert out.table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert out.operator_metrics[1].rows_filtered == 5

    def wrong(batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch.select(["id"]) if batch.num_rows else batch

    stream = sl.Stream.from_table(trades).map_batches(wrong, schema=trades.schema)
    with pytest.raises(SchemaMismatchError, match=r"missing column\(s\) \['sym', 'px', 'qty'\]"):
        stream.to_table()


def test_from_pandas_and_to_pandas(trades):
    frame = trades.to_pandas()
    out = sl.Stream.from_pandas(frame, batch_size=4).filter(sl.col("qty") > 4).to_pandas()
    expected = frame[frame["qty"] > 4].reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected)


def test_from_batches_checks_each_batch_and_runs_once_for_iterators(trades):
    batches = trades.to_batches(max_chunksize=3)
    assert sl.Stream.from_batches(batches, trades.schema).to_table().equals(trades)

    stream = sl.Stream.from_batches(iter(batches), trades.schema)
    assert stream.to_table().num_rows == 10
    with pytest.raises(RuntimeError, match="already consumed"):
        stream.to_table()

    bad = [*batches[:1], batches[1].cast(trades.schema.set(2, pa.field("px", pa.float32())))]
    with pytest.raises(SchemaMismatchError, match=r"batch 1 .* column 'px' is float, expected"):
        sl.Stream.from_batches(bad, trades.schema).to_table()


def test_from_generator_is_reproducible():
    def make(i: int) -> pa.RecordBatch:
        return pa.record_batch({"i": pa.array([i] * (i + 1), pa.int64())})

    stream = sl.Stream.from_generator(make, 4)
    assert stream.to_table().column("i").to_pylist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert stream.to_table().equals(stream.to_table())


def test_parquet_streams_batches_and_sink_is_atomic(tmp_path, trades):
    path = tmp_path / "trades.parquet"
    pq.write_table(trades, path, row_group_size=4)
    seen = []
    sl.Stream.from_parquet(path, batch_size=4).for_each_batch(lambda b: seen.append(b.num_rows))
    assert sum(seen) == 10 and max(seen) <= 4 and len(seen) >= 3

    out = tmp_path / "out" / "big.parquet"
    result = sl.Stream.from_parquet(path).filter(sl.col("qty") > 4).to_parquet(out)
    assert result.table is None
    assert_same_rows(pq.read_table(out), duck("SELECT * FROM t WHERE qty > 4", t=trades))

    def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise RuntimeError("boom")

    failing = tmp_path / "failing.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        sl.Stream.from_table(trades).map_batches(explode, schema=trades.schema).to_parquet(
            failing)
    assert list(tmp_path.iterdir()) == sorted(tmp_path.iterdir()) and not failing.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".failing")]


def test_csv_types_and_streaming(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text("sym,px,qty\n" + "".join(f"S{i % 3},{i}.5,{i}\n" for i in range(1000)))
    schema = pa.schema({"sym": pa.string(), "px": pa.float64(), "qty": pa.int32()})
    seen = []
    result = sl.Stream.from_csv(path, schema=schema, batch_size=100).for_each_batch(
        lambda b: seen.append(b))
    assert sum(b.num_rows for b in seen) == 1000 and len(seen) > 1
    assert seen[0].schema == schema
    assert result.rows_in == 1000


def test_csv_unparseable_value_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    lines = ["a,b"] + [f"{i},x" for i in range(500)] + ["oops,y"] + ["1,z"] * 10
    path.write_text("\n".join(lines) + "\n")
    stream = sl.Stream.from_csv(path, schema=pa.schema({"a": pa.int64(), "b": pa.string()}))
    expected = r"bad\.csv: line 502, column 'a': .*invalid value 'oops'"
    with pytest.raises(CsvParseError, match=expected):
        stream.to_table()


def test_csv_malformed_line_raises_or_goes_to_side_output(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,x\n2,y,extra\n3,z\n")
    with pytest.raises(CsvParseError, match=r"ragged\.csv: .*Row #3: Expected 2 columns, got 3"):
        sl.Stream.from_csv(path).to_table()
    result = sl.Stream.from_csv(path, bad_lines="side_output").run()
    assert result.table.column("a").to_pylist() == [1, 3]
    malformed = result.side_outputs["malformed"].to_pylist()
    assert malformed == [{"file": str(path), "line": 3, "text": "2,y,extra",
                          "reason": "expected 2 fields, got 3"}]


def test_empty_stream_gives_empty_result_with_schema(trades):
    ref = sl.Table(pa.table({"sym": ["A"], "name": ["Alpha"]}), key="sym")
    stream = sl.Stream.from_table(trades.slice(0, 0)).enrich(ref).select("id", "name")
    out = stream.to_table()
    assert out.num_rows == 0
    assert out.schema == stream.schema
    assert sl.Stream.from_batches([], trades.schema).to_table().schema == trades.schema


def test_parquet_memory_does_not_grow_with_the_file(tmp_path):
    import threading

    from sabot_lab.ops.sources import ParquetScan

    def peak_while_reading(rows: int) -> int:
        path = tmp_path / f"t{rows}.parquet"
        pq.write_table(pa.table({"a": pa.array(range(rows)), "b": pa.array(["x" * 30] * rows)}),
                       path, row_group_size=50_000)
        base = peak = pa.total_allocated_bytes()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.001):
                peak = max(peak, pa.total_allocated_bytes())

        watcher = threading.Thread(target=sample)
        watcher.start()
        for _batch in ParquetScan(path, batch_size=50_000).batches():
            done.wait(0.005)  # a slow consumer: the reader must not run ahead
        done.set()
        watcher.join()
        return peak - base

    # Read-ahead is bounded (a few batches), so 4x the file is far from 4x the memory.
    small, large = peak_while_reading(1_000_000), peak_while_reading(4_000_000)
    assert large < 1.5 * small


def test_durations_are_text_timedeltas_or_nanoseconds_and_the_old_name_warns():
    from datetime import timedelta

    t = pa.table({"t": [0, 30, 61, 95], "v": [1, 2, 3, 4]})

    def windows(**watermark: object) -> pa.Table:
        return (sl.Stream.from_table(t, batch_size=1).with_watermark("t", unit="s", **watermark)
                .window(sl.tumbling(timedelta(minutes=1))).agg(n=sl.count()).to_table())

    by_text = windows(max_out_of_orderness="40s")
    assert windows(max_out_of_orderness=timedelta(seconds=40)).equals(by_text)
    assert windows(max_out_of_orderness=40 * 10**9).equals(by_text)
    with pytest.warns(DeprecationWarning, match="max_out_of_orderness="):
        assert windows(out_of_orderness="40s").equals(by_text)
    assert by_text["n"].to_pylist() == [2, 2]  # [0, 60): 0 and 30; [60, 120): 61 and 95
    with pytest.raises(ValueError, match="must not be negative"):
        windows(max_out_of_orderness=-1)
