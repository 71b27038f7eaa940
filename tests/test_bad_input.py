"""Bad input through every pattern: generated schemas, nulls, NaN/inf, empty and mixed-size
batches, extreme keys, out-of-order and far-future event times, malformed CSV lines.

Every generated case must end in one of these ways, the test deciding which from the case:

* a :class:`~sabot_lab.result.Result` in which every operator balances (rows in = out +
  filtered + side output), consecutive operators agree (one's rows out are the next one's rows
  in), every side-output row is counted once and carries a reason, and the rows agree with a
  small independent computation written here;
* an error a user can act on: a sabot_lab error, ``ValueError``, ``TypeError``, ``KeyError``
  (or ``OverflowError``) whose message names the offending column (or file and line); never a
  raw pyarrow or numba error, ``ZeroDivisionError``, ``IndexError`` or an assertion from
  inside.

A handful of the same bad inputs also run on a Dask LocalCluster, which must give the local
rows and side outputs.

The bugs this suite found close the file, one minimal case each, as regression tests that
pin what happens now: the rows, or the error and what its message names (never "a result or
an error"). An open bug would be a strict xfail that the property tests draw around, so that
it fails in exactly one place.

sabot_lab has no JSON source (``Stream`` has no ``from_json``), so there are no JSON-lines
cases; add them here when one exists.

The property tests are derandomized (the same examples on every run). To explore, run with
``BAD_INPUT_EXAMPLES=500`` (random examples, that many per test).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numba.core.errors
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from sabot_lab.errors import CsvParseError, ParquetReadError
from sabot_lab.patterns.fraud import RULES, FraudRules, detect_fraud
from sabot_lab.plan.nodes import PlanError
from sabot_lab.plan.windows import parse_duration, to_unit
from tests.oracle import assert_balanced
from tests.patterns.test_fraud_pattern import oracle as fraud_oracle

# --- what a good outcome is ---------------------------------------------------------------

#: Errors that must never reach a user raw: they do not say which column, row or file.
RAW_ERRORS = (pa.ArrowException, numba.core.errors.NumbaError, ZeroDivisionError, IndexError,
              AssertionError, AttributeError)
#: Errors a user can act on (sabot_lab's own errors derive from these), when their message
#: names what to fix.
ACTIONABLE = (ValueError, TypeError, KeyError, FileNotFoundError, OverflowError)


def assert_actionable(exc: BaseException, *names: str) -> None:
    """``exc`` is an error a user can act on and names one of ``names`` (the message or the
    notes the runner adds, which the user sees in the traceback)."""
    kind = f"{type(exc).__module__}.{type(exc).__name__}"
    assert not isinstance(exc, RAW_ERRORS), f"raw {kind} reached the user: {exc}"
    assert isinstance(exc, ACTIONABLE), f"unexpected {kind}: {exc}"
    text = "\n".join([str(exc), *getattr(exc, "__notes__", ())])
    assert any(name in text for name in names), f"{kind} names none of {names}: {text}"


def check_result(result: sl.Result) -> sl.Result:
    """Accounting and reasons of a finished run."""
    metrics = result.operator_metrics
    assert_balanced(metrics)
    for up, down in itertools.pairwise(metrics):  # every job here is a chain
        assert down.rows_in == up.rows_out, (up, down)
    if result.table is not None:
        assert metrics[-1].rows_in == result.table.num_rows
    for name, table in result.side_outputs.items():
        assert "reason" in table.column_names, (name, table.column_names)
        reasons = table["reason"].to_pylist()
        assert all(isinstance(r, str) and r.strip() for r in reasons), (name, reasons)
        if name == "late":  # and the window it missed, by how much
            for column in ("window_start", "window_end", "late_by"):
                assert table[column].null_count == 0, (name, column)
            late_by = table["late_by"].cast(pa.int64()).to_pylist()
            assert all(v >= 0 for v in late_by), late_by
    counted = sum(m.rows_side_output for m in metrics)
    assert counted == sum(t.num_rows for t in result.side_outputs.values())
    return result


def assert_refused(run, error: type[Exception], match: str, *names: str) -> None:
    """``run()`` raises ``error`` (a message matching ``match``), actionable and naming one
    of ``names``."""
    with pytest.raises(error, match=match) as info:
        run()
    assert_actionable(info.value, *names)


def _norm(value: object) -> object:
    """NaN compares equal to NaN (as Arrow's hash kernels and SQL engines match it)."""
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def _rows(table: pa.Table, columns: list[str]) -> Counter:
    return Counter(zip(*([_norm(v) for v in table[c].to_pylist()] for c in columns),
                       strict=True))


# --- sources ----------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "0"))


def explore(default: int) -> settings:
    """Hypothesis settings: ``default`` derandomized examples, or ``BAD_INPUT_EXAMPLES``
    random ones."""
    return settings(max_examples=EXAMPLES or default, derandomize=not EXAMPLES, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    whole = table.combine_chunks()
    if whole.num_rows:
        return whole.to_batches()[0]
    return pa.RecordBatch.from_pylist([], schema=table.schema)


def make_stream(table: pa.Table, source: str, batch_size: int, cuts: list[int],
                scratch: Path) -> sl.Stream:
    """``table`` as a stream from an in-memory table, from batches of mixed sizes (cut at
    ``cuts``, empty batches included), or from a Parquet file."""
    if source == "table":
        return sl.Stream.from_table(table, batch_size=batch_size)
    if source == "batches":
        batch = _one_batch(table)
        bounds = [0, *sorted(min(c, batch.num_rows) for c in cuts), batch.num_rows]
        parts = [batch.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
        return sl.Stream.from_batches(parts, table.schema)
    path = scratch / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(table, path, row_group_size=max(batch_size, 1))
    return sl.Stream.from_parquet(path, batch_size=batch_size)


sources = st.sampled_from(["table", "batches", "parquet"])
batch_sizes = st.sampled_from([1, 2, 3, 7, 64, 100_000])
cut_points = st.lists(st.integers(0, 60), max_size=6)


# --- enrichment -------------------------------------------------------------------------

INT_KEYS = [0, 1, 2, 3, -1, 7, 2**31 - 1, 2**63 - 1, -(2**63)]
_LABELS = {0: "", 1: "é", 2: "🙂", 3: "x" * 5_000, -1: "e\u0301", 7: "nul\x00byte",
           2**31 - 1: "Ω" * 300}
_FLOATS = {7: math.nan, 2**31 - 1: math.inf, 3: -math.inf}
KEY_KINDS = ["int64", "int32", "uint64", "string", "large_string", "dictionary", "float64"]


def key_array(values: list[int | None], kind: str) -> pa.Array:
    """Key values of one kind from the shared pool of ints (so that kinds can match)."""
    def each(f):
        return [None if v is None else f(v) for v in values]

    if kind == "int64":
        return pa.array(values, pa.int64())
    if kind == "int32":
        return pa.array(each(lambda v: (v + 2**31) % 2**32 - 2**31), pa.int32())
    if kind == "uint64":  # -1 is 2**64-1 and -(2**63) is 2**63: no int64 key matches them
        return pa.array(each(lambda v: v % 2**64), pa.uint64())
    if kind == "float64":
        return pa.array(each(lambda v: _FLOATS.get(v, float(v))), pa.float64())
    labels = pa.array(each(lambda v: _LABELS.get(v, f"key{v}")), pa.string())
    if kind == "large_string":
        return labels.cast(pa.large_string())
    if kind == "dictionary":
        return labels.dictionary_encode()
    return labels


def _family(kind: str) -> str:
    return {"int64": "int", "int32": "int", "uint64": "int", "float64": "float"}.get(kind, "text")


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return "dictionary"
    return {pa.int64(): "int64", pa.int32(): "int32", pa.uint64(): "uint64",
            pa.float64(): "float64"}.get(t, "string")


keys = st.one_of(st.none(), st.sampled_from(INT_KEYS))
amounts = st.one_of(st.none(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.5]),
                    st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def enrichment_cases(draw):
    ref_kind = draw(st.sampled_from(KEY_KINDS))
    stream_kind = draw(st.one_of(st.just(ref_kind), st.sampled_from(KEY_KINDS)))
    n = draw(st.integers(0, 40))
    stream = pa.table({
        "pos": pa.array(range(n), pa.int64()),
        "sk": key_array(draw(st.lists(keys, min_size=n, max_size=n)), stream_kind),
        "amt": pa.array(draw(st.lists(amounts, min_size=n, max_size=n)), pa.float64()),
    })
    ref_keys = draw(st.lists(keys, max_size=12))
    m = len(ref_keys)
    ref = pa.table({
        "rk": key_array(ref_keys, ref_kind),
        "tier": pa.array(draw(st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=m,
                                       max_size=m)), pa.int64()),
        "name": pa.array([_LABELS.get(i % 8, f"n{i}") if i % 5 else None for i in range(m)]),
    })
    multi = draw(st.booleans())  # a second key column, text, on both sides
    if multi:
        second = st.sampled_from(["a", "é", "", None])
        stream = stream.append_column("sk2", pa.array(
            draw(st.lists(second, min_size=n, max_size=n)), pa.string()))
        ref = ref.append_column("rk2", pa.array(
            draw(st.lists(second, min_size=m, max_size=m)), pa.string()).dictionary_encode())
    return {"stream": stream, "ref": ref, "unique": draw(st.booleans()), "multi": multi,
            "how": draw(st.sampled_from(["inner", "left"])),
            "unmatched": draw(st.sampled_from(["drop", "side_output"])),
            "filter": draw(st.booleans()), "source": draw(sources),
            "batch_size": draw(batch_sizes), "cuts": draw(cut_points)}


def _key_tuples(table: pa.Table, names: list[str]) -> list[tuple | None]:
    """The key of every row as a tuple (NaN normalised), ``None`` if any part is null."""
    columns = [table[n].to_pylist() for n in names if n in table.column_names]
    return [None if any(v is None for v in key) else tuple(map(_norm, key))
            for key in zip(*columns, strict=True)]


def enrichment_oracle(case: dict) -> tuple[Counter, list[int], int]:
    """(expected (pos, tier, name) rows, positions without a match, rows with a null key)
    by dict lookups."""
    ref = case["ref"]
    matches: dict[object, list[int]] = defaultdict(list)
    for i, k in enumerate(_key_tuples(ref, ["rk", "rk2"])):
        if k is not None:
            matches[k].append(i)
    tier, name = ref["tier"].to_pylist(), ref["name"].to_pylist()
    expected: Counter = Counter()
    missing = []
    null_keys = 0
    stream = case["stream"]
    for pos, k, amt in zip(stream["pos"].to_pylist(), _key_tuples(stream, ["sk", "sk2"]),
                           stream["amt"].to_pylist(), strict=True):
        if case["filter"] and not (amt is not None and amt > 0):
            continue
        null_keys += k is None
        hits = matches.get(k) if k is not None else None
        if hits:
            for i in hits:
                expected[(pos, tier[i], name[i])] += 1
        else:
            missing.append(pos)
            if case["how"] == "left":
                expected[(pos, None, None)] += 1
    return expected, missing, null_keys


@explore(120)
@given(case=enrichment_cases())
def test_enrichment_on_generated_keys(case, scratch):
    multi = case["multi"]
    ref_keys = [k for k in _key_tuples(case["ref"], ["rk", "rk2"]) if k is not None]
    try:
        reference = sl.Table(case["ref"], key=["rk", "rk2"] if multi else "rk",
                             unique=case["unique"])
    except Exception as exc:
        assert case["unique"] and len(set(ref_keys)) < len(ref_keys)
        assert_actionable(exc, "rk")
        return
    assert not case["unique"] or len(set(ref_keys)) == len(ref_keys)
    stream = make_stream(case["stream"], case["source"], case["batch_size"], case["cuts"],
                         scratch)
    if case["filter"]:
        stream = stream.filter(sl.col("amt") > 0)
    kinds = {_family(k) for k in (_kind(case["stream"]["sk"].type),
                                  _kind(case["ref"]["rk"].type))}
    try:
        job = stream.enrich(reference, on={"sk": "rk", "sk2": "rk2"} if multi else {"sk": "rk"},
                            how=case["how"], unmatched=case["unmatched"])
    except Exception as exc:
        assert len(kinds) == 2, "compatible key types were refused"
        assert_actionable(exc, "sk")
        return
    assert len(kinds) == 1, "incompatible key types were accepted"
    expected, missing, null_keys = enrichment_oracle(case)
    for optimize in (True, False):
        result = check_result(job.run(optimize=optimize))
        assert _rows(result.table, ["pos", "tier", "name"]) == expected
        enrich = next(m for m in result.operator_metrics if m.label.startswith("Enrich"))
        assert (enrich.unmatched, enrich.null_keys) == (len(missing), null_keys)
        side = result.side_outputs.get("unmatched")
        if case["how"] == "inner" and case["unmatched"] == "side_output":
            assert sorted(side["pos"].to_pylist()) == sorted(missing)
            for k, reason in zip(_key_tuples(side, ["sk", "sk2"]), side["reason"].to_pylist(),
                                 strict=True):
                assert (reason == "null key") == (k is None), (k, reason)
        else:
            assert side is None or side.num_rows == 0


# --- fraud ------------------------------------------------------------------------------

ACCOUNTS = [1, 2, 3, -(2**63), 2**63 - 1]
COORDS = [0.0, 1.0, 40.7, -33.9, 90.0, -180.0, 91.0, -181.0, math.nan, math.inf, -math.inf]
FRAUD_UNITS = ["ms", "s", "us", "ns", "int"]


@st.composite
def transaction_tables(draw):
    n = draw(st.integers(0, 40))
    rows = draw(st.lists(st.tuples(
        st.one_of(st.none(), st.sampled_from(ACCOUNTS)),
        st.one_of(st.none(), st.integers(0, 400_000), st.sampled_from([0, 10**12])),
        st.one_of(st.none(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308,
                                              5e-324]), st.floats(0.01, 1e4)),
        st.one_of(st.none(), st.sampled_from(COORDS), st.floats(-90, 90)),
        st.one_of(st.none(), st.sampled_from(COORDS), st.floats(-180, 180)),
    ), min_size=n, max_size=n))
    unit = draw(st.sampled_from(FRAUD_UNITS))
    account_type = draw(st.sampled_from([pa.int64(), pa.int32()]))
    accounts = [a if a is None or account_type == pa.int64() else a % 1000 for a, *_ in rows]
    ts_type = pa.int64() if unit == "int" else pa.timestamp(unit)
    table = pa.table({
        "account_id": pa.array(accounts, account_type),
        "txn_id": pa.array(range(n), pa.int64()),
        "ts": pa.array([r[1] for r in rows], pa.int64()).cast(ts_type),
        "amount": pa.array([r[2] for r in rows], pa.float64()),
        "lat": pa.array([r[3] for r in rows], pa.float64()),
        "lon": pa.array([r[4] for r in rows], pa.float64()),
    })
    return table, unit


def fraud_routing(table: pa.Table, log_amount: bool = False
                  ) -> tuple[list[int], dict[int, str], list[dict]]:
    """(txn_ids with a null key, {txn_id: expected reason keyword} of invalid rows, accepted
    rows in order), replaying the documented checks row by row."""
    null_key, invalid, accepted = [], {}, []
    last: dict[int, int] = {}
    plain = table.set_column(2, "ts", table["ts"].cast(pa.int64()))
    for r in plain.to_pylist():
        amount, lat, lon, t = r["amount"], r["lat"], r["lon"], r["ts"]
        if r["account_id"] is None:
            null_key.append(r["txn_id"])
        elif t is None:
            invalid[r["txn_id"]] = "null event time"
        elif amount is None or not math.isfinite(amount) or (log_amount and amount <= 0):
            invalid[r["txn_id"]] = "amount"
        elif lat is None or lon is None or math.isnan(lat) or math.isnan(lon):
            invalid[r["txn_id"]] = "coordinates"
        elif abs(lat) > 90 or abs(lon) > 180:
            invalid[r["txn_id"]] = "out of range"
        elif r["account_id"] in last and t < last[r["account_id"]]:
            invalid[r["txn_id"]] = "out of order"
        else:
            last[r["account_id"]] = t
            accepted.append(r)
    return null_key, invalid, accepted


@explore(100)
@given(case=transaction_tables(), source=sources, batch_size=batch_sizes, cuts=cut_points,
       log_amount=st.booleans())
def test_fraud_on_generated_transactions(case, source, batch_size, cuts, log_amount, scratch):
    table, unit = case
    rules = FraudRules(log_amount=log_amount)
    result = check_result(detect_fraud(make_stream(table, source, batch_size, cuts, scratch),
                                       rules).run())
    null_key, invalid, accepted = fraud_routing(table, log_amount)
    assert result.side_outputs["null_key"]["txn_id"].to_pylist() == null_key
    got = dict(zip(result.side_outputs["invalid"]["txn_id"].to_pylist(),
                   result.side_outputs["invalid"]["reason"].to_pylist(), strict=True))
    assert got.keys() == invalid.keys()
    for txn, keyword in invalid.items():
        assert keyword in got[txn], (txn, keyword, got[txn])
    alerts = result.table
    ok = {r["txn_id"] for r in accepted}
    assert set(alerts["txn_id"].to_pylist()) <= ok
    assert set(alerts["rule"].to_pylist()) <= set(RULES)
    assert all(s > 1 for s in alerts["severity"].to_pylist())
    if unit in ("ms", "int"):
        expected, refused = fraud_oracle(accepted, log_amount=log_amount)
        assert not refused
        got_alerts = list(zip(alerts["txn_id"].to_pylist(), alerts["rule"].to_pylist(),
                              strict=True))
        assert got_alerts == expected


# --- windows (analytics) ----------------------------------------------------------------

FACTOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
#: Event times the windows refuse beyond (window arithmetic must not overflow int64).
TIME_LIMIT = 2**62
EXTREME_TIMES = [2**63 - 1, -(2**63), TIME_LIMIT, -TIME_LIMIT, TIME_LIMIT + 1,
                 -TIME_LIMIT - 1]
WINDOWS = [sl.tumbling("1s"), sl.tumbling("10s"), sl.tumbling("1min"), sl.tumbling("1h"),
           sl.hopping("1min", "20s"), sl.hopping("10s", "5s"), sl.hopping("1h", "15min"),
           sl.session("5s"), sl.session("1min")]
#: Seconds: mostly a few minutes of traffic, sometimes far back or far ahead (a bad clock).
offsets = st.one_of(st.none(), st.integers(-120, 900), st.integers(-120, 900),
                    st.sampled_from([10**9, -(10**6), 86_400 * 365]))
group_keys = st.one_of(st.none(), st.sampled_from(INT_KEYS))
values = st.one_of(st.none(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308,
                                               -1e308, 5e-324, 1e-300]),
                   st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def window_cases(draw):
    n = draw(st.integers(0, 40))
    unit = draw(st.sampled_from(list(FACTOR)))
    rows = draw(st.lists(st.tuples(offsets, st.integers(0, 999), group_keys, values),
                         min_size=n, max_size=n))
    raw = [None if o is None else o * FACTOR[unit] + f * FACTOR[unit] // 1000
           for o, f, _, _ in rows]
    if raw and draw(st.booleans()):  # raw extremes: int64 limits, +-2**62 and around it
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.sampled_from(EXTREME_TIMES))
    as_int = draw(st.booleans())
    tz = draw(st.sampled_from([None, "UTC"]))
    time_type = pa.int64() if as_int else pa.timestamp(unit, tz=tz)
    key_kind = draw(st.sampled_from(["string", "int64", "dictionary", "float64", "int32",
                                     "large_string"]))
    value_type = draw(st.sampled_from([pa.float64(), pa.int64()]))
    vals = [v for *_, v in rows]
    if value_type == pa.int64():
        vals = [None if v is None or not abs(v) < 2**53 else int(v) for v in vals]
    table = pa.table({
        "t": pa.array(raw, pa.int64()).cast(time_type),
        "k": key_array([k for _, _, k, _ in rows], key_kind),
        "v": pa.array(vals, value_type),
    })
    window = draw(st.sampled_from(WINDOWS))
    session = isinstance(window, sl.plan.windows.Session)
    top = draw(st.one_of(st.none(), st.integers(1, 3)))
    lateness = "0s" if session or top else draw(st.sampled_from(["0s", "30s"]))
    keyed = draw(st.booleans())
    # A filter on the group key after the window (the optimizer moves it into the window).
    drop_key = None
    # (Not on sessions: the session operator ignores the moved filter, a known bug.)
    if keyed and not top and not session and draw(st.booleans()):
        drop_key = key_array([draw(st.sampled_from(INT_KEYS))], key_kind).to_pylist()[0]
    return {"table": table, "unit": unit, "as_int": as_int, "window": window,
            "keyed": keyed, "top": top, "drop_key": drop_key,
            "out_of_orderness": draw(st.sampled_from(["0s", "5s", "1min"])),
            "allowed_lateness": lateness,
            "max_future_skew": draw(st.sampled_from([None, "1h", "1d"]))}


