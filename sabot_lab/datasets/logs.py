"""Apache access logs: a vectorized parser for the combined log format and a real sample.

:func:`parse_combined_log` turns raw log lines into a typed :class:`pyarrow.Table` with one
regular expression (:func:`pyarrow.compute.extract_regex`), and returns every line it cannot
parse in a second table with its line number and a reason: nothing is dropped silently.
:func:`apache_logs` loads the 10,000-line sample bundled in ``datasets/apache_logs/`` (the
raw lines are :func:`apache_log_lines`).

Examples
--------
>>> from sabot_lab.datasets.logs import parse_combined_log
>>> line = ('1.2.3.4 - - [17/May/2015:10:05:03 +0200] "GET /a HTTP/1.1" 200 5 "-" "curl/8"')
>>> table, rejects = parse_combined_log([line, "garbage"])
>>> table.num_rows, rejects.num_rows
(1, 1)
>>> table["time"][0].as_py().isoformat()
'2015-05-17T08:05:03+00:00'
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.datasets.public import _data_file

__all__ = [
    "COMBINED_LOG_PATTERN",
    "LOG_REJECTS_SCHEMA",
    "LOG_SCHEMA",
    "apache_log_lines",
    "apache_logs",
    "parse_combined_log",
]

LOG_SCHEMA = pa.schema(
    [
        pa.field("client", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("status", pa.int16(), nullable=False),
        pa.field("bytes", pa.int64()),
        pa.field("referrer", pa.string(), nullable=False),
        pa.field("user_agent", pa.string(), nullable=False),
    ]
)
"""Schema of the parsed lines returned by :func:`parse_combined_log` and :func:`apache_logs`."""

LOG_REJECTS_SCHEMA = pa.schema(
    [
        pa.field("line_number", pa.int64(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
"""Schema of the lines :func:`parse_combined_log` could not parse."""

# A quoted field: anything but a quote or backslash, or a backslash escape (Apache writes a
# quote inside a field as \"). The escapes are kept as written, not decoded.
_QUOTED = r'(?:[^"\\]|\\.)*'
# The combined log format, one piece per field, each with its leading separator; a line that
# fails to match is diagnosed by the first piece whose prefix no longer matches.
_FIELDS = [
    ("client", r"(?P<client>\S+)"),
    ("ident", r" (?P<ident>\S+)"),
    ("user", r" (?P<user>\S+)"),
    (
        "time",
        r" \[(?P<local_time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2})"
        r" (?P<tz_sign>[+-])(?P<tz_hours>0\d|1[0-4])(?P<tz_minutes>[0-5]\d)\]",
    ),
    ("request", r' "(?P<method>[^\s"]+) (?P<path>[^\s"]+) (?P<protocol>[^\s"]+)"'),
    ("status", r" (?P<status>\d{3})"),
    ("bytes", r" (?P<bytes>\d{1,18}|-)"),
    ("referrer", rf' "(?P<referrer>{_QUOTED})"'),
    ("user_agent", rf' "(?P<user_agent>{_QUOTED})"'),
]
COMBINED_LOG_PATTERN = "^" + "".join(piece for _, piece in _FIELDS) + "$"
"""The RE2 pattern (named groups) that :func:`parse_combined_log` matches whole lines against."""

_LOCAL_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S"


def _as_string_array(lines: pa.Array | pa.ChunkedArray | list[str]) -> pa.StringArray:
    """The input lines as one ``pa.string()`` array (nulls allowed)."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks() if lines.num_chunks else pa.array([], pa.string())
    if not isinstance(lines, pa.Array):
        return pa.array(lines, type=pa.string())
    if not (pa.types.is_string(lines.type) or pa.types.is_large_string(lines.type)):
        raise TypeError(f"lines must hold strings, got {lines.type}")
    return lines.cast(pa.string())


