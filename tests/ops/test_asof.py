"""As-of (temporal) enrichment against DuckDB's ASOF JOIN and a plain-Python oracle."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import quotes, security_versions
from sabot_lab.errors import DuplicateKeyError, PlanError
from sabot_lab.expr import col
from tests.oracle import assert_balanced, assert_same_rows, duck

VERSION_COLS = ["valid_from", "version", "rating", "risk_weight"]


@pytest.fixture(scope="module")
def market() -> tuple[pa.Table, pa.Table]:
    # 60K quotes span the first ~3 hours of day one; versions over 2 days put many quotes
    # before their instrument's first version.
    q = quotes(60_000, batch_size=20_000).select(["quote_id", "ts", "instrument_id", "price"])
    return q, security_versions(2_000, 6, days=1)


def _run(stream: sl.Stream) -> sl.Result:
    result = stream.run()
    assert_balanced(result.operator_metrics)
    return result


def _duck_asof(how: str, extra: str = "", **tables: pa.Table) -> pa.Table:
    join = "ASOF LEFT JOIN" if how == "left" else "ASOF JOIN"
    return duck(f"SELECT q.*, {', '.join('v.' + c for c in VERSION_COLS)} FROM q {join} v "
                f"ON q.instrument_id = v.instrument_id AND q.ts >= v.valid_from {extra}",
                **tables)


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("batch_size", [997, 20_000])
def test_quotes_against_versions_match_duckdb(market, how, batch_size):
    q, v = market
    result = _run(sl.Stream.from_table(q, batch_size=batch_size).enrich(
        sl.Table(v, key="instrument_id", valid_from="valid_from"), as_of="ts", how=how,
        columns=VERSION_COLS))
    expected = _duck_asof(how, q=q, v=v)
    assert expected.num_rows > 0
    assert_same_rows(result.table, expected)
    enrich = result.operator_metrics[1]
    assert enrich.null_keys == q.column("instrument_id").null_count
    matched = _duck_asof("inner", q=q, v=v).num_rows
    assert enrich.unmatched == q.num_rows - matched
    assert 0 < enrich.unmatched < q.num_rows  # both outcomes occur in this data


def _simulate(events: list[dict], versions: list[dict], key: str, time: str, valid_from: str,
              valid_to: str | None = None, tolerance: int | None = None
              ) -> list[tuple[int | None, str | None]]:
    """Plain Python: per event, the index of its version in ``versions`` (or None) and why
    not."""
    out = []
    for e in events:
        if e[key] is None:
            out.append((None, "null key"))
            continue
        mine = [(v[valid_from], i) for i, v in enumerate(versions)
                if v[key] == e[key] and v[valid_from] is not None]
        if not mine:
            out.append((None, "no version of the key"))
        elif e[time] is None:
            out.append((None, "null time"))
        else:
            earlier = [(t, i) for t, i in mine if t <= e[time]]
            if not earlier:
                out.append((None, "before the key's first version"))
                continue
            t, i = max(earlier)
            end = versions[i][valid_to] if valid_to else None
            if (end is not None and end <= e[time]) or (
                    tolerance is not None and e[time] - t > tolerance):
                out.append((None, "no version valid at that time"))
            else:
                out.append((i, None))
    return out


def _small_case(seed: int) -> tuple[pa.Table, pa.Table]:
    """Shuffled events and versions on few keys and times: ties, repeated times, null keys,
    null times, keys without versions, and versions with a null start."""
    rng = np.random.default_rng(seed)
    n, m = 400, 60
    keys = rng.integers(0, 8, n).astype(object)
    keys[rng.random(n) < 0.05] = None
    times = rng.integers(0, 50, n).astype(object)
    times[rng.random(n) < 0.05] = None
    events = pa.table({"id": pa.array(np.arange(n)), "k": pa.array(list(keys), pa.int64()),
                       "t": pa.array(list(times), pa.int64())})
    pairs = sorted({(int(k), int(t)) for k, t in zip(rng.integers(0, 6, m),
                                                        rng.integers(0, 50, m), strict=True)})
    order = rng.permutation(len(pairs))
    starts = [pairs[i][1] for i in order]
    versions = pa.table({
        "k": pa.array([pairs[i][0] for i in order], pa.int64()),
        "from": pa.array([None if j == 0 else s for j, s in enumerate(starts)], pa.int64()),
        "until": pa.array([None if j % 3 == 0 else s + int(rng.integers(1, 20))
                           for j, s in enumerate(starts)], pa.int64()),
        "label": pa.array([f"v{j}" for j in range(len(pairs))]),
    })
    return events, versions


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("options", [{}, {"tolerance": 7}, {"valid_to": "until"},
                                     {"valid_to": "until", "tolerance": 4}])
def test_reasons_and_rows_match_a_plain_python_simulation(seed, options):
    events, versions = _small_case(seed)
    tolerance = options.get("tolerance")
    table = sl.Table(versions, key="k", valid_from="from", valid_to=options.get("valid_to"))
    result = _run(sl.Stream.from_table(events, batch_size=37).enrich(
        table, as_of="t", columns=["label"], unmatched="side_output", tolerance=tolerance,
        dictionary_strings=False))
    expected = _simulate(events.to_pylist(), versions.to_pylist(), "k", "t", "from",
                         options.get("valid_to"), tolerance)
    labels = versions.column("label").to_pylist()
    got = dict(zip(result.table.column("id").to_pylist(),
                   result.table.column("label").to_pylist(), strict=True))
    assert got == {i: labels[v] for i, (v, _) in enumerate(expected) if v is not None}
    side = result.side_outputs["unmatched"]
    reasons = dict(zip(side.column("id").to_pylist(), side.column("reason").to_pylist(),
                       strict=True))
    assert reasons == {i: why for i, (v, why) in enumerate(expected) if v is None}
    assert {"null key", "before the key's first version"} <= set(reasons.values())


@pytest.mark.parametrize("seed", [1, 2])
def test_valid_to_and_tolerance_match_duckdb(seed):
    events, versions = _small_case(seed)
    table = sl.Table(versions, key="k", valid_from="from", valid_to="until")
    result = _run(sl.Stream.from_table(events).enrich(table, as_of="t", columns=["label"],
                                                      tolerance=6))
    expected = duck("SELECT e.*, v.label FROM e ASOF JOIN v ON e.k = v.k AND e.t >= v.\"from\" "
                    "WHERE (v.until IS NULL OR e.t < v.until) AND e.t - v.\"from\" <= 6",
                    e=events, v=versions)
    assert_same_rows(result.table, expected)


def test_ties_take_the_version_starting_at_the_event_time():
    versions = pa.table({"k": ["a", "a", "b"], "from": pa.array([10, 20, 20], pa.int32()),
                         "v": [1, 2, 3]})
    events = pa.table({"k": ["a", "a", "a", "b", "b"], "t": [20, 19, 20, 20, 19]})
    result = _run(sl.Stream.from_table(events).enrich(
        sl.Table(versions, key="k", valid_from="from"), as_of="t", columns=["v"]))
    expected = duck('SELECT e.*, v.v FROM e ASOF JOIN v ON e.k = v.k AND e.t >= v."from"',
                    e=events, v=versions)
    assert_same_rows(result.table, expected)
    assert sorted(result.table.column("v").to_pylist()) == [1, 2, 2, 3]


def test_several_keys_strings_and_dates():
    versions = pa.table({
        "region": ["eu", "eu", "us", "us", "eu"],
        "tier": [1, 1, 1, 2, 2],
        "from": pa.array([dt.date(2024, 1, 1), dt.date(2024, 3, 1), dt.date(2024, 1, 1),
                          dt.date(2024, 2, 1), dt.date(2024, 2, 15)]),
        "rate": [0.1, 0.2, 0.3, 0.4, 0.5],
    })
    stamps = [dt.datetime(2023, 12, 31), dt.datetime(2024, 3, 1), dt.datetime(2024, 2, 20),
              dt.datetime(2024, 2, 1, 0, 0, 1), dt.datetime(2024, 2, 16), None]
    events = pa.table({"region": ["eu", "eu", "eu", "us", "eu", "us"],
                       "tier": [1, 1, 1, 2, 2, 1],
                       "at": pa.array(stamps, pa.timestamp("ms"))})
    result = _run(sl.Stream.from_table(events).enrich(
        sl.Table(versions, key=["region", "tier"], valid_from="from"), as_of="at",
        how="left", columns=["rate"]))
    expected = duck('SELECT e.*, v.rate FROM e ASOF LEFT JOIN v ON e.region = v.region AND '
                    'e.tier = v.tier AND e."at" >= v."from"', e=events, v=versions)
    assert_same_rows(result.table, expected)


def test_a_filter_on_version_columns_is_not_pushed_into_the_versions(market):
    q, v = market
    stream = sl.Stream.from_table(q).enrich(
        sl.Table(v, key="instrument_id", valid_from="valid_from"), as_of="ts",
        columns=VERSION_COLS).filter((col("rating") == "BBB") & (col("price") > 20))
    result = _run(stream)
    expected = _duck_asof("inner", "WHERE v.rating = 'BBB' AND q.price > 20", q=q, v=v)
    assert expected.num_rows > 0
    assert_same_rows(result.table, expected)


def test_projection_keeps_the_time_column_it_needs(market):
    q, v = market
    stream = sl.Stream.from_table(q).enrich(
        sl.Table(v, key="instrument_id", valid_from="valid_from"), as_of="ts",
        columns=VERSION_COLS).select("quote_id", "version")
    result = _run(stream)
    expected = duck("SELECT q.quote_id, v.version FROM q ASOF JOIN v ON "
                    "q.instrument_id = v.instrument_id AND q.ts >= v.valid_from", q=q, v=v)
    assert_same_rows(result.table, expected)


def test_versioned_table_refuses_two_versions_at_one_time():
    with pytest.raises(DuplicateKeyError, match="two versions valid from the same time"):
        sl.Table(pa.table({"k": [1, 1], "from": [5, 5]}), key="k", valid_from="from")


@pytest.mark.parametrize(("build", "error", "match"), [
    (lambda s, t: s.enrich(t), PlanError, "needs as_of="),
    (lambda s, t: s.enrich(sl.Table(pa.table({"k": [1]}), key="k"), as_of="t"), PlanError,
     "as_of needs a versioned table"),
    (lambda s, t: s.enrich(t, as_of="nope"), PlanError, "as_of column 'nope' not found"),
    (lambda s, t: s.enrich(t, as_of="t", tolerance="1h"), PlanError, "integer time"),
    (lambda s, t: s.enrich(t, as_of="ts"), PlanError, "compares timestamps"),
])
def test_bad_as_of_joins_are_refused_with_the_fix(build, error, match):
    events = pa.table({"k": [1], "t": [3], "ts": pa.array([0], pa.timestamp("s"))})
    table = sl.Table(pa.table({"k": [1], "from": [2]}), key="k", valid_from="from")
    with pytest.raises(error, match=match):
        build(sl.Stream.from_table(events), table)


def test_time_zones_must_agree():
    versions = pa.table({"k": [1], "from": pa.array([0], pa.timestamp("s", "UTC"))})
    events = pa.table({"k": [1], "t": pa.array([0], pa.timestamp("s"))})
    with pytest.raises(PlanError, match="both with a time zone or both without"):
        sl.Stream.from_table(events).enrich(sl.Table(versions, key="k", valid_from="from"),
                                            as_of="t")


def _arriving(versions: pa.Table, jitter_s: int, seed: int = 3) -> pa.Table:
    """``versions`` in an arrival order: by valid_from, out of order by up to ``jitter_s``."""
    rng = np.random.default_rng(seed)
    starts = versions["valid_from"].cast(pa.int64()).to_numpy()
    order = np.argsort(starts + rng.integers(0, jitter_s * 1_000_000, len(starts)),
                       kind="stable")
    return versions.take(pa.array(order))


def _counting(versions: pa.Table, bound_s: int) -> tuple[pa.Table, set[int]]:
    """Plain Python, row by row: the versions that count (not late: valid_from at or after
    the watermark before them, the largest earlier valid_from less the bound; the last of
    each (key, valid_from)), and the positions of the late ones."""
    rows = versions.to_pylist()
    high, late, kept = None, set(), {}
    for i, row in enumerate(rows):
        start = row["valid_from"]
        if high is not None and start < high - dt.timedelta(seconds=bound_s):
            late.add(i)
        else:
            kept[(row["instrument_id"], start)] = i
        high = start if high is None else max(high, start)
    return versions.take(pa.array(sorted(kept.values()))), late


@pytest.mark.parametrize(("batch_size", "versions_batch"),
                         [(997, 50), (20_000, 7), (60_000, 10_000)])
def test_versions_as_a_stream_match_duckdb_on_the_versions_that_count(market, batch_size,
                                                                       versions_batch):
    q, v = market
    arriving = _arriving(v, jitter_s=3_600)
    # some corrections: a version sent again later with another rating
    again = arriving.slice(100, 40).set_column(3, "rating", pa.array(["CORR"] * 40))
    arriving = pa.concat_tables([arriving, again])
    counting, late = _counting(arriving, bound_s=1_800)
    assert 0 < len(late) < arriving.num_rows
    feed = sl.Stream.from_table(arriving, batch_size=versions_batch).with_watermark(
        "valid_from", max_out_of_orderness="30min")
    result = _run(sl.Stream.from_table(q, batch_size=batch_size).enrich(
        feed, on={"instrument_id": "instrument_id"}, as_of="ts", columns=VERSION_COLS,
        how="left"))
    assert_same_rows(result.table, _duck_asof("left", q=q, v=counting))
    got_late = result.side_outputs["late_versions"]
    assert got_late.num_rows == len(late)
    assert set(got_late["reason"].to_pylist()) == {"valid_from before the versions watermark"}


def test_a_stream_of_versions_needs_a_watermark_and_a_key(market):
    q, v = market
    events = sl.Stream.from_table(q)
    with pytest.raises(PlanError, match="needs a watermark on its valid_from"):
        events.enrich(sl.Stream.from_table(v), on={"instrument_id": "instrument_id"},
                      as_of="ts")
    with pytest.raises(PlanError, match="needs on="):
        events.enrich(sl.Stream.from_table(v).with_watermark("valid_from"), as_of="ts")
