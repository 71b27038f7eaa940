"""Tables that span several chunks, handed in by a generator, a ``from_batches`` item or a
``map_batches`` function: every row of every chunk comes out (issue 13, item 5).

The oracle is the table itself, read with plain pyarrow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import sabot_lab as sl
from tests.oracle import assert_balanced, assert_same_rows

#: Rows per chunk and bytes per value of the wide table: two chunks of 17 x 64 MiB hold
#: 2.1 GiB of binary data, more than one ``binary`` chunk can (32-bit offsets).
WIDE_ROWS, WIDE_VALUE = 17, 64 << 20


def wide_table() -> pa.Table:
    """34 rows whose ``blob`` column is over 2 GiB, so that it cannot be one chunk, and whose
    ``id`` column is chunked elsewhere.

    Both blob chunks share one zero-filled buffer that numpy allocates lazily (calloc): the
    table costs no memory until something copies it.
    """
    data = np.zeros(WIDE_ROWS * WIDE_VALUE, dtype=np.uint8)
    offsets = np.arange(WIDE_ROWS + 1, dtype=np.int32) * WIDE_VALUE
    chunk = pa.Array.from_buffers(pa.binary(), WIDE_ROWS,
                                  [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    ids = pa.chunked_array([np.arange(0, 5), np.arange(5, 2 * WIDE_ROWS)])
    return pa.table({"id": ids, "blob": pa.chunked_array([chunk, chunk])})


def concatenated_table() -> pa.Table:
    """Three tables end to end: every column has three chunks."""
    return pa.concat_tables([pa.table({"id": range(a, b), "s": [f"v{i}" for i in range(a, b)]})
                             for a, b in ((0, 3), (3, 4), (4, 10))])


def differently_chunked_table() -> pa.Table:
    """Columns chunked at different rows: ``id`` at 2 and 7, ``s`` at 5."""
    ids = pa.chunked_array([[0, 1], [2, 3, 4, 5, 6], [7, 8, 9]])
    s = pa.chunked_array([[f"v{i}" for i in range(5)], [f"v{i}" for i in range(5, 10)]])
    return pa.table({"id": ids, "s": s})


def through_generator(table: pa.Table) -> sl.Stream:
    return sl.Stream.from_generator(lambda i: table, n_batches=1, schema=table.schema)


def through_batches(table: pa.Table) -> sl.Stream:
    return sl.Stream.from_batches([table], table.schema)


def through_map_batches(table: pa.Table) -> sl.Stream:
    one = pa.table({"id": [0]})
    return sl.Stream.from_table(one).map_batches(lambda batch: table, schema=table.schema)


ROUTES = [through_generator, through_batches, through_map_batches]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("make", [concatenated_table, differently_chunked_table],
                         ids=lambda m: m.__name__)
def test_every_chunk_of_a_table_is_streamed(route: Callable, make: Callable):
    table = make()
    result = route(table).run()
    assert_same_rows(result.table, table)
    assert_balanced(result.operator_metrics)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_a_column_over_2_gib_in_two_chunks_loses_no_row(route: Callable):
    table = wide_table()
    assert table["blob"].num_chunks == 2  # the case: it cannot be combined into one chunk
    result = route(table).run()
    out = result.table
    # Compared by the ids and the value lengths (offsets only): reading 2 GiB of zeros
    # would prove nothing more.
    assert out["id"].to_pylist() == table["id"].to_pylist()
    assert pc.binary_length(out["blob"]).to_pylist() == \
        pc.binary_length(table["blob"]).to_pylist()
    assert_balanced(result.operator_metrics)