def window_job(case: dict, stream: sl.Stream) -> sl.Stream:
    events = stream.with_watermark(
        "t", max_out_of_orderness=case["out_of_orderness"],
        allowed_lateness=case["allowed_lateness"], max_future_skew=case["max_future_skew"],
        unit=case["unit"] if case["as_int"] else None)
    windowed = events.window(case["window"])
    if case["keyed"]:
        windowed = windowed.group_by("k")
    job = windowed.agg(n=sl.count(), lo=sl.min("v"), hi=sl.max("v"), total=sl.sum("v"),
                       avg=sl.mean("v"), p50=sl.quantile("v", 0.5),
                       p90=sl.approx_quantile("v", 0.9))
    if case["drop_key"] is not None:
        job = job.filter(sl.col("k") != case["drop_key"])
    return job.top_n(case["top"], by="n") if case["top"] else job


def window_oracle(case: dict) -> dict:
    """Replays the documented event-time rules in plain Python: the watermark before each
    row, skew rejection, lateness per (row, window); counts and min/max per window and key."""
    unit = case["unit"]

    def dur(text):
        return to_unit(parse_duration(text), unit)

    bound, lateness = dur(case["out_of_orderness"]), dur(case["allowed_lateness"])
    skew = None if case["max_future_skew"] is None else dur(case["max_future_skew"])
    window = case["window"]
    session = isinstance(window, sl.plan.windows.Session)
    size = None if session else to_unit(window.size_ns, unit)
    slide = None if session else to_unit(window.slide_ns, unit)
    table = case["table"]
    ts = table["t"].cast(pa.int64()).to_pylist()
    ks = [_norm(k) if case["keyed"] else None for k in table["k"].to_pylist()]
    vs = table["v"].to_pylist()
    running = previous = None
    rejected = accepted = late = 0
    groups: dict[tuple, list] = defaultdict(list)
    accepted_by_key: Counter = Counter()
    for t, k, v in zip(ts, ks, vs, strict=True):
        if t is None or abs(t) > TIME_LIMIT:
            rejected += 1
            continue
        wm = None if running is None else running - bound
        if (skew is not None and running is not None and t > running + skew
                and (previous is None or t > previous + skew)):
            rejected += 1
            previous = t
            continue
        previous = t
        accepted += 1
        accepted_by_key[k] += 1
        if not session:
            for j in range(size // slide):
                start = (t // slide - j) * slide
                if wm is not None and start + size + lateness <= wm:
                    late += 1
                else:
                    groups[(start, k)].append(v)
        running = t if running is None else max(running, t)
    return {"rejected": rejected, "accepted": accepted, "late": late, "groups": groups,
            "accepted_by_key": accepted_by_key, "session": session}


def assert_sketch_bound(estimate: float | None, values: list[float], q: float,
                        alpha: float = 0.01, max_buckets: int = 2048) -> None:
    """``approx_quantile`` is within ``alpha`` of the exact lower quantile, within the limits
    documented in :mod:`sabot_lab.ops.sketch` (subnormals count as zero; with a collapsing
    store, magnitudes below ``M * gamma**(1 - max_buckets)`` are estimated too far out)."""
    if not values:
        assert estimate is None
        return
    exact = float(np.quantile(np.array(values, dtype=np.float64), q, method="lower"))
    if exact == 0 or math.isinf(exact):
        assert estimate == exact, (estimate, exact)
        return
    gamma = (1 + alpha) / (1 - alpha)
    same_sign = [abs(v) for v in values if math.isfinite(v) and (v > 0) == (exact > 0)]
    floor = max(same_sign) * gamma ** (1 - max_buckets)
    if abs(exact) < 2.2250738585072014e-308 or abs(exact) <= floor:
        return  # documented loss of relative accuracy near zero
    assert abs(estimate - exact) <= alpha * abs(exact) * (1 + 1e-9), (estimate, exact)


def _plain(table: pa.Table) -> dict[str, list]:
    """Columns as Python lists: dictionaries decoded, times as their integers (event times
    far from today are beyond Python's datetime), NaN normalised."""
    plain = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_timestamp(column.type) or pa.types.is_duration(column.type):
            column = column.cast(pa.int64())
        plain[name] = [_norm(v) for v in column.to_pylist()]
    return plain


def _final_rows(table: pa.Table, keyed: bool) -> dict[tuple, dict]:
    """The last revision of every (window, key): the result with every row counted."""
    columns = _plain(table)
    rows = [dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)]
    final: dict[tuple, dict] = {}
    for row in rows:
        key = (row["window_start"], row["k"] if keyed else None)
        if key not in final or row["revision"] > final[key]["revision"]:
            final[key] = row
    return final


def _sorted_rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(*_plain(table).values(), strict=True), key=repr)


