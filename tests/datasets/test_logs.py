"""Tests of the Apache log parser and sample, checked with Python's re/datetime, pandas, duckdb."""

from __future__ import annotations

import datetime as dt
import re

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot_lab.datasets import apache_log_lines, apache_logs, data_dir, parse_combined_log
from sabot_lab.datasets.logs import LOG_REJECTS_SCHEMA, LOG_SCHEMA

LOG_TYPES = {
    "client": pa.string(),
    "time": pa.timestamp("s", tz="UTC"),
    "method": pa.string(),
    "path": pa.string(),
    "protocol": pa.string(),
    "status": pa.int16(),
    "bytes": pa.int64(),
    "referrer": pa.string(),
    "user_agent": pa.string(),
}

# written independently of the module's pattern: per-line oracle
ORACLE = re.compile(
    r'^(\S+) \S+ \S+ \[([^\]]+)\] "(\S+) (\S+) (\S+)" (\d{3}) (\d+|-) '
    r'"((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$'
)


def python_parse(line: str) -> dict | None:
    """Parse one combined-format line with re + datetime, or None if it does not match."""
    m = ORACLE.match(line)
    if m is None:
        return None
    client, when, method, path, protocol, status, nbytes, referrer, agent = m.groups()
    time = dt.datetime.strptime(when, "%d/%b/%Y:%H:%M:%S %z").astimezone(dt.UTC)
    return {
        "client": client,
        "time": time,
        "method": method,
        "path": path,
        "protocol": protocol,
        "status": int(status),
        "bytes": None if nbytes == "-" else int(nbytes),
        "referrer": referrer,
        "user_agent": agent,
    }


@pytest.fixture(scope="module")
def raw_lines() -> list[str]:
    """The sample file read with plain Python, independently of the module."""
    path = data_dir() / "apache_logs" / "apache_logs"
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def oracle(raw_lines: list[str]) -> list[dict | None]:
    """Every line of the sample parsed with re + datetime (None where it does not match)."""
    return [python_parse(s) for s in raw_lines]


@pytest.fixture(scope="module")
def logs() -> pa.Table:
    return apache_logs()


def line(
    time: str = "17/May/2015:10:05:03 +0000",
    request: str = "GET /index.html HTTP/1.1",
    status: str = "200",
    nbytes: str = "512",
    agent: str = "curl/8.0",
) -> str:
    return f'10.0.0.1 - - [{time}] "{request}" {status} {nbytes} "-" "{agent}"'


# --- the real sample ------------------------------------------------------------------------


def test_schema_and_counts(logs: pa.Table, raw_lines: list[str]) -> None:
    assert len(raw_lines) == 10_000
    assert dict(zip(logs.schema.names, logs.schema.types, strict=True)) == LOG_TYPES
    assert logs.schema.equals(LOG_SCHEMA)
    assert logs.num_rows == 9_999
    assert apache_log_lines().to_pylist() == raw_lines


def test_first_200_lines_match_python_parse(raw_lines: list[str]) -> None:
    sample = raw_lines[:200]
    parsed, rejects = parse_combined_log(sample)
    expected = [python_parse(s) for s in sample]
    assert all(e is not None for e in expected)
    assert rejects.num_rows == 0
    assert parsed.to_pylist() == expected


def test_rejected_lines_match_python_oracle(
    raw_lines: list[str], oracle: list[dict | None]
) -> None:
    parsed, rejects = parse_combined_log(apache_log_lines())
    oracle_bad = [i + 1 for i, row in enumerate(oracle) if row is None]
    assert oracle_bad == [8_899]
    assert rejects.schema.equals(LOG_REJECTS_SCHEMA)
    assert rejects["line_number"].to_pylist() == oracle_bad
    assert rejects["text"].to_pylist() == [raw_lines[8_898]]
    assert rejects["reason"].to_pylist() == ["malformed user_agent"]
    assert raw_lines[8_898].count('"') == 5  # the user agent's closing quote is missing
    assert parsed.num_rows + rejects.num_rows == len(raw_lines)


def test_whole_file_matches_python_parse(logs: pa.Table, oracle: list[dict | None]) -> None:
    expected = [row for row in oracle if row is not None]
    got = logs.to_pydict()
    for name in ("client", "status", "bytes", "path", "user_agent"):
        assert got[name] == [e[name] for e in expected]
    assert got["time"] == [e["time"] for e in expected]


