"""Sources on bad input: CSV line numbers against the lines the test wrote, batches whose
schema differs in nullability, DataFrames with mixed-type columns."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot_lab as sl
from sabot_lab.errors import CsvParseError, SchemaMismatchError
from sabot_lab.ops.csv import _RowLines
from sabot_lab.reference import ColumnConversionError
from tests.oracle import assert_balanced

# --- CSV: physical line numbers -----------------------------------------------------------

#: A value of column ``b``: plain, with a literal quote inside (a quote opens a quoted field
#: only at its start), or quoted with a doubled quote, a delimiter or line breaks inside.
values = st.sampled_from(["v", 'x"y', '"q""q"', '"a,b"', '"one\ntwo"', '"x\n\ny"', '""'])
#: What a record is: a good one, one with a field too few or too many, or (with a declared
#: int64 column ``a``) a word where a number belongs.
kinds = st.sampled_from(["ok", "ok", "ok", "short", "long"])


@st.composite
def csv_files(draw):
    """(file bytes, line ending, [(kind, first line, text of the record)])."""
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    records = []
    text = "a,b" + ending
    line = 2
    for i in range(draw(st.integers(0, 25))):
        for _ in range(draw(st.integers(0, 2))):  # empty lines: skipped, but lines
            text += ending
            line += 1
        kind = draw(kinds)
        value = draw(values).replace("\n", ending)
        record = {"ok": f"{i},{value}", "short": f"{i}", "long": f"{i},{value},extra"}[kind]
        records.append((kind, line, record))
        text += record + ending
        line += 1 + record.count(ending)
    return text.encode(), ending, records


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.csv"
    path.write_bytes(data)
    return path


@settings(max_examples=60, deadline=None)
@given(case=csv_files(), batch_size=st.sampled_from([1, 3, 1000]))
def test_malformed_csv_lines_are_named_by_their_file_line(case, batch_size, tmp_path_factory):
    data, _, records = case
    path = _write(tmp_path_factory.mktemp("csv"), data)
    result = sl.Stream.from_csv(path, schema=pa.schema({"a": pa.int64()}),
                                batch_size=batch_size, bad_lines="side_output").run()
    assert_balanced(result.operator_metrics)
    assert result.table["a"].to_pylist() == [int(r.split(",")[0]) for k, _, r in records
                                             if k == "ok"]
    malformed = result.side_outputs.get("malformed")
    got = malformed.select(["line", "text"]).to_pylist() if malformed is not None else []
    # The oracle: the line each bad record was written on, and its text (line breaks inside
    # quotes are pyarrow's: it keeps them as written).
    assert [(g["line"], g["text"]) for g in got] == [(line, text) for kind, line, text in records
                                                     if kind != "ok"]
    if any(kind != "ok" for kind, _, _ in records):
        _, line, _ = next(r for r in records if r[0] != "ok")
        with pytest.raises(CsvParseError, match=f": line {line}: "):
            sl.Stream.from_csv(path, batch_size=batch_size).run()


@settings(max_examples=30, deadline=None)
@given(case=csv_files(), at=st.integers(0, 24), batch_size=st.sampled_from([1, 1000]))
def test_a_value_that_does_not_convert_is_named_by_its_file_line(case, at, batch_size,
                                                                 tmp_path_factory):
    data, ending, records = case
    good = [i for i, (kind, _, _) in enumerate(records) if kind == "ok"]
    if not good:
        return
    i = good[at % len(good)]
    _, line, text = records[i]
    data = data.replace((ending + text + ending).encode(),
                        (ending + "word" + text[text.index(","):] + ending).encode(), 1)
    path = _write(tmp_path_factory.mktemp("csv"), data)
    with pytest.raises(CsvParseError, match=f"line {line}, column 'a'"):
        sl.Stream.from_csv(path, schema=pa.schema({"a": pa.int64()}), batch_size=batch_size,
                           bad_lines="side_output").run()


def test_line_numbers_of_a_file_larger_than_the_scan_chunk(tmp_path):
    """The lines are found by scanning the file a chunk at a time: across chunk edges too."""
    lines, rows = ["a,b"], []
    for i in range(2_000):
        lines.append(f'{i},"x\r\ny"' if i % 7 == 0 else f"{i},v")
        if i % 3 == 0:
            lines.append("")
    text = "\r\n".join(lines) + "\r\n"
    path = _write(tmp_path, text.encode())
    line = 1
    for record in lines:
        if record:
            rows.append(line)
        line += 1 + record.count("\r\n")
    for chunk_bytes in (1, 7, 1 << 20):
        finder = _RowLines(path, chunk_bytes=chunk_bytes)
        wanted = list(range(1, len(rows) + 2, 97))
        assert finder.lines(wanted) == [rows[r - 1] if r <= len(rows) else None
                                        for r in wanted]
        assert finder.lines([5, 2]) == [rows[4], rows[1]]  # earlier rows: a rescan


# --- batches differing in nullability -----------------------------------------------------

def test_batches_are_taken_under_the_stream_schema_when_only_nullability_differs():
    nullable = pa.schema({"a": pa.int64(), "b": pa.string()})
    required = pa.schema([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.string())])
    batches = [pa.RecordBatch.from_pylist([{"a": 1, "b": None}], schema=required),
               pa.RecordBatch.from_pylist([{"a": 2, "b": "x"}], schema=nullable)]
    for schema in (nullable, required):
        result = sl.Stream.from_batches(batches, schema).run()
        assert result.table.schema == schema
        assert result.table.to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]
    with_null = pa.RecordBatch.from_pylist([{"a": None, "b": "y"}], schema=nullable)
    with pytest.raises(SchemaMismatchError, match=r"batch 2: column 'a' holds 1 null"):
        sl.Stream.from_batches([*batches, with_null], required).run()
    other = pa.RecordBatch.from_pylist([{"a": 1.5, "b": "y"}])
    with pytest.raises(SchemaMismatchError, match="column 'a' is double, expected int64"):
        sl.Stream.from_batches([other], required).run()


# --- DataFrames with mixed-type columns ---------------------------------------------------

@pytest.mark.parametrize("values", [[1, "x"], ["x", 2], [1.5, "x"], [{"x": 1}, 1]])
def test_a_mixed_type_object_column_is_named_with_the_fix(values):
    frame = pd.DataFrame({"k": [1, 2], "price": values})
    for build in (lambda: sl.Stream.from_pandas(frame), lambda: sl.Table(frame, key="k")):
        with pytest.raises(ColumnConversionError, match=r"column 'price'.*astype\(str\)"):
            build()
    fixed = frame.assign(price=frame["price"].astype(str))
    assert sl.Stream.from_pandas(fixed).to_table()["price"].to_pylist() == [
        str(v) for v in values]
