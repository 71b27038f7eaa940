"""CSV values with quoted line breaks that straddle the scanner's read blocks (issue 13,
item 9): valid files read whole, as pandas reads them, and errors after such values still
name the file line the test wrote.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.errors import CsvParseError
from sabot_lab.ops.csv import CsvScan

SCHEMA = pa.schema({"id": pa.int64(), "text": pa.string(), "x": pa.float64()})


def quoted_records(n: int) -> list[list[object]]:
    """Rows whose ``text`` is long and mostly spans several lines, so that most bytes of
    the file are inside a quoted value with line breaks (some with quotes and commas too)."""
    rows = []
    for i in range(n):
        text = f"row {i} " + "word " * (i % 40)
        if i % 4:  # three rows in four have line breaks inside the quotes
            text = "\n".join([text, 'a "quoted", line', "\r\n".join(["x"] * (i % 5)), "end"])
        rows.append([i, text, i / 4])
    return rows


def write_csv(path: Path, rows: list[list[object]], tail: str = "",
              header: tuple[str, ...] = ("id", "text", "x")) -> str:
    """The CSV text of ``rows`` (Python's csv module quotes what needs quoting), plus
    ``tail`` verbatim; written to ``path`` and returned."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue() + tail
    path.write_bytes(text.encode())
    return text


def straddled_boundaries(text: str, block: int) -> int:
    """How many multiples of ``block`` (byte offsets) fall inside a quoted value with a
    line break: the cases the reader must carry over from one block to the next."""
    data = text.encode()
    count, inside, breaks, start, i = 0, False, False, 0, 0
    while i < len(data):
        if data[i] == ord('"'):
            if inside and data[i + 1:i + 2] == b'"':
                i += 2  # a doubled quote: a quote character inside the value
                continue
            inside = not inside
            if inside:
                breaks, start = False, i
            elif breaks:
                count += i // block - start // block
        elif inside and data[i] in (10, 13):
            breaks = True
        i += 1
    return count


@pytest.mark.parametrize("batch_size", [1, 200, 400])  # blocks of 4, 6.6 and 13 kB
def test_quoted_line_breaks_across_read_blocks_read_as_pandas_reads_them(tmp_path, batch_size):
    path = tmp_path / "quoted.csv"
    text = write_csv(path, quoted_records(600))
    block = CsvScan(path, batch_size=batch_size)._block_size()
    assert straddled_boundaries(text, block) >= 3  # the case under test, for this block size
    expected = pd.read_csv(path, dtype={"id": "int64", "text": "string", "x": "float64"},
                           keep_default_na=False)
    for schema in (None, SCHEMA):
        result = sl.Stream.from_csv(path, schema=schema, batch_size=batch_size).run()
        assert result.metrics.iloc[0]["batches_out"] > 3  # several blocks, not one
        actual = result.table.to_pandas().astype({"text": "string"})
        pd.testing.assert_frame_equal(actual, expected)


def _line_of_next_record(text: str) -> int:
    """The physical line on which a record appended to ``text`` starts (1-based)."""
    return text.count("\n") + 1


def test_a_short_row_after_straddling_quotes_is_named_by_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    good = write_csv(path, quoted_records(300))
    bad_line = _line_of_next_record(good)
    write_csv(path, quoted_records(300), tail="7,only\n" + "8,ok,1.5\n" * 20)
    with pytest.raises(CsvParseError, match=rf"bad\.csv: line {bad_line}: .*Expected 3 "):
        sl.Stream.from_csv(path, batch_size=7).to_table()

    result = sl.Stream.from_csv(path, batch_size=7, bad_lines="side_output").run()
    assert result.side_outputs["malformed"].select(["line", "text"]).to_pylist() == [
        {"line": bad_line, "text": "7,only"}]
    assert result.table.num_rows == 300 + 20


def test_a_value_that_does_not_convert_after_straddling_quotes_is_named_by_its_line(
        tmp_path):
    path = tmp_path / "bad.csv"
    good = write_csv(path, quoted_records(300))
    bad_line = _line_of_next_record(good)
    write_csv(path, quoted_records(300), tail='9,"two\nlines",oops\n' + "8,ok,1.5\n" * 20)
    with pytest.raises(CsvParseError, match=rf"bad\.csv: line {bad_line}, column 'x': "):
        sl.Stream.from_csv(path, schema=SCHEMA, batch_size=7).to_table()


def test_a_quote_never_closed_is_named_by_its_line_with_the_likely_cause(tmp_path):
    path = tmp_path / "open.csv"
    good = write_csv(path, quoted_records(300))
    bad_line = _line_of_next_record(good)
    write_csv(path, quoted_records(300), tail='9,"never closed,1.0\n' + "8,ok,1.5\n" * 20)
    with pytest.raises(CsvParseError, match=rf"(?s)line {bad_line}: .*a quote opened in it is "
                                            rf"never closed"):
        sl.Stream.from_csv(path, batch_size=7).to_table()

    result = sl.Stream.from_csv(path, batch_size=7, bad_lines="side_output").run()
    malformed = result.side_outputs["malformed"].to_pylist()
    assert [m["line"] for m in malformed] == [bad_line]
    assert "never closed" in malformed[0]["reason"]
    assert result.table.num_rows == 300  # the rest of the file was inside the open quote


@pytest.mark.parametrize("bad_lines", ["raise", "side_output"])
def test_a_quote_never_closed_in_the_last_column_is_an_error_not_one_long_value(
        tmp_path, bad_lines):
    # pyarrow reads every line after such a quote, to the end of the file, as one value of
    # the row: with as many fields as the header, nothing looked wrong and rows vanished.
    path = tmp_path / "open.csv"
    header = ("id", "x", "text")  # the text last
    rows = [[i, x, text] for i, text, x in quoted_records(300)]
    bad_line = _line_of_next_record(write_csv(path, rows, header=header))
    write_csv(path, rows, tail='9,1.0,"never closed\n' + "8,1.5,ok\n" * 20, header=header)
    with pytest.raises(CsvParseError, match=rf"open\.csv: line {bad_line}: a quote opened in "
                                            rf"this row is never closed.*column 'text'"):
        sl.Stream.from_csv(path, batch_size=7, bad_lines=bad_lines).to_table()


def test_a_last_row_with_a_quoted_line_break_is_read_as_pandas_reads_it(tmp_path):
    path = tmp_path / "last.csv"
    write_csv(path, [*quoted_records(300), [300, "last\nrow, \"quoted\"\n", 0.5]])
    expected = pd.read_csv(path, dtype={"id": "int64", "text": "string", "x": "float64"},
                           keep_default_na=False)
    actual = sl.Stream.from_csv(path, batch_size=7).to_table().to_pandas()
    pd.testing.assert_frame_equal(actual.astype({"text": "string"}), expected)
