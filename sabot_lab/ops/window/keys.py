"""Dense ids for group keys, stable across batches.

Stateful operators keep their state in arrays indexed by a dense key id. :class:`KeyDictionary`
gives every distinct key (one column or several; null is a key value of its own) the next id
the first time it is seen and the same id ever after, and turns ids back into key columns for
the output.

Each batch is dictionary-encoded by Arrow first, so the Python work per batch is one dict
look-up per *distinct* key in the batch, not per row.

Examples
--------
>>> import pyarrow as pa
>>> keys = KeyDictionary(pa.schema([("user", pa.string())]))
>>> keys.encode(pa.record_batch({"user": ["b", "a", "b", None]})).tolist()
[0, 1, 0, 2]
>>> keys.encode(pa.record_batch({"user": ["a", "c"]})).tolist()
[1, 3]
>>> keys.values([3, 2, 0])[0].to_pylist()
['c', None, 'b']
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.snapshot import SnapshotReader, table_to_array

__all__ = ["KeyDictionary", "warm_up"]

_MAX_TABLE = 1 << 22  # entries of the dense integer-key table (32 MB)


@numba.njit(nogil=True, cache=True)
def _lookup(values, base, table, ids):  # pragma: no cover - numba
    """``ids[i] = table[values[i] - base]``; returns False at the first value outside the
    table or not in it yet (``ids`` is then incomplete)."""
    size = table.shape[0]
    for i in range(values.shape[0]):
        j = values[i] - base
        if j < 0 or j >= size:
            return False
        found = table[j]
        if found < 0:
            return False
        ids[i] = found
    return True


@numba.njit(nogil=True, cache=True)
def _unknown_in_order(values, base, table, out):  # pragma: no cover - numba
    """The distinct values whose ``table[value - base]`` is -1 (all values lie in the
    table), in order of first appearance, into ``out``; returns how many."""
    m = 0
    for i in range(values.shape[0]):
        j = values[i] - base
        if table[j] == -1:
            table[j] = -2  # seen in this batch
            out[m] = values[i]
            m += 1
    for i in range(m):
        table[out[i] - base] = -1
    return m


def warm_up() -> None:
    """Load (or compile) the key look-up kernels before the first batch."""
    one = np.zeros(1, dtype=np.int64)
    _lookup(one, 0, one, one.copy())
    _unknown_in_order(one, 0, np.full(1, -1, dtype=np.int64), one.copy())


def _encoded(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(codes per row, distinct values) of one key column; null is a value of its own."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


class KeyDictionary:
    """Maps key tuples to dense int64 ids (0, 1, 2… in order of first appearance).

    Parameters
    ----------
    schema
        The key columns (names and types) as they appear in the batches.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self._ids: dict[object, int] = {}
        self._chunks: list[list[pa.Array]] = [[] for _ in schema]
        self._columns: list[pa.Array] | None = None
        # Integer keys in a compact range: value - base -> id (-1 unknown), a cache of _ids.
        self._base = 0
        self._table = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """The key id of every row of ``batch`` (new keys get new ids)."""
        n = batch.num_rows
        if not len(self.schema):
            if n and not self._ids:
                self._ids[()] = 0
            return np.zeros(n, dtype=np.int64)
        if len(self.schema) == 1 and pa.types.is_integer(self.schema[0].type):
            column = batch.column(0)
            if not column.null_count:
                ids = self._encode_compact(column.to_numpy().astype(np.int64, copy=False))
                if ids is not None:
                    return ids
        parts = [_encoded(batch.column(f.name)) for f in self.schema]
        if len(parts) == 1:
            codes, distinct = parts[0][0], [parts[0][1]]
            positions = [np.arange(len(distinct[0]))]
        else:
            codes, positions, distinct = self._combine(parts)
        local = [d.take(pa.array(p)) for d, p in zip(distinct, positions, strict=True)]
        values = zip(*(c.to_pylist() for c in local), strict=True)
        ids = np.empty(len(local[0]), dtype=np.int64)
        new = []
        # One dict look-up per distinct key of the batch (Arrow found the distinct keys).
        for i, value in enumerate(values):
            found = self._ids.get(value)
            if found is None:
                found = self._ids[value] = len(self._ids)
                new.append(i)
            ids[i] = found
        if new:
            taken = pa.array(new, pa.int64())
            for chunks, column in zip(self._chunks, local, strict=True):
                chunks.append(column.take(taken))
            self._columns = None
        return ids[codes]

    def integer_table(self, batch: pa.RecordBatch | pa.Table
                      ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """For one integer key column without nulls whose keys so far have a dense table:
        (the key values as int64, the table, its base), so that a kernel can look ids up
        itself (``table[value - base]``, -1 or out of range: not known yet); else ``None``.
        The table is only valid until the next :meth:`encode`."""
        if (len(self.schema) != 1 or not pa.types.is_integer(self.schema[0].type)
                or not len(self._table)):
            return None
        column = batch.column(0)
        if column.null_count:
            return None
        return column.to_numpy().astype(np.int64, copy=False), self._table, self._base

    def _encode_compact(self, values: np.ndarray) -> np.ndarray | None:
        """Ids of integer keys through a dense table, when the keys span at most
        ``_MAX_TABLE`` values (no hashing at all); ``None`` when they do not."""
        if not len(values):
            return np.zeros(0, dtype=np.int64)
        if len(self._table):  # the usual batch: every key seen before, one pass, no hashing
            ids = np.empty(len(values), dtype=np.int64)
            if _lookup(values, self._base, self._table, ids):
                return ids
        low, high = int(values.min()), int(values.max())
        base = min(low, self._base) if len(self._table) else low
        top = max(high, self._base + len(self._table) - 1) if len(self._table) else high
        if top - base >= _MAX_TABLE:
            return None
        if base != self._base or top - base + 1 > len(self._table):
            # Room to grow upwards, doubling: keys that keep rising (ids of new auctions,
            # accounts) would otherwise copy the whole table at every batch.
            size = top - base + 1
            if base == self._base:
                size = min(max(size, 2 * len(self._table)), _MAX_TABLE)
            table = np.full(size, -1, dtype=np.int64)
            offset = self._base - base
            table[offset:offset + len(self._table)] = self._table
            self._base, self._table = base, table
        ids = self._table[values - base]
        missing = ids < 0
        if missing.any():
            new = np.empty(int(missing.sum()), dtype=np.int64)  # in order of first appearance
            new = new[:_unknown_in_order(values[missing], base, self._table, new)]
            found, fresh = [], []
            for value in new.tolist():  # once per new key over the whole run
                key = self._ids.get((value,))
                if key is None:
                    key = self._ids[(value,)] = len(self._ids)
                    fresh.append(value)
                found.append(key)
            self._table[new - base] = found
            if fresh:
                self._chunks[0].append(pa.array(fresh, self.schema[0].type))
                self._columns = None
            ids = self._table[values - base]
        return ids

    @staticmethod
    def _combine(parts: Sequence[tuple[np.ndarray, pa.Array]]
                 ) -> tuple[np.ndarray, list[np.ndarray], list[pa.Array]]:
        """Codes of the distinct key tuples of a batch, and each tuple's per-column codes.

        Columns are combined one at a time and re-factorized, so the combined codes stay
        below rows x distinct values of one column (no overflow with many key columns)."""
        codes, positions = parts[0][0], [np.arange(len(parts[0][1]))]
        for column_codes, dictionary in parts[1:]:
            width = len(dictionary)
            codes, uniques = pd.factorize(codes * width + column_codes)
            uniques = uniques.astype(np.int64)
            positions = [p[uniques // width] for p in positions] + [uniques % width]
        return codes.astype(np.int64), positions, [d for _, d in parts]

    def _stored_schema(self) -> pa.Schema:
        """The schema of the stored key values (dictionary keys are kept decoded)."""
        return pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type)
                                   else f.type) for f in self.schema])

    def save(self, prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) for a snapshot: the key values in id order, as Arrow IPC.

        >>> from sabot_lab.ops.snapshot import SnapshotReader, pack
        >>> keys = KeyDictionary(pa.schema([("user", pa.string())]))
        >>> _ = keys.encode(pa.record_batch({"user": ["b", "a", None]}))
        >>> again = KeyDictionary(keys.schema)
        >>> again.load(SnapshotReader(pack("k", *keys.save("keys")), "k"), "keys")
        >>> again.encode(pa.record_batch({"user": ["a", None, "c"]})).tolist()
        [1, 2, 3]
        """
        stored = self._stored_schema()
        columns = self.values(np.arange(len(self))) if len(self.schema) else []
        table = pa.Table.from_arrays(
            [c.cast(f.type) for c, f in zip(columns, stored, strict=True)], schema=stored)
        return ({f"{prefix}.count": len(self)},
                {f"{prefix}.values": table_to_array(table)})

    def load(self, reader: SnapshotReader, prefix: str) -> None:
        """Replace every key by those of a snapshot written by :meth:`save`."""
        count = reader.scalar(f"{prefix}.count", int)
        table = reader.table(f"{prefix}.values")
        stored = self._stored_schema()
        reader.check(table.schema.remove_metadata().equals(stored),
                     f"the key columns are {table.schema}, this job's are {stored}")
        if not len(self.schema):
            reader.check(count in (0, 1), f"{count} keys for a job without group keys")
            self._ids = {(): 0} if count else {}
            return
        reader.check(table.num_rows == count, f"{table.num_rows} key values for {count} keys")
        rows = zip(*(table.column(i).to_pylist() for i in range(table.num_columns)),
                   strict=True)
        self._ids = {key: i for i, key in enumerate(rows)}
        reader.check(len(self._ids) == count, "a key is stored twice")
        self._chunks = [[table.column(i).combine_chunks()] for i in range(table.num_columns)]
        self._columns = None
        self._base, self._table = 0, np.zeros(0, dtype=np.int64)

    def values(self, ids: Sequence[int] | np.ndarray) -> list[pa.Array]:
        """The key columns of ``ids``, typed as in :attr:`schema`."""
        if self._columns is None:
            self._columns = [
                pa.concat_arrays(chunks) if chunks else pa.array([], f.type)
                for chunks, f in zip(self._chunks, self.schema, strict=True)]
        taken = pa.array(np.asarray(ids, dtype=np.int64))
        return [column.take(taken).cast(f.type)
                for column, f in zip(self._columns, self.schema, strict=True)]
