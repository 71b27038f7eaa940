"""CSV files as a stream: :class:`CsvScan` reads a file in blocks with pyarrow's streaming
reader, names the file and line of anything that does not parse, and can route malformed
lines to a side output.

Line numbers: pyarrow counts rows, not lines (a quoted value may span lines), so a small
numba scanner (:func:`_scan_rows`) finds the physical line each row starts on, only when an
error needs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sabot_lab.errors import CsvParseError
from sabot_lab.ops.base import SideOutputs
from sabot_lab.ops.batches import DEFAULT_BATCH_SIZE

__all__ = ["CsvScan"]


# Where the CSV scanner is within a record (the states of pyarrow's CSV parser).
_RECORD_START, _FIELD_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = range(5)
_LF, _CR = 10, 13
# Entries of the scanner state kept between chunks.
_LINE, _ROWS, _MODE, _AFTER_CR = range(4)


@numba.njit(nogil=True, cache=True)
def _scan_rows(data, delimiter, quote, state, targets, first, out):  # pragma: no cover
    r"""Scan CSV bytes as pyarrow's parser splits them into rows, and write to ``out[k]`` the
    physical line on which row ``targets[k]`` (1-based, the header being row 1) starts.

    A row is a non-empty record: empty lines are skipped, as ``ignore_empty_lines`` does; a
    quote opens a quoted field only at the start of a field and a doubled quote inside one
    is a quote, so line breaks there belong to the field. Lines end at ``\n``, ``\r\n`` or
    ``\r``. ``state`` (line, rows so far, parser state, previous byte was ``\r``) carries
    over from one chunk to the next. Returns the index of the first unresolved target and
    the bytes consumed (fewer than ``len(data)`` once every target is resolved).
    """
    line, rows, mode, after_cr = state[_LINE], state[_ROWS], state[_MODE], state[_AFTER_CR]
    k = first
    n = data.shape[0]
    used = n
    for i in range(n):
        b = data[i]
        newline = b in (_LF, _CR)
        if mode == _RECORD_START and not newline:
            rows += 1
            while k < targets.shape[0] and targets[k] == rows:
                out[k] = line
                k += 1
            mode = _FIELD_START
        if mode == _FIELD_START:
            if b == quote:
                mode = _QUOTED
            elif newline:
                mode = _RECORD_START
            elif b != delimiter:
                mode = _UNQUOTED
        elif mode == _UNQUOTED:
            if b == delimiter:
                mode = _FIELD_START
            elif newline:
                mode = _RECORD_START
        elif mode == _QUOTED:
            if b == quote:
                mode = _QUOTE_IN_QUOTED
        elif mode == _QUOTE_IN_QUOTED:
            if b == quote:
                mode = _QUOTED
            elif b == delimiter:
                mode = _FIELD_START
            elif newline:
                mode = _RECORD_START
            else:
                mode = _UNQUOTED
        if b == _CR or (b == _LF and not after_cr):
            line += 1
        after_cr = b == _CR
        if k == targets.shape[0]:
            used = i + 1
            break
    state[_LINE], state[_ROWS], state[_MODE], state[_AFTER_CR] = line, rows, mode, after_cr
    return k, used


_MALFORMED_SCHEMA = pa.schema({"file": pa.string(), "line": pa.int64(), "text": pa.string(),
                               "reason": pa.string()})


class _RowLines:
    r"""The file lines on which CSV rows start, the rows numbered as pyarrow numbers them
    (``InvalidRow.number``, the ``Row #`` of its errors): that numbering skips empty lines
    and counts a row with a quoted line break once, so it is not the line number.

    Used only when a row is malformed or does not convert: the file is scanned forward from
    where the last question left off, a chunk at a time (memory bounded by the chunk), by a
    numba kernel. Rows asked for in increasing order (as the reader reports them) cost one
    pass over the file in all; an earlier row rescans from the start.

    >>> import os, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write('a,b\n1,"x\ny"\n\n2\n3,z\n')
    >>> _RowLines(f.name).lines([3, 4, 9])
    [5, 6, None]
    >>> os.remove(f.name)
    """

    def __init__(self, path: str | Path, delimiter: str = ",", quote: str = '"',
                 chunk_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.delimiter, self.quote = ord(delimiter), ord(quote)
        self.chunk_bytes = chunk_bytes
        self._rewind()

    def _rewind(self) -> None:
        self.offset = 0  # file bytes scanned (the state is that after them)
        self.state = np.array([1, 0, _RECORD_START, 0], dtype=np.int64)

    def lines(self, rows: Sequence[int | None]) -> list[int | None]:
        """The line on which each of ``rows`` starts (``None`` for ``None`` and for rows
        the file does not have)."""
        wanted = sorted({r for r in rows if r is not None})
        if not wanted:
            return [None] * len(rows)
        if wanted[0] <= self.state[_ROWS]:
            self._rewind()
        targets = np.array(wanted, dtype=np.int64)
        out = np.full(len(targets), -1, dtype=np.int64)
        k = 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            while k < len(targets):
                chunk = f.read(self.chunk_bytes)
                if not chunk:
                    break
                k, used = _scan_rows(np.frombuffer(chunk, dtype=np.uint8), self.delimiter,
                                     self.quote, self.state, targets, k, out)
                self.offset += used
        found = {r: int(line) for r, line in zip(wanted, out.tolist(), strict=True)
                 if line >= 0}
        return [None if r is None else found.get(r) for r in rows]

    def unclosed_quote_row(self) -> int | None:
        r"""The number of the file's last row (as pyarrow numbers rows) if the file ends
        inside a quoted value (a quote that is never closed), else ``None``. Scans the
        whole file.

        >>> import os, tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        ...     _ = f.write('a,b\n\n1,x\n2,"never closed\n3,y\n')
        >>> rows = _RowLines(f.name)
        >>> row = rows.unclosed_quote_row()
        >>> row, rows.lines([row])
        (3, [4])
        >>> os.remove(f.name)
        """
        self._rewind()
        beyond = np.array([np.iinfo(np.int64).max], dtype=np.int64)  # scan to the end
        out = np.full(1, -1, dtype=np.int64)
        with self.path.open("rb") as f:
            while chunk := f.read(self.chunk_bytes):
                _scan_rows(np.frombuffer(chunk, dtype=np.uint8), self.delimiter, self.quote,
                           self.state, beyond, 0, out)
                self.offset += len(chunk)
        return int(self.state[_ROWS]) if self.state[_MODE] == _QUOTED else None

    def where(self, row: int) -> str:
        """``"line N"`` for pyarrow's row ``row``, or ``"row N (line unknown)"`` when the
        file has no such row (pyarrow's count and the scan's would then disagree)."""
        line = self.lines([row])[0]
        return f"line {line}" if line is not None else f"row {row} (line unknown)"


def _has_line_break(value: object) -> bool:
    """Whether a parsed CSV value (text or bytes) holds a line break."""
    if isinstance(value, str):
        return "\n" in value or "\r" in value
    return isinstance(value, bytes) and (b"\n" in value or b"\r" in value)


def _unclosed_quote_hint(text: str, quote: str = '"') -> str:
    r"""Why a row that spans several lines has the wrong number of fields, when the likely
    reason is a quote that is never closed (it turns the lines after it into one value).

    >>> _unclosed_quote_hint('1,"never closed\n2,b')
    ' (the row runs over several lines because a quote opened in it is never closed: ...)'
    >>> _unclosed_quote_hint('1,"a\nb"')
    ''
    """
    spans_lines = "\n" in text or "\r" in text
    if not spans_lines or text.count(quote) % 2 == 0:
        return ""
    return (" (the row runs over several lines because a quote opened in it is never "
            "closed: close it, or double a quote meant literally)")


def _parse_options(on_invalid: Callable | None) -> pacsv.ParseOptions:
    """How every CSV file is parsed: RFC 4180 quoting, line breaks allowed inside quotes.

    ``newlines_in_values`` makes pyarrow's chunker track quotes, so a quoted line break that
    falls on a read-block boundary does not split the row (without it, valid CSV fails
    with "parser got out of sync"); it costs no measurable time on files without any.
    """
    return pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)


class CsvScan:
    """Streams a CSV file block by block with pyarrow's incremental reader.

    Parameters
    ----------
    path
        The CSV file (with a header line).
    schema
        Column types to convert to; columns it does not name are inferred.
    batch_size
        Approximate rows per batch (converted to a block size in bytes from the first line).
    bad_lines
        ``"raise"`` (default): a row with the wrong number of fields, or a value that does not
        convert, raises :class:`CsvParseError` naming file and line. ``"side_output"``: rows
        with the wrong number of fields go to the ``malformed`` side output with the line
        number, the text and the reason (unconvertible values still raise).

    Notes
    -----
    Quoted values may hold line breaks and delimiters (RFC 4180), wherever the read blocks
    fall. A quote that is never closed makes the rest of the file one value: an error naming
    the line of its row, or, when that row then has too few fields, a malformed line whose
    reason says so.

    Lines are the file's physical lines (empty lines and line breaks inside quoted values
    count), where the row starts. pyarrow numbers rows instead, so they are looked up in the
    file when a row is malformed or does not convert, never on the way of good rows.
    """

    def __init__(
        self,
        path: str | Path,
        schema: pa.Schema | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bad_lines: str = "raise",
    ) -> None:
        if bad_lines not in ("raise", "side_output"):
            raise ValueError(f"bad_lines must be 'raise' or 'side_output', got {bad_lines!r}")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no CSV file at {self.path}")
        self.column_types = schema
        self.batch_size = batch_size
        self.bad_lines = bad_lines
        self._schema = self._peek_schema()
        self._schema_names = self._schema.names

    def _peek_schema(self) -> pa.Schema:
        """The header's columns with the declared types (others inferred, as the reader will)."""
        try:
            return self._read_header()
        except pa.ArrowInvalid as exc:
            raise CsvParseError(f"{self.path}: no CSV header could be read ({exc}); is the "
                                f"file empty, or not CSV?") from None

    def _read_header(self) -> pa.Schema:
        with pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=self._block_size(), use_threads=False),
            parse_options=_parse_options(lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in self.column_types.names}
                if self.column_types is not None else None
            ),
        ) as reader:
            inferred = reader.schema
        if self.column_types is None:
            return inferred
        missing = [n for n in self.column_types.names if n not in inferred.names]
        if missing:
            raise KeyError(f"{self.path}: schema names column(s) {missing} that the header "
                           f"does not have; the header has {inferred.names}")
        return pa.schema([self.column_types.field(f.name) if f.name in self.column_types.names
                          else f for f in inferred])

    def _block_size(self) -> int:
        """Bytes per read block, sized so that a block holds about ``batch_size`` rows."""
        with self.path.open("rb") as f:
            head = f.read(1 << 16)
        line_bytes = max(len(head) // max(head.count(b"\n"), 1), 8)
        return max(1 << 12, min(line_bytes * self.batch_size, 1 << 28))

    def _open(self, on_invalid: Callable | None = None) -> pacsv.CSVStreamingReader:
        """pyarrow's reader (which reads the first block at once: its errors are raised
        here, as pyarrow's)."""
        block = self._block_size()
        types = dict(zip(self.column_types.names, self.column_types.types, strict=True)) if (
            self.column_types is not None
        ) else None
        return pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
            parse_options=_parse_options(on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def describe(self) -> str:
        return f"csv {self.path.name}"

    pushdown = False

    def nbytes(self) -> None:
        """Unknown until parsed (the file's size is not its Arrow size)."""
        return None

    def partitions(self, n: int) -> list[CsvScan]:
        """One: rows cannot be cut apart without parsing the file (a quoted value may span
        lines), so one reader reads it all."""
        return [self]

    def _explain(self, exc: pa.ArrowInvalid, lines: _RowLines,
                 invalid: pacsv.InvalidRow | None = None) -> CsvParseError:
        """Our error for pyarrow's, naming the file line of its ``Row #`` (``invalid``: the
        row pyarrow's handler was last shown, whose full text it may have cut short)."""
        message = str(exc)
        where = re.search(r"In CSV column #(\d+): Row #(\d+): ", message)
        if where is not None:
            column = self._schema_names[int(where.group(1))]
            return CsvParseError(
                f"{self.path}: {lines.where(int(where.group(2)))}, column {column!r}: "
                f"{message[where.end():]}. Fix the value, or read the column as string "
                f"(schema=) and convert it with with_columns"
            )
        row = re.search(r"Row #(\d+): ", message)
        if row is not None:  # pyarrow's words kept: its row numbers skip empty lines
            message = f"{lines.where(int(row.group(1)))}: {message}"
        hint = _unclosed_quote_hint(invalid.text) if invalid is not None else ""
        return CsvParseError(f"{self.path}: {message}{hint}. Fix the line, or pass "
                             f"bad_lines='side_output' to route malformed lines aside")

    def batches(self, side_outputs: SideOutputs | None = None) -> Iterator[pa.RecordBatch]:
        malformed: list[dict] = []
        lines = _RowLines(self.path)

        invalid: list[pacsv.InvalidRow] = []  # the row behind an error, for its message
        last_malformed = [0]  # the number of the last row sent to the side output

        def on_invalid(row: pacsv.InvalidRow) -> str:
            if self.bad_lines == "raise":
                invalid[:] = [row]
                return "error"
            last_malformed[0] = row.number
            malformed.append({"file": str(self.path), "line": row.number, "text": row.text,
                              "reason": f"expected {row.expected_columns} fields, "
                                        f"got {row.actual_columns}"
                                        f"{_unclosed_quote_hint(row.text)}"})
            return "skip"

        def emit() -> None:
            """The malformed rows so far, their row numbers turned into file lines."""
            if malformed and side_outputs is not None:
                found = lines.lines([m["line"] for m in malformed])
                for m, line in zip(malformed, found, strict=True):
                    m["line"] = line
                side_outputs.emit("malformed", pa.RecordBatch.from_pylist(
                    malformed, schema=_MALFORMED_SCHEMA))
            malformed.clear()

        try:
            reader = self._open(on_invalid)
        except pa.ArrowInvalid as exc:
            raise self._explain(exc, lines, invalid[0] if invalid else None) from None
        held = None  # the last batch waits until the file is known to close its quotes
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise self._explain(exc, lines, invalid[0] if invalid else None) from None
            emit()
            if batch.num_rows:
                if held is not None:
                    yield held
                held = batch
        emit()  # lines after the last good row
        if held is not None:
            self._check_quotes_closed(held, lines, last_malformed[0])
            yield held

    def _check_quotes_closed(self, last: pa.RecordBatch, lines: _RowLines,
                             malformed: int) -> None:
        """Raise if the file ends inside a quoted value: pyarrow then reads every line after
        the opening quote as one value of the last row, which loses them silently when the
        row still has as many fields as the header (``malformed``: the last row reported
        malformed, whose text, every line of it, is in the side output already).

        Only a last row holding a line break in a value can be such a row, so only then is
        the file scanned (once more).
        """
        row = last.slice(last.num_rows - 1)
        if not any(_has_line_break(column[0].as_py()) for column in row.columns):
            return
        number = lines.unclosed_quote_row()
        if number is None or number == malformed:
            return
        raise CsvParseError(
            f"{self.path}: {lines.where(number)}: a quote opened in this row is never "
            f"closed, so every line after it, to the end of the file, was read as one value "
            f"(of column {self._schema_names[-1]!r}); close the quote, or double a quote "
            f"meant literally")
