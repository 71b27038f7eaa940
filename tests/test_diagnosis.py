"""result.diagnose(): each finding on a run built to have that problem, none on a healthy run."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa

import sabot_lab as sl
from sabot_lab.datasets import securities, transactions
from sabot_lab.patterns.enrichment import enrich_quotes, quote_stream


def _titles(result: sl.Result) -> list[str]:
    return [f.title for f in result.diagnose().findings]


def test_a_healthy_run_has_no_findings():
    refs = sl.Table(securities(1_000), key="instrument_id")
    result = enrich_quotes(quote_stream(50_000, batch_size=10_000, securities_n=1_000), refs).run()
    diagnosis = result.diagnose()
    assert not diagnosis and "nothing looks wrong" in repr(diagnosis)


def test_join_on_numbers_stored_as_text_is_explained_with_examples():
    trades = pa.table({"sec_id": ["7", "8", "9"] * 10, "qty": list(range(30))})
    refs = sl.Table(pa.table({"sec_id": [7, 8], "symbol": ["A", "B"]}), key="sec_id")
    stream = sl.Stream.from_table(trades).with_columns(sec_id=sl.col("sec_id").cast(pa.int64()))
    assert stream.enrich(refs, on="sec_id").run().diagnose().findings == []
    padded = pa.table({"sec_id": ["007", "008"], "symbol": ["A", "B"]})
    result = sl.Stream.from_table(trades).enrich(sl.Table(padded, key="sec_id"),
                                                 on="sec_id").run()
    (finding,) = result.diagnose().findings
    assert finding.title == "enrich on sec_id matched no row"
    assert "'7'" in " ".join(finding.evidence) and "'007'" in " ".join(finding.evidence)
    assert "leading zeros" in finding.fix


def test_case_and_type_mismatches():
    orders = pa.table({"sku": ["AB-1", "CD-2"] * 5})
    lower = sl.Table(pa.table({"sku": ["ab-1", "cd-2"], "price": [1.0, 2.0]}), key="sku")
    (finding,) = sl.Stream.from_table(orders).enrich(lower, on="sku").run().diagnose().findings
    assert "case" in finding.fix
    readings = pa.table({"device": pa.array([1, 2, 3] * 4, pa.int32())})
    devices = sl.Table(pa.table({"device": pa.array([11, 12], pa.int64()), "room": ["a", "b"]}),
                       key="device")
    (finding,) = sl.Stream.from_table(readings).enrich(devices, on="device").run().diagnose(
    ).findings
    assert any("key types differ" in e for e in finding.evidence)


def test_throughput_findings_small_batches_python_hot_spot_and_no_optimizer():
    table = pa.table({"x": np.arange(20_000), "y": np.arange(20_000) * 2.0})

    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        values = [v * 2 for v in batch.column("x").to_pylist()]  # a Python loop per row
        return pa.record_batch({"x": pa.array(values), "y": batch.column("y")})

    result = (sl.Stream.from_table(table, batch_size=100).map_batches(slow, table.schema)
              .filter(sl.col("x") > 10).select("x")).run(optimize=False)
    # Where the time went is set here, not measured: tests do not depend on timings.
    for m in result.operator_metrics:
        m.seconds = 0.9 if m.label == "MapBatches[slow]" else 0.01
    titles = _titles(result)
    assert any(t.startswith("small batches") for t in titles)
    assert any("MapBatches[slow] takes" in t for t in titles)
    assert "the plan ran without the optimizer" in titles


def test_unused_columns_and_large_state_are_memory_findings(monkeypatch):
    refs = sl.Table(securities(500), key="instrument_id")
    job = enrich_quotes(quote_stream(20_000, batch_size=10_000, securities_n=500), refs)
    titles = _titles(job.run(optimize=False))
    assert any("columns are used" in t for t in titles)
    import sabot_lab.diagnosis as diagnose_module
    from sabot_lab.patterns.fraud import detect_fraud

    monkeypatch.setattr(diagnose_module, "LARGE_STATE_BYTES", 1_000)
    fraud = detect_fraud(sl.Stream.from_table(transactions(5_000, n_accounts=300))).run()
    finding = next(f for f in fraud.diagnose().findings if f.kind == "memory")
    assert "keyed state" in finding.title and "ttl" in finding.fix
    assert "<b>" in fraud.diagnose()._repr_html_()


def _event_time_findings(result: sl.Result) -> list:
    return [f for f in result.diagnose().findings if f.kind == "event time"]


def test_a_watermark_that_never_moves_shows_in_metrics_and_diagnosis():
    from sabot_lab.datasets import apache_logs
    from sabot_lab.patterns.analytics import request_stats

    logs = apache_logs()
    # The load time of the file instead of each request's time: one value for every row.
    loaded = logs.set_column(logs.schema.get_field_index("time"), "time", pa.array(
        np.full(logs.num_rows, logs["time"][0].value), logs["time"].type))
    result = request_stats(sl.Stream.from_table(loaded, batch_size=1_000), window="1h").run()
    watermark = result.metrics.set_index("op_id").loc["1:watermark"]
    assert watermark["watermark_moves"] == 1
    assert watermark["rows_watermark_stalled"] == loaded.num_rows - 1_000  # all but batch 1
    (finding,) = _event_time_findings(result)
    assert finding.title.endswith(
        f"stayed at its first value while {loaded.num_rows - 1_000:,} of "
        f"{loaded.num_rows:,} rows arrived")
    assert "Watermark[time" in finding.title
    assert any("stayed open (in state) until the input ended" in e for e in finding.evidence)
    assert "'time' is each row's event time" in finding.fix and "max_future_skew" in finding.fix

    healthy = request_stats(sl.Stream.from_table(logs, batch_size=1_000), window="1h",
                            max_out_of_orderness="1min").run()
    assert healthy.metrics.set_index("op_id").loc["1:watermark", "rows_watermark_stalled"] == 0
    assert _event_time_findings(healthy) == []


def test_rows_sent_to_late_by_a_row_far_ahead_are_a_finding_with_the_fix():
    from sabot_lab.datasets import apache_logs
    from sabot_lab.patterns.analytics import request_stats
    from tests.patterns.test_analytics_pattern import BAD_ROW, one_row_30_years_ahead

    logs = apache_logs()
    bad = one_row_30_years_ahead(logs, "time")
    result = request_stats(sl.Stream.from_table(bad, batch_size=1_000), window="1h",
                           max_out_of_orderness="1min").run()
    late = logs.num_rows - BAD_ROW - 1  # every row after the bad one
    (finding,) = _event_time_findings(result)
    assert finding.title.startswith(f"{late:,} of {logs.num_rows:,} rows reaching Window[")
    watermark = bad["time"][BAD_ROW].as_py() - datetime.timedelta(minutes=1)
    assert f"the watermark ended at {watermark}" in finding.evidence
    assert "max_future_skew" in finding.fix

    guarded = request_stats(sl.Stream.from_table(bad, batch_size=1_000), window="1h",
                            max_out_of_orderness="1min", max_future_skew="1d").run()
    assert _event_time_findings(guarded) == []