@explore(100)
@given(case=window_cases(), source=sources, batch_size=batch_sizes, cuts=cut_points)
def test_windows_on_generated_event_times(case, source, batch_size, cuts, scratch):
    if source == "parquet" and case["unit"] == "s" and not case["as_int"]:
        source = "batches"  # Parquet stores timestamp[s] as [ms]: another job
    job = window_job(case, make_stream(case["table"], source, batch_size, cuts, scratch))
    result = check_result(job.run())
    expected = window_oracle(case)
    late, rejected = result.side_outputs["late"], result.side_outputs["rejected"]
    assert rejected.num_rows == expected["rejected"]
    table = result.table
    drop = case["drop_key"]

    def kept(k):
        return drop is None or (k is not None and k != drop)

    if case["top"]:
        starts = Counter(table["window_start"].cast(pa.int64()).to_pylist())
        assert all(c <= case["top"] for c in starts.values())
        assert set(table["rank"].to_pylist()) <= set(range(1, case["top"] + 1))
    elif expected["session"]:
        got: Counter = Counter()
        ks = table["k"].to_pylist() if case["keyed"] else [None] * table.num_rows
        for k, n in zip(ks, table["n"].to_pylist(), strict=True):
            got[_norm(k)] += n
        late_keys = late["k"].to_pylist() if case["keyed"] else [None] * late.num_rows
        for k in late_keys:
            got[_norm(k)] += 1
        want = Counter({k: n for k, n in expected["accepted_by_key"].items() if kept(k)})
        assert +Counter({k: n for k, n in got.items() if kept(k)}) == +want
    else:
        assert late.num_rows == expected["late"]
        final = _final_rows(table, case["keyed"])
        groups = {key: vs for key, vs in expected["groups"].items() if kept(key[1])}
        assert final.keys() == groups.keys()
        for key, vs in groups.items():
            row = {k: (math.nan if v == "NaN" else v) for k, v in final[key].items()}
            valid = [v for v in vs if v is not None and not math.isnan(v)]
            assert row["n"] == len(vs), key
            assert row["lo"] == (min(valid) if valid else None), key
            assert row["hi"] == (max(valid) if valid else None), key
            if valid and all(math.isfinite(v) for v in valid):  # (overflow to inf allowed)
                assert row["total"] == pytest.approx(sum(valid), rel=1e-9, abs=1e-6), key
                assert row["avg"] == pytest.approx(sum(valid) / len(valid), rel=1e-9,
                                                   abs=1e-6), key
                if all(abs(v) < 1e300 for v in valid):  # interpolation itself overflows
                    median = float(np.quantile(np.array(valid, dtype=np.float64), 0.5))
                    assert row["p50"] == pytest.approx(median, rel=1e-9, abs=1e-6), key
            elif not valid:
                assert row["avg"] is None and row["p50"] is None, key
            assert_sketch_bound(row["p90"], valid, 0.9)
    # The same rows whatever the batches (one row per batch, one batch for all) and with
    # or without the optimizer.
    again = window_job(case, sl.Stream.from_table(case["table"], batch_size=1)).run()
    whole = window_job(case, sl.Stream.from_table(case["table"], batch_size=10**6)).run(
        optimize=False)
    for other in (again, whole):
        check_result(other)
        assert _sorted_rows(other.table) == _sorted_rows(table)
        for name in ("late", "rejected"):
            assert _sorted_rows(other.side_outputs[name]) == _sorted_rows(
                result.side_outputs[name])