def _reject_reasons(text: pa.StringArray, bad_time: pa.BooleanArray) -> pa.StringArray:
    """Why each line of ``text`` failed: first field whose prefix fails, or a bad time."""
    n = len(text)
    # ok[k, i]: the first k + 1 fields match at the start of line i, each ending where the
    # next separator (or the line) starts
    ok = np.empty((len(_FIELDS), n), dtype=bool)
    prefix = "^"
    for k, (_, piece) in enumerate(_FIELDS):
        prefix += piece
        boundary = "" if k == len(_FIELDS) - 1 else "(?: |$)"
        matches = pc.match_substring_regex(text, prefix + boundary)
        ok[k] = pc.fill_null(matches, False).to_numpy(zero_copy_only=False)
    choices = np.array(
        [f"malformed {name}" for name, _ in _FIELDS] + ["trailing text after user_agent"],
        dtype=object,
    )
    first_fail = np.where(ok.all(axis=0), len(_FIELDS), np.argmin(ok, axis=0))
    reason = choices[first_fail]
    reason[np.asarray(bad_time.to_numpy(zero_copy_only=False), dtype=bool)] = "invalid time"
    reason[pc.equal(text, "").fill_null(False).to_numpy(zero_copy_only=False)] = "empty line"
    reason[text.is_null().to_numpy(zero_copy_only=False)] = "null line"
    return pa.array(reason, pa.string())


def parse_combined_log(
    lines: pa.Array | pa.ChunkedArray | list[str],
) -> tuple[pa.Table, pa.Table]:
    """Parse Apache combined-log-format lines into a typed table, vectorized.

    One RE2 regular expression with named groups (:data:`COMBINED_LOG_PATTERN`) is matched
    against whole lines with :func:`pyarrow.compute.extract_regex`; no Python code runs per
    line. The format is ``client ident user [dd/Mon/yyyy:HH:MM:SS ±hhmm] "method path
    protocol" status bytes "referrer" "user_agent"``.

    Parameters
    ----------
    lines : pyarrow.Array, pyarrow.ChunkedArray or list of str
        One log line per element, without the line terminator (string or large_string).

    Returns
    -------
    parsed : pyarrow.Table
        The lines that parse, in input order, schema :data:`LOG_SCHEMA`: ``client`` (IP or
        host name), ``time`` timestamp[s, tz=UTC] (the local time minus its ``±hhmm`` offset),
        ``method``, ``path``, ``protocol`` strings, ``status`` int16, ``bytes`` int64 (NULL
        for ``-``), ``referrer`` and ``user_agent`` strings (as written: ``"-"`` stays ``"-"``
        and ``\\"`` escapes are not decoded). The ``ident`` and ``user`` fields are matched
        but not returned.
    rejects : pyarrow.Table
        Every line that does not parse, schema :data:`LOG_REJECTS_SCHEMA`: ``line_number``
        int64 (1-based position in ``lines``), ``text`` (the line as given) and ``reason``:
        ``"malformed <field>"`` naming the first field that does not match (``client``,
        ``ident``, ``user``, ``time``, ``request``, ``status``, ``bytes``, ``referrer``,
        ``user_agent``), ``"trailing text after user_agent"``, ``"invalid time"`` (e.g.
        31/Feb), ``"empty line"`` or ``"null line"``.
        ``parsed.num_rows + rejects.num_rows == len(lines)``.

    Raises
    ------
    TypeError
        If ``lines`` is an Arrow array of a non-string type.

    Examples
    --------
    >>> ok = '1.2.3.4 - - [17/May/2015:10:05:03 -0130] "GET / HTTP/1.0" 304 - "-" "x"'
    >>> table, rejects = parse_combined_log([ok, "", ok.replace("GET / ", "GET ")])
    >>> row = table.to_pylist()[0]
    >>> row["time"].isoformat(), row["status"], row["bytes"]
    ('2015-05-17T11:35:03+00:00', 304, None)
    >>> rejects.select(["line_number", "reason"]).to_pylist()
    [{'line_number': 2, 'reason': 'empty line'}, {'line_number': 3, 'reason': 'malformed request'}]
    """
    text = _as_string_array(lines)
    fields = pc.extract_regex(text, pattern=COMBINED_LOG_PATTERN)
    matched = fields.is_valid()

    # local wall-clock time; strptime normalizes impossible dates (31/Feb -> 03/Mar), so a
    # round trip through strftime catches them
    local_text = pc.struct_field(fields, "local_time")
    local = pc.strptime(local_text, format=_LOCAL_TIME_FORMAT, unit="s", error_is_null=True)
    round_trip = pc.equal(pc.strftime(local, format=_LOCAL_TIME_FORMAT), local_text)
    good_time = pc.fill_null(round_trip, False)
    good = pc.and_(matched, good_time)

    rows = fields.filter(good)
    sign = pc.if_else(pc.equal(pc.struct_field(rows, "tz_sign"), "-"), -1, 1)
    hours = pc.struct_field(rows, "tz_hours").cast(pa.int64())
    minutes = pc.struct_field(rows, "tz_minutes").cast(pa.int64())
    offset_s = pc.multiply(pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)), sign)
    utc_s = pc.subtract(local.filter(good).cast(pa.int64()), offset_s)
    bytes_text = pc.struct_field(rows, "bytes")
    nbytes = pc.if_else(pc.equal(bytes_text, "-"), pa.scalar(None, pa.string()), bytes_text)
    parsed = pa.Table.from_arrays(
        [
            pc.struct_field(rows, "client"),
            utc_s.cast(LOG_SCHEMA.field("time").type),
            pc.struct_field(rows, "method"),
            pc.struct_field(rows, "path"),
            pc.struct_field(rows, "protocol"),
            pc.struct_field(rows, "status").cast(pa.int16()),
            nbytes.cast(pa.int64()),
            pc.struct_field(rows, "referrer"),
            pc.struct_field(rows, "user_agent"),
        ],
        schema=LOG_SCHEMA,
    )

    bad = pc.invert(good)
    bad_text = text.filter(bad)
    line_number = pa.array(np.flatnonzero(bad.to_numpy(zero_copy_only=False)) + 1, pa.int64())
    bad_time = pc.and_(matched, pc.invert(good_time)).filter(bad)
    rejects = pa.Table.from_arrays(
        [line_number, bad_text, _reject_reasons(bad_text, bad_time)], schema=LOG_REJECTS_SCHEMA
    )
    return parsed, rejects