def test_documented_facts_with_duckdb(logs: pa.Table) -> None:
    con = duckdb.connect()
    con.register("logs", logs)
    [(lo, hi, clients, null_bytes)] = con.sql(
        "select min(time), max(time), count(distinct client), count(*) - count(bytes) from logs"
    ).fetchall()
    assert (lo, hi) == (
        dt.datetime(2015, 5, 17, 10, 5, 0, tzinfo=dt.UTC),
        dt.datetime(2015, 5, 20, 21, 5, 59, tzinfo=dt.UTC),
    )
    assert (clients, null_bytes) == (1_753, 669)
    status = dict(con.sql("select status, count(*) from logs group by all").fetchall())
    assert status == {200: 9_125, 304: 445, 404: 213, 301: 164, 206: 45, 500: 3, 403: 2, 416: 2}
    methods = dict(con.sql("select method, count(*) from logs group by all").fetchall())
    assert methods == {"GET": 9_951, "HEAD": 42, "POST": 5, "OPTIONS": 1}


def test_time_order_of_the_sample(logs: pa.Table) -> None:
    t = logs.to_pandas()["time"]
    seconds = (t - t.min()).dt.total_seconds().to_numpy().astype(np.int64)
    assert not t.is_monotonic_increasing
    assert (seconds // 60).tolist() == sorted(seconds // 60)  # sorted by the minute
    step_back = seconds[:-1] - seconds[1:]
    lag = np.maximum.accumulate(seconds)[:-1] - seconds[1:]
    assert (int((step_back > 0).sum()), int((lag > 0).sum())) == (4_915, 9_447)
    assert int(step_back.max()) == int(lag.max()) == 59


# --- the parser -----------------------------------------------------------------------------


def test_malformed_lines_come_back_with_line_numbers() -> None:
    good = line()
    cases = [
        (good, None),
        ("", "empty line"),
        (None, "null line"),
        ("garbage", "malformed ident"),
        (line(time="17/May/2015:10:05:03"), "malformed time"),
        (line(time="17/May/2015:10:05:03 +2500"), "malformed time"),
        (line(time="31/Feb/2015:10:05:03 +0000"), "invalid time"),
        (line(time="17/Foo/2015:10:05:03 +0000"), "invalid time"),
        (line(request="-"), "malformed request"),
        (line(status="2x0"), "malformed status"),
        (line(nbytes="12a"), "malformed bytes"),
        (line().replace('"-"', "-"), "malformed referrer"),
        (line(agent='curl" extra'), "trailing text after user_agent"),
        (line()[:-1], "malformed user_agent"),
        (good + " ", "trailing text after user_agent"),
        (good, None),
    ]
    lines = pa.array([text for text, _ in cases], pa.string())
    parsed, rejects = parse_combined_log(lines)
    assert parsed.num_rows == 2 and parsed["client"].to_pylist() == ["10.0.0.1"] * 2
    bad = [(i + 1, text, reason) for i, (text, reason) in enumerate(cases) if reason]
    assert [tuple(r.values()) for r in rejects.to_pylist()] == bad


def test_input_types() -> None:
    lines = [line(), "bad", line(status="404")]
    expected_parsed, expected_rejects = parse_combined_log(lines)
    assert expected_parsed["status"].to_pylist() == [200, 404]
    for variant in (
        pa.array(lines),
        pa.array(lines, pa.large_string()),
        pa.chunked_array([lines[:1], lines[1:]]),
    ):
        parsed, rejects = parse_combined_log(variant)
        assert parsed.equals(expected_parsed) and rejects.equals(expected_rejects)
    empty_parsed, empty_rejects = parse_combined_log([])
    assert empty_parsed.num_rows == empty_rejects.num_rows == 0
    assert empty_parsed.schema.equals(LOG_SCHEMA)
    with pytest.raises(TypeError):
        parse_combined_log(pa.array([1, 2]))


def test_escaped_quotes_and_dash_bytes_kept() -> None:
    agent = r"Mozilla \"quoted\" agent"
    parsed, rejects = parse_combined_log([line(agent=agent, nbytes="-")])
    assert rejects.num_rows == 0
    assert parsed["user_agent"].to_pylist() == [agent]
    assert parsed["bytes"].to_pylist() == [None]
    assert parsed["referrer"].to_pylist() == ["-"]


@settings(max_examples=60, deadline=None)
@given(
    when=st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2060, 12, 31)),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_time_offsets_property(when: dt.datetime, offset_minutes: int) -> None:
    when = when.replace(microsecond=0)
    sign = "-" if offset_minutes < 0 else "+"
    hh, mm = divmod(abs(offset_minutes), 60)
    text = f"{when:%d/%b/%Y:%H:%M:%S} {sign}{hh:02d}{mm:02d}"
    parsed, rejects = parse_combined_log([line(time=text)])
    assert rejects.num_rows == 0
    expected = dt.datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").astimezone(dt.UTC)
    assert parsed["time"][0].as_py() == expected