# --- CSV --------------------------------------------------------------------------------

CSV_HEADER = "account_id,txn_id,ts,amount,lat,lon,name"
CSV_SCHEMA = pa.schema({"account_id": pa.int64(), "txn_id": pa.int64(), "ts": pa.int64(),
                        "amount": pa.float64(), "lat": pa.float64(), "lon": pa.float64()})
names = st.text(st.characters(blacklist_characters=',"\r\n', blacklist_categories=["Cs"]),
                max_size=12)
#: What happens to a line: kept, a field lost, a field too many, a word in a number column.
MUTATIONS = ["ok", "ok", "ok", "drop", "extra", "word"]


@st.composite
def csv_cases(draw):
    n = draw(st.integers(0, 30))
    lines, kinds = [], []
    for i in range(n):
        fields = [str(draw(st.sampled_from([1, 2, 3, 4]))), str(i),
                  str(draw(st.integers(0, 120_000))),
                  draw(st.sampled_from(["12.5", "0", "nan", "", "inf", "-3", "1e308"])),
                  draw(st.sampled_from(["40.7", "", "nan", "95", "-33.9"])),
                  draw(st.sampled_from(["-74.0", "", "inf", "151.2"])),
                  draw(names)]
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "drop":
            del fields[draw(st.integers(0, len(fields) - 1))]
        elif kind == "extra":
            fields.append("surplus")
        elif kind == "word":
            fields[draw(st.sampled_from([0, 2]))] = "twelve"
        lines.append(",".join(fields))
        kinds.append(kind)
    return lines, kinds


def _write(scratch: Path, text: str | bytes) -> Path:
    path = scratch / f"{uuid.uuid4().hex}.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@explore(80)
@given(case=csv_cases(), declared=st.booleans(), batch_size=st.sampled_from([1, 5, 1000]))
def test_malformed_csv_lines(case, declared, batch_size, scratch):
    lines, kinds = case
    path = _write(scratch, "\n".join([CSV_HEADER, *lines]) + "\n")
    stream = sl.Stream.from_csv(path, schema=CSV_SCHEMA if declared else None,
                                batch_size=batch_size, bad_lines="side_output")
    well_formed = [i for i, k in enumerate(kinds) if k in ("ok", "word")]
    words = [i for i in well_formed if kinds[i] == "word"]
    try:
        result = stream.run()
    except Exception as exc:
        assert declared and words, f"no reason to fail: {exc}"
        assert_actionable(exc, str(path))
        text = str(exc)
        assert "account_id" in text or "'ts'" in text, text
        assert any(f"line {i + 2}" in text for i in words), text
        return
    assert not (declared and words), "a word in a declared number column was accepted"
    check_result(result)
    assert result.table["txn_id"].cast(pa.string()).to_pylist() == [str(i) for i in well_formed]
    malformed = result.side_outputs.get("malformed")
    bad = [i for i, k in enumerate(kinds) if k in ("drop", "extra")]
    got = malformed.to_pylist() if malformed is not None else []
    assert [r["line"] for r in got] == [i + 2 for i in bad]
    assert [r["text"] for r in got] == [lines[i] for i in bad]
    assert all(r["file"] == str(path) for r in got)
    if not declared:
        return
    # The same file through each pattern: accounting holds, malformed lines stay aside.
    accounts = sl.Table(pa.table({"account_id": [1, 2, None], "tier": ["gold", "é", "x"]}),
                        key="account_id")
    jobs = [
        stream.enrich(accounts, on="account_id", unmatched="side_output"),
        detect_fraud(stream, FraudRules()),
        stream.with_watermark("ts", unit="ms", max_out_of_orderness="1s")
        .window(sl.tumbling("10s")).group_by("name").agg(n=sl.count(), total=sl.sum("amount")),
    ]
    for job in jobs:
        run = check_result(job.run())
        side = run.side_outputs.get("malformed")
        assert (side.num_rows if side is not None else 0) == len(bad)


#: Badly quoted or encoded CSV: what each gives now. The rows are those Python's csv module
#: reads (or, for bytes that are not UTF-8, the bytes); an error names the line the row
#: starts on; "malformed": the lines that go to that side output with bad_lines="side_output".
BADLY_QUOTED = {
    "a quote never closed, in the last column": (
        'a,b\n1,"x\n2,y\n3,z\n', "line 2: a quote opened in this row is never closed", None),
    "quotes inside fields": ('a,b\n1,x"y\n2,"y"z\n3,z\n', None, []),
    "a quote opening a number field, never closed": (
        'a,b\n"1,x\n2,y\n', "line 2: .*Expected 2 columns, got 1.*never closed", [2]),
    "a quote open at the end of the file": (
        'a,b\n1,x\n2,"unterminated\n', "line 3: a quote opened in this row is never closed",
        None),
    "CRLF, one short line": ("a,b\r\n1,x\r\n2\r\n3,z\r\n", "line 3: .*Expected 2 columns",
                             [3]),
    "a NUL byte, invalid UTF-8": ("a,b\n1,x\x00y\n2,\xff\n", None, []),
}