def apache_log_lines() -> pa.StringArray:
    """Load the raw lines of the bundled Apache access-log sample (10,000 lines).

    Returns
    -------
    pyarrow.StringArray
        ``datasets/apache_logs/apache_logs`` split at ``"\\n"``, in file order, without the
        terminators. Pass it to :func:`parse_combined_log` to see the rejected line too.

    Raises
    ------
    FileNotFoundError
        If ``apache_logs/apache_logs`` is not under :func:`~sabot_lab.datasets.data_dir`.

    Examples
    --------
    >>> len(apache_log_lines())
    10000
    """
    text = _data_file("apache_logs", "apache_logs").read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return pa.array(lines, pa.string())


def apache_logs() -> pa.Table:
    """Load the parsed Apache access-log sample: 9,999 requests to semicomplete.com, May 2015.

    A real combined-format log (via elastic/examples, see ``datasets/apache_logs/``) of
    10,000 lines, parsed with :func:`parse_combined_log`. Data notes (checked in
    ``tests/datasets/test_logs.py``):

    * 9,999 lines parse; **1 does not** and is left out here: line 8,899, whose user agent
      is cut off without its closing quote (reason ``"malformed user_agent"``). Get it with
      ``parse_combined_log(apache_log_lines())[1]``.
    * ``time`` runs from 2015-05-17 10:05:00 to 2015-05-20 21:05:59 UTC; every line has
      offset ``+0000``, ``ident`` and ``user`` are always ``-``.
    * The file is **not** in time order, but close: it is sorted by the minute
      (``time`` floored to the minute never decreases) with the seconds shuffled inside each
      minute. 4,915 rows are earlier than the row before them, 9,447 are behind the running
      maximum, and both the largest step back and the largest lag behind the running maximum
      are 59 s: with a watermark of (largest ``time`` seen) - 59 s no row is late.
    * ``status``: 9,125 x 200, 445 x 304, 213 x 404, 164 x 301, 45 x 206, 3 x 500,
      2 x 403, 2 x 416. ``bytes`` is NULL (``-``) for 669 rows. Methods: 9,951 GET, 42 HEAD,
      5 POST, 1 OPTIONS (the rejected line is a GET). 1,753 distinct clients.

    The clients are real public IP addresses: do not enrich them with anything that
    identifies people.

    Returns
    -------
    pyarrow.Table
        Schema :data:`LOG_SCHEMA`, rows in file order (see :func:`parse_combined_log`).

    Raises
    ------
    FileNotFoundError
        If ``apache_logs/apache_logs`` is not under :func:`~sabot_lab.datasets.data_dir`.

    Examples
    --------
    >>> t = apache_logs()
    >>> t.num_rows
    9999
    >>> t.slice(0, 1).to_pylist()[0]["path"]
    '/presentations/logstash-monitorama-2013/images/kibana-search.png'
    """
    parsed, _ = parse_combined_log(apache_log_lines())
    return parsed