@pytest.mark.parametrize("case", list(BADLY_QUOTED))
@pytest.mark.parametrize("bad_lines", ["raise", "side_output"])
def test_badly_quoted_csv(case, bad_lines, scratch):
    text, error, malformed = BADLY_QUOTED[case]
    data = text.encode("latin-1") if "\xff" in text else text.encode()
    path = _write(scratch, data)
    stream = sl.Stream.from_csv(path, bad_lines=bad_lines)
    if malformed is None or (bad_lines == "raise" and malformed):
        assert_refused(stream.run, CsvParseError, f"(?s){re.escape(str(path))}: {error}",
                       str(path))
        return
    result = check_result(stream.run())
    lines = text.replace("\r\n", "\n").split("\n")
    good = [row for i, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1)
            if i > 1 and i not in malformed]
    if "\xff" in text:  # not UTF-8: the column is binary, its values the file's bytes
        good = [[a, b.encode("latin-1")] for a, b in good]
    assert [[str(r["a"]), r["b"]] for r in result.table.to_pylist()] == good
    side = result.side_outputs.get("malformed")
    got = side.select(["line", "text"]).to_pylist() if side is not None else []
    expected = [{"line": n, "text": lines[n - 1]} for n in malformed]
    if case.startswith("a quote opening"):  # the open quote runs to the end of the file
        expected = [{"line": 2, "text": '"1,x\n2,y'}]
    assert got == expected


# --- errors that name what to fix ---------------------------------------------------------

_T = pa.table({"sk": [1, 2], "amt": [1.0, 2.0]})
_REF = pa.table({"rk": [1, 2], "tier": ["a", "b"]})
_EVENTS = pa.table({"t": pa.array([0, 5], pa.timestamp("s")), "k": ["a", "b"],
                    "v": [1.0, 2.0], "s": ["x", "y"], "i": [1, 2]})
_TXNS = pa.table({"account_id": [1, 2], "txn_id": [1, 2],
                  "ts": pa.array([0, 5], pa.timestamp("ms")), "amount": [1.0, 2.0],
                  "lat": [0.0, 1.0], "lon": [0.0, 1.0]})


def _events(**columns):
    table = _EVENTS
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return sl.Stream.from_table(table)


def _txns(drop=(), **columns):
    table = _TXNS.drop_columns(list(drop))
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return detect_fraud(sl.Stream.from_table(table), FraudRules())


ERROR_CASES = {
    # enrichment
    "stream key missing": (lambda: sl.Stream.from_table(_T.drop_columns(["sk"])).enrich(
        sl.Table(_REF, key="rk"), on={"sk": "rk"}), "sk"),
    "reference key missing": (lambda: sl.Table(_REF, key="nope"), "nope"),
    "reference column missing": (lambda: sl.Stream.from_table(_T).enrich(
        sl.Table(_REF, key="rk"), on={"sk": "rk"}, columns=["nope"]), "nope"),
    "string key vs int reference": (lambda: sl.Stream.from_table(
        _T.set_column(0, "sk", pa.array(["1", "2"]))).enrich(
        sl.Table(_REF, key="rk"), on={"sk": "rk"}), "sk"),
    "float key vs int reference": (lambda: sl.Stream.from_table(
        _T.set_column(0, "sk", pa.array([1.0, 2.0]))).enrich(
        sl.Table(_REF, key="rk"), on={"sk": "rk"}), "sk"),
    "all-null key column": (lambda: sl.Stream.from_table(
        _T.set_column(0, "sk", pa.nulls(2))).enrich(
        sl.Table(_REF, key="rk"), on={"sk": "rk"}), "sk"),
    "timestamp keys of different units": (lambda: sl.Stream.from_table(
        _T.set_column(0, "sk", pa.array([1, 2], pa.timestamp("s")))).enrich(
        sl.Table(_REF.set_column(0, "rk", pa.array([1, 2], pa.timestamp("ms"))), key="rk"),
        on={"sk": "rk"}), "sk"),
    "duplicate reference keys": (lambda: sl.Table(
        pa.table({"rk": [1, 1, None, None], "v": [1, 2, 3, 4]}), key="rk"), "rk"),
    # fraud
    "fraud without lat": (lambda: _txns(drop=["lat"]), "lat"),
    "fraud without account": (lambda: _txns(drop=["account_id"]), "account_id"),
    "fraud float times": (lambda: _txns(ts=pa.array([0.0, 5.0])), "ts"),
    "fraud float account ids": (lambda: _txns(account_id=pa.array([1.5, 2.5])).run(),
                                "account_id"),
    "fraud bool account ids": (lambda: _txns(account_id=pa.array([True, False])).run(),
                               "account_id"),
    # windows
    "time column missing": (lambda: _events().with_watermark("nope"), "nope"),
    "int time without unit": (lambda: _events(t=pa.array([0, 5])).with_watermark("t"), "t"),
    "int time with a bad unit": (
        lambda: _events(t=pa.array([0, 5])).with_watermark("t", unit="min"), "t"),
    "float time": (lambda: _events(t=pa.array([0.0, 5.0])).with_watermark("t", unit="s"), "t"),
    "string time": (lambda: _events(t=pa.array(["0", "5"])).with_watermark("t", unit="s"), "t"),
    "date time": (lambda: _events(t=pa.array([0, 5], pa.date32())).with_watermark("t"), "t"),
    "group key missing": (lambda: _events().with_watermark("t").window(sl.tumbling("1min"))
                          .group_by("nope").agg(n=sl.count()), "nope"),
    "aggregate column missing": (lambda: _events().with_watermark("t")
                                 .window(sl.tumbling("1min")).agg(x=sl.sum("nope")), "nope"),
    "sum of strings": (lambda: _events().with_watermark("t").window(sl.tumbling("1min"))
                       .agg(x=sl.sum("s")), "s"),
    "mean of decimals": (lambda: _events(v=pa.array([1, 2], pa.decimal128(5, 1)))
                         .with_watermark("t").window(sl.tumbling("1min")).agg(x=sl.mean("v")),
                         "v"),
    "top_n by a missing column": (lambda: _events().with_watermark("t")
                                  .window(sl.tumbling("1min")).agg(n=sl.count())
                                  .top_n(2, by="nope"), "nope"),
    "bad duration": (lambda: _events().with_watermark("t", max_out_of_orderness="soon"), "soon"),
    "negative duration": (lambda: _events().with_watermark("t", allowed_lateness="-5s"), "-5s"),
    "session gap below the time unit": (lambda: _events().with_watermark("t").window(
        sl.session("10ms")).agg(n=sl.count()), "t"),
    # sources
    "batch of another type": (lambda: sl.Stream.from_batches(
        [pa.record_batch({"a": pa.array([1], pa.int32())})],
        pa.schema({"a": pa.int64()})).run(), "a"),
    "batch missing a column": (lambda: sl.Stream.from_batches(
        [pa.record_batch({"a": [1]})], pa.schema({"a": pa.int64(), "b": pa.string()})).run(),
        "b"),
    "batch with dictionary strings": (lambda: sl.Stream.from_batches(
        [pa.record_batch({"b": pa.array(["x"]).dictionary_encode()})],
        pa.schema({"b": pa.string()})).run(), "b"),
    "parquet file missing": (lambda: sl.Stream.from_parquet("/nonexistent/x.parquet"),
                             "/nonexistent/x.parquet"),
    "csv file missing": (lambda: sl.Stream.from_csv("/nonexistent/x.csv"), "/nonexistent/x.csv"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_name_what_to_fix(case):
    build, name = ERROR_CASES[case]
    with pytest.raises(Exception) as info:
        built = build()
        if isinstance(built, sl.Stream):
            built.run()
    assert_actionable(info.value, name)


@pytest.mark.parametrize("text,schema,names", [
    ("a,b\n1,x\n2,y\nthree,z\n", {"a": pa.int64()}, ["line 4", "'a'"]),
    ("a,b\n1,x\n99999999999999999999,y\n", {"a": pa.int64()}, ["line 3", "'a'"]),
    ("t,v\n2024-01-01T00:00:00,1\nnot a time,2\n", {"t": pa.timestamp("s")}, ["line 3", "'t'"]),
    ("a,b\n1,x\n\n2\n", None, ["line 4"]),  # (pyarrow says Row #3: it skips blank lines)
    ("a,b\n1,x\n", {"c": pa.int64()}, ["'c'"]),
])
def test_csv_errors_name_file_line_and_column(text, schema, names, scratch):
    path = _write(scratch, text)
    with pytest.raises(Exception) as info:
        sl.Stream.from_csv(path, schema=pa.schema(schema) if schema else None).run()
    assert_actionable(info.value, str(path))
    for name in names:
        assert name in str(info.value)


# --- the same bad input on Dask ---------------------------------------------------------

@pytest.fixture(scope="module")
def dask_runner():
    pytest.importorskip("distributed")
    with sl.DaskRunner(n_workers=2, threads_per_worker=1) as runner:
        yield runner


def _bad_events(n: int = 240) -> pa.Table:
    """Out-of-order times with nulls and an out-of-range clock; null, unicode and huge keys;
    NaN, inf and null values."""
    times = [None if i % 17 == 0 else 2**63 - 1 if i % 29 == 0 else (i * 7919) % 600
             for i in range(n)]
    keys = [["é", None, "", "zz", "x" * 5000][i % 5] for i in range(n)]
    return pa.table({"k": keys, "t": pa.array(times, pa.timestamp("s")),
                     "v": [[1.0, math.nan, math.inf, None, -1.0][i % 5] for i in range(n)]})


def _bad_transactions(n: int = 240) -> pa.Table:
    return pa.table({
        "account_id": pa.array([[1, None, 2, 1, -(2**63)][i % 5] for i in range(n)]),
        "txn_id": pa.array(range(n)),
        "ts": pa.array([None if i % 13 == 0 else (i * 7919) % 1000 * 1000 for i in range(n)],
                       pa.timestamp("ms")),
        "amount": [[10.0, math.nan, math.inf, None, 5.0, 1e6][i % 6] for i in range(n)],
        "lat": [[0.0, 95.0, math.nan, 1.0, 2.0, 60.0][i % 6] for i in range(n)],
        "lon": [[0.0, 10.0, 1.0][i % 3] for i in range(n)]})


def _dask_jobs(scratch: Path) -> dict[str, sl.Stream]:
    events = sl.Stream.from_table(_bad_events(), batch_size=7)
    reference = sl.Table(pa.table({"k": ["é", "x" * 5000, ""], "tier": [1, 2, 3]}), key="k")
    timed = events.with_watermark("t", max_out_of_orderness="1min", allowed_lateness="2min")
    path = _write(scratch, "a,b\n1,x\n2\n3,y,z\n4,w\n")
    return {
        "enrich": events.enrich(reference, on="k", unmatched="side_output"),
        "fraud": detect_fraud(sl.Stream.from_table(_bad_transactions(), batch_size=9)),
        "tumbling": timed.window(sl.tumbling("1min")).group_by("k")
        .agg(n=sl.count(), s=sl.sum("v"), q=sl.quantile("v", 0.5)),
        "hopping": timed.window(sl.hopping("2min", "1min")).group_by("k")
        .agg(n=sl.count(), lo=sl.min("v"), p=sl.approx_quantile("v", 0.5)),
        "session": events.with_watermark("t", max_out_of_orderness="1min")
        .window(sl.session("30s")).group_by("k").agg(n=sl.count()),
        "top_n": events.with_watermark("t", max_out_of_orderness="1min")
        .window(sl.tumbling("1min")).group_by("k").agg(n=sl.count()).top_n(2, by="n"),
        "csv": sl.Stream.from_csv(path, bad_lines="side_output"),
    }


def test_dask_runner_agrees_on_bad_input(dask_runner, scratch):
    for name, job in _dask_jobs(scratch).items():
        local, remote = check_result(job.run()), check_result(job.run(dask_runner))
        timing = [c for c in ("detection_latency_ms",) if c in local.table.column_names]
        sl.assert_same_results(remote.table.drop_columns(timing),
                               local.table.drop_columns(timing))
        assert remote.side_outputs.keys() == local.side_outputs.keys(), name
        for side, table in local.side_outputs.items():
            assert _sorted_rows(remote.side_outputs[side]) == _sorted_rows(table), (name, side)


# --- empty, null-only and one-row inputs through every pattern ------------------------------

@pytest.mark.parametrize("rows", [0, 1])
@pytest.mark.parametrize("pattern", ["enrich", "fraud", "tumbling", "hopping", "session"])
def test_empty_and_single_row_inputs(pattern, rows, scratch):
    table = _TXNS.slice(0, rows)
    streams = [sl.Stream.from_table(table),
               sl.Stream.from_batches([_one_batch(table).slice(0, 0), _one_batch(table)],
                                      table.schema),
               make_stream(table, "parquet", 10, [], scratch)]
    for stream in streams:
        if pattern == "enrich":
            job = stream.enrich(sl.Table(pa.table({"account_id": pa.array([], pa.int64())}),
                                         key="account_id"), unmatched="side_output")
        elif pattern == "fraud":
            job = detect_fraud(stream, FraudRules())
        else:
            window = {"tumbling": sl.tumbling("1min"), "hopping": sl.hopping("1min", "30s"),
                      "session": sl.session("1min")}[pattern]
            job = (stream.with_watermark("ts").window(window).group_by("account_id")
                   .agg(n=sl.count(), p=sl.quantile("amount", 0.5)))
        result = check_result(job.run())
        produced = result.table.num_rows + sum(t.num_rows for t in
                                               result.side_outputs.values())
        assert (produced > 0) == (rows > 0) or pattern == "fraud"


def test_all_null_columns_through_every_pattern():
    n = 5
    table = pa.table({"account_id": pa.array([None] * n, pa.int64()),
                      "txn_id": pa.array(range(n)),
                      "ts": pa.array([None] * n, pa.timestamp("ms")),
                      "amount": pa.array([None] * n, pa.float64()),
                      "lat": pa.array([None] * n, pa.float64()),
                      "lon": pa.array([None] * n, pa.float64())})
    ref = sl.Table(pa.table({"account_id": [1, 2], "tier": ["a", "b"]}), key="account_id")
    enriched = check_result(sl.Stream.from_table(table, batch_size=2).enrich(
        ref, unmatched="side_output").run())
    assert set(enriched.side_outputs["unmatched"]["reason"].to_pylist()) == {"null key"}
    fraud = check_result(detect_fraud(sl.Stream.from_table(table, batch_size=2)).run())
    assert fraud.side_outputs["null_key"].num_rows == n
    windows = check_result(sl.Stream.from_table(table, batch_size=2).with_watermark("ts")
                           .window(sl.tumbling("1min")).group_by("account_id")
                           .agg(n=sl.count(), m=sl.mean("amount")).run())
    assert windows.side_outputs["rejected"].num_rows == n


# --- bugs this suite found, one minimal case each: what happens now, pinned -------------

def _fraud_table(account_ids, **columns) -> pa.Table:
    n = len(account_ids)
    table = pa.table({"account_id": account_ids, "txn_id": pa.array(range(n)),
                      "ts": pa.array([i * 1_000 for i in range(n)], pa.timestamp("ms")),
                      "amount": [10.0] * n,
                      "lat": [0.0, 50.0] * (n // 2) + [0.0] * (n % 2),
                      "lon": [0.0, 50.0] * (n // 2) + [0.0] * (n % 2)})
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


# Alerts used to cast the key to int64: string ids raised a raw ArrowInvalid at the first alert.
@pytest.mark.parametrize("ids", [pa.array(["a", "a"]), pa.array(["a", "a"], pa.large_string()),
                                 pa.array(["a", "a"]).dictionary_encode()],
                         ids=["string", "large_string", "dictionary"])
def test_fraud_string_account_ids_with_an_alert(ids):
    result = check_result(detect_fraud(sl.Stream.from_table(_fraud_table(ids))).run())
    assert result.table["account_id"].to_pylist() == ["a"]  # the geo alert


# String amounts/coordinates used to pass the plan and fail per batch with a raw ArrowInvalid.
@pytest.mark.parametrize("column", ["amount", "lat", "lon"])
def test_fraud_non_numeric_strings_are_refused_naming_the_column(column):
    table = _fraud_table(pa.array([1, 1]), **{column: pa.array(["12.5", "abc"])})
    assert_refused(lambda: detect_fraud(sl.Stream.from_table(table)).run(), TypeError,
                   rf"'{column}' must be numeric .* it is string; convert it first", column)


@pytest.mark.parametrize("state", ["memory", "rocksdict"])
def test_fraud_uint64_account_ids_above_int64(state, scratch):
    # They used to raise a raw ArrowInvalid (the keyed state cast keys to int64).
    ids = [2**64 - 1, 2**63, 1, 2**64 - 1, 2**63, 1]
    table = _fraud_table(pa.array(ids, pa.uint64()))
    small = _fraud_table(pa.array([3, 2, 1, 3, 2, 1], pa.uint64()))
    path = str(scratch / "state")
    result = check_result(detect_fraud(sl.Stream.from_table(table), state=state,
                                       state_path=path).run())
    expected = check_result(detect_fraud(sl.Stream.from_table(small)).run())
    back = {3: 2**64 - 1, 2: 2**63, 1: 1}
    assert result.table["account_id"].type == pa.uint64()
    assert result.table["account_id"].to_pylist() == [
        back[k] for k in expected.table["account_id"].to_pylist()]
    assert result.table.drop_columns(["account_id", "detection_latency_ms"]).equals(
        expected.table.drop_columns(["account_id", "detection_latency_ms"]))
    for keyed in result.keyed_state.values():
        keyed.close()


@pytest.mark.parametrize("poison", [math.inf, -math.inf])
def test_fraud_infinite_amount_does_not_disable_the_amount_rule(poison):
    amounts = [9.0, 11.0] * 6 + [poison, 1e6]
    n = len(amounts)
    table = pa.table({"account_id": [1] * n, "txn_id": pa.array(range(n)),
                      "ts": pa.array([i * 3_600_000 for i in range(n)], pa.timestamp("ms")),
                      "amount": amounts, "lat": [10.0] * n, "lon": [10.0] * n})
    result = check_result(detect_fraud(sl.Stream.from_table(table)).run())
    alerts = set(zip(result.table["txn_id"].to_pylist(), result.table["rule"].to_pylist(),
                     strict=True))
    assert (n - 1, "amount") in alerts


def _window_run(table, window=None, aggs=None, **watermark):
    return (sl.Stream.from_table(table).with_watermark("t", **watermark)
            .window(window or sl.tumbling("1min"))
            .agg(**(aggs or {"n": sl.count()})).run())


@pytest.mark.parametrize("window", [sl.tumbling("1min"), sl.session("1min")])
def test_window_min_of_strings_is_refused(window):
    table = _EVENTS.set_column(2, "v", pa.array(["x", "y"]))
    assert_refused(lambda: _window_run(table, window, {"lo": sl.min("v")}), PlanError,
                   r"min\('v'\) needs a numeric, boolean or time column, 'v' is string", "'v'")


def test_window_uint64_values_above_int64():
    # uint64 columns were cast to int64: a value above 2**63-1 raised a raw ArrowInvalid.
    table = _EVENTS.set_column(2, "v", pa.array([2**64 - 1, 1], pa.uint64()))
    result = check_result(_window_run(table, aggs={"hi": sl.max("v"), "lo": sl.min("v")}))
    assert result.table.select(["hi", "lo"]).to_pylist() == [{"hi": 2**64 - 1, "lo": 1}]
    assert result.table.schema.field("hi").type == pa.uint64()
    # Their sum (2**64) passes uint64: the mean is refused like an int64 one, naming 'v'.
    with pytest.raises(OverflowError, match="'v'"):
        _window_run(table, aggs={"m": sl.mean("v")})
    table = _EVENTS.set_column(2, "v", pa.array([2**63, 2**62], pa.uint64()))
    result = check_result(_window_run(table, aggs={"m": sl.mean("v")}))
    assert result.table["m"].to_pylist() == [(2**63 + 2**62) / 2]
    # The sum's result is int64 (for every integer column): 3 * 2**62 is refused, naming 'v'.
    with pytest.raises(OverflowError, match="'v'"):
        _window_run(table, aggs={"s": sl.sum("v")})


def test_window_list_group_key_is_refused():
    table = _EVENTS.set_column(1, "k", pa.array([[1], [2]]))
    assert_refused(lambda: sl.Stream.from_table(table).with_watermark("t").window(
        sl.tumbling("1min")).group_by("k").agg(n=sl.count()).run(), PlanError,
        r"group key 'k' is list<item: int64>: keys must be scalars", "'k'")


#: Windows below the event time's unit (seconds here), or of no length: the error each gives.
TOO_SMALL = {
    "tumbling 10ms on seconds": (lambda: sl.tumbling("10ms"), PlanError,
                                 r"window size tumbling\('10ms'\) is below one s, the unit of 't'"),
    "tumbling 0s": (lambda: sl.tumbling("0s"), ValueError,
                    "a window size must be positive, got '0s'"),
    "hopping 1s/10ms on seconds": (lambda: sl.hopping("1s", "10ms"), PlanError,
                                   r"window slide hopping\('1s', '10ms'\) is below one s"),
    "hopping 1s/0s": (lambda: sl.hopping("1s", "0s"), ValueError,
                      "a window slide must be positive, got '0s'"),
}


@pytest.mark.parametrize("window", list(TOO_SMALL))
def test_window_size_below_the_time_unit_is_refused(window):
    spec, error, message = TOO_SMALL[window]
    assert_refused(lambda: _window_run(_EVENTS, spec()), error, message, "'t'", "0s", "10ms")


def test_window_integer_sum_overflow_is_refused():
    # It used to wrap around silently: -2**63 for the sum, -4.6e18 for the mean.
    table = _EVENTS.set_column(2, "v", pa.array([2**63 - 1, 1]))
    assert_refused(lambda: _window_run(table, aggs={"s": sl.sum("v"), "m": sl.mean("v")}),
                   OverflowError, r"the sum of integer column 'v' in one group passes the "
                   r"int64 range; cast the column to float64", "'v'")


@pytest.mark.parametrize("times", [[2**63 - 1], [2**63 - 1, 0], [-(2**63) + 1, 0]],
                         ids=["max alone", "max then zero", "min then zero"])
def test_window_event_times_at_int64_limits(times):
    table = pa.table({"t": pa.array(times, pa.int64()), "v": [1.0] * len(times)})
    result = check_result(_window_run(table, unit="s", max_out_of_orderness="10s"))
    emitted = sum(result.table["n"].to_pylist())
    assert emitted + result.side_outputs["rejected"].num_rows == len(times)
    assert result.side_outputs["late"].num_rows == 0


def test_late_rows_have_a_reason():
    table = pa.table({"t": pa.array([0, 120, 5], pa.timestamp("s")), "v": [1.0, 2.0, 3.0]})
    late = _window_run(table).side_outputs["late"]
    assert late.num_rows == 1
    assert "reason" in late.column_names and late["reason"][0].as_py()


def test_csv_file_with_only_malformed_lines(scratch):
    path = _write(scratch, "a,b\n1\n2,x,y\n")
    result = check_result(sl.Stream.from_csv(path, bad_lines="side_output").run())
    assert result.side_outputs["malformed"]["line"].to_pylist() == [2, 3]


def test_csv_source_counts_malformed_lines_as_side_output(scratch):
    path = _write(scratch, "a,b\n1,x\n2\n3,z\n")
    result = check_result(sl.Stream.from_csv(path, bad_lines="side_output").run())
    source = result.operator_metrics[0]
    assert (source.rows_in, source.rows_out, source.rows_side_output) == (3, 2, 1)


# CSV 'line' numbers were pyarrow's row numbers, which skip blank lines and count a row with
# a quoted newline once: errors and the 'malformed' side output said line 3 or 4, not 5.
@pytest.mark.parametrize("text,schema", [
    ("a,b\n1,x\n\n\n2\n3,y\n", None),
    ('a,b\n1,"x\ny"\n\n2\n3,y\n', None),
], ids=["malformed after blank lines", "malformed after a quoted newline"])
def test_csv_line_numbers_count_blank_lines_and_quoted_newlines(text, schema, scratch):
    path = _write(scratch, text)
    result = check_result(sl.Stream.from_csv(path, bad_lines="side_output").run())
    assert result.side_outputs["malformed"].select(["line", "text"]).to_pylist() == [
        {"line": 5, "text": "2"}]


def test_csv_conversion_error_after_blank_lines_names_the_file_line(scratch):
    path = _write(scratch, "a,b\n1,x\n\n\nthree,y\n")
    assert_refused(sl.Stream.from_csv(path, schema=pa.schema({"a": pa.int64()}),
                                      bad_lines="side_output").run,
                   CsvParseError, r"line 5, column 'a': .*invalid value 'three'", str(path))


@pytest.mark.parametrize("data", [b"", b"PAR1\x00\x00\x15\x04garbage"],
                         ids=["empty", "binary"])
def test_csv_empty_or_binary_file_is_refused(data, scratch):
    path = _write(scratch, data)
    assert_refused(lambda: sl.Stream.from_csv(path).run(), CsvParseError,
                   "no CSV header could be read .*; is the file empty, or not CSV", str(path))


def test_parquet_corrupt_file_is_refused(scratch):
    path = _write(scratch, b"PAR1 not really parquet")
    assert_refused(lambda: sl.Stream.from_parquet(path).run(), ParquetReadError,
                   "not a readable Parquet file or directory", str(path))


def test_batches_differing_only_in_nullability_are_taken():
    # A batch differing only in nullability raised an error naming no column. Batches from
    # other tools often differ so: they are taken under the stream's schema, unless a field
    # the stream declares not null holds nulls (an error naming it).
    nullable = pa.schema({"a": pa.int64()})
    required = pa.schema([pa.field("a", pa.int64(), nullable=False)])
    strict = pa.RecordBatch.from_arrays([pa.array([1])], schema=required)
    loose = pa.RecordBatch.from_arrays([pa.array([2])], schema=nullable)
    result = check_result(sl.Stream.from_batches([strict, loose], nullable).run())
    assert result.table.schema == nullable and result.table["a"].to_pylist() == [1, 2]
    result = check_result(sl.Stream.from_batches([strict, loose], required).run())
    assert result.table.schema == required and result.table["a"].to_pylist() == [1, 2]
    with_null = pa.RecordBatch.from_arrays([pa.array([3, None])], schema=nullable)
    with pytest.raises(Exception) as info:
        sl.Stream.from_batches([strict, with_null], required).run()
    assert_actionable(info.value, "'a'")
    assert "batch 1" in str(info.value) and "null" in str(info.value)


# A mixed-type object column raised a raw ArrowInvalid (or ArrowTypeError) from
# pa.Table.from_pandas; now a sabot_lab error naming the column and the fix.
@pytest.mark.parametrize("values", [[1, "x"], ["x", 1], [1.5, "x"], [[1], 2]],
                         ids=["int then str", "str then int", "float then str", "list then int"])
@pytest.mark.parametrize("build", ["stream", "reference"])
def test_pandas_mixed_object_column(build, values):
    frame = pd.DataFrame({"k": [1, 2], "a": values})
    with pytest.raises(sl.reference.ColumnConversionError) as info:
        if build == "stream":
            sl.Stream.from_pandas(frame).run()
        else:
            sl.Table(frame, key="k")
    assert_actionable(info.value, "'a'")
    assert "astype(str)" in str(info.value)


# Signed and unsigned keys out of each other's range raised a raw ArrowInvalid (index_in);
# a value the other side's type cannot hold simply matches nothing. (The dense int64
# reference read uint64 stream keys as int64: 2**64-1 matched -1.)
@pytest.mark.parametrize("stream_keys,ref_keys", [
    (pa.array([1, -1, None], pa.int64()), pa.array([1, 2**64 - 1], pa.uint64())),
    (pa.array([1, 2**64 - 1, None], pa.uint64()), pa.array([1, -5, 2**62], pa.int64())),
    (pa.array([1, 2**64 - 1, None], pa.uint64()), pa.array([1, -1, 2], pa.int64())),
    (pa.array([1, 2**64 - 1, None], pa.uint64()).dictionary_encode(),
     pa.array([1, -1, 2], pa.int64())),
], ids=["int64 stream, uint64 reference", "uint64 stream, int64 reference",
        "uint64 stream, dense int64 reference", "uint64 dictionary stream, int64 reference"])
@pytest.mark.parametrize("unique", [True, False])
def test_enrich_mixed_signedness_keys(stream_keys, ref_keys, unique):
    ref = sl.Table(pa.table({"rk": ref_keys, "v": range(len(ref_keys))}), key="rk",
                   unique=unique)
    stream = sl.Stream.from_table(pa.table({"sk": stream_keys}))
    for optimize in (True, False):
        result = check_result(stream.enrich(ref, on={"sk": "rk"}, unmatched="side_output")
                              .run(optimize=optimize))
        assert result.table.select(["sk", "v"]).to_pylist() == [{"sk": 1, "v": 0}]
        side = result.side_outputs["unmatched"]
        assert side["reason"].to_pylist() == ["no matching reference key", "null key"]
        enrich = next(m for m in result.operator_metrics if m.label.startswith("Enrich"))
        assert (enrich.unmatched, enrich.null_keys) == (2, 1)
    flagged = sl.Stream.from_table(pa.table({"sk": stream_keys, "ok": [True] * 3}))
    filtered = flagged.filter(sl.col("ok")).enrich(ref, on={"sk": "rk"})  # filter + lookup
    assert check_result(filtered.run()).table["v"].to_pylist() == [0]


@pytest.mark.parametrize("ref_keys", [pa.array([], pa.int64()), pa.array([None], pa.int64())],
                         ids=["empty", "null keys only"])
@pytest.mark.parametrize("how", ["inner", "left"])
def test_enrich_one_to_many_without_keys(ref_keys, how):
    ref = sl.Table(pa.table({"rk": ref_keys, "v": pa.array([1] * len(ref_keys))}), key="rk",
                   unique=False)
    stream = sl.Stream.from_table(pa.table({"sk": [1, None]}))
    result = check_result(stream.enrich(ref, on={"sk": "rk"}, how=how).run())
    assert result.table.num_rows == (2 if how == "left" else 0)


def test_session_approx_quantile_of_a_null_only_session_is_null():
    # A closed session's sketch slot was reused without being emptied: 5.0 with batch_size=1.
    table = pa.table({"t": pa.array([0, 100, 200], pa.timestamp("s")),
                      "v": pa.array([5.0, None, None], pa.float64())})
    for batch_size in (1, 3):
        result = check_result(
            sl.Stream.from_table(table, batch_size=batch_size).with_watermark("t")
            .window(sl.session("5s")).agg(n=sl.count(), p90=sl.approx_quantile("v", 0.9))
            .run())
        assert result.table["p90"].to_pylist() == [5.0, None, None], batch_size


def test_enrich_one_to_many_nan_keys_match_every_nan_row():
    # One-to-many grouped NaN keys apart (NaN != NaN): a stream NaN matched one of two rows.
    # A unique reference matches NaN to NaN, so one-to-many matches every NaN row.
    ref = sl.Table(pa.table({"rk": [math.nan, 1.0, math.nan], "v": [1, 2, 3]}), key="rk",
                   unique=False)
    result = check_result(sl.Stream.from_table(pa.table({"sk": [math.nan, 1.0]})).enrich(
        ref, on={"sk": "rk"}).run())
    assert result.table["v"].to_pylist() == [1, 3, 2]
    unique = sl.Table(pa.table({"rk": [math.nan, 1.0], "v": [1, 2]}), key="rk")
    result = check_result(sl.Stream.from_table(pa.table({"sk": [math.nan, 1.0]})).enrich(
        unique, on={"sk": "rk"}).run())
    assert result.table["v"].to_pylist() == [1, 2]


# Exact quantiles used to be null next to an infinity ((hi - lo) * fraction: inf * 0 = NaN);
# the expected values are DuckDB's quantile_cont.
@pytest.mark.parametrize("values,q,expected", [
    ([1.0, math.inf], 0.0, 1.0), ([1.0, math.inf], 1.0, math.inf),
    ([math.inf, math.inf], 0.5, math.inf), ([-math.inf, 2.0, 3.0], 0.0, -math.inf),
])
def test_window_exact_quantile_with_infinities(values, q, expected):
    table = pa.table({"t": pa.array([0] * len(values), pa.timestamp("s")), "v": values})
    result = check_result(_window_run(table, aggs={"p": sl.quantile("v", q)}))
    assert result.table["p"].to_pylist() == [expected]


def test_session_window_applies_the_pushed_key_filter():
    table = pa.table({"t": pa.array([0, 1, 2], pa.timestamp("s")), "k": ["a", None, "b"]})
    job = (sl.Stream.from_table(table).with_watermark("t").window(sl.session("5s"))
           .group_by("k").agg(n=sl.count()).filter(sl.col("k") != "a"))
    optimized, plain = check_result(job.run()), check_result(job.run(optimize=False))
    assert plain.table["k"].to_pylist() == ["b"]
    assert optimized.table["k"].to_pylist() == ["b"]
