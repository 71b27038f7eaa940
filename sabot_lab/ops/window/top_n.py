"""Top-N per window: the groups of each emitted window ranked by a measure.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> hits = pa.table({"t": [1, 2, 3, 4, 5], "page": ["a", "b", "b", "c", "b"]})
>>> top = (sl.Stream.from_table(hits).with_watermark("t", unit="s")
...        .window(sl.tumbling("1min")).group_by("page").agg(n=sl.count()).top_n(2, by="n"))
>>> top.to_table().select(["page", "n", "rank"]).to_pylist()
[{'page': 'b', 'n': 3, 'rank': 1}, {'page': 'a', 'n': 1, 'rank': 2}]

With ties, every page tied with the second is kept, and tied pages share a rank:

>>> tied = (sl.Stream.from_table(hits).with_watermark("t", unit="s")
...         .window(sl.tumbling("1min")).group_by("page").agg(n=sl.count())
...         .top_n(2, by="n", with_ties=True))
>>> tied.to_table().select(["page", "n", "rank"]).to_pydict()
{'page': ['b', 'a', 'c'], 'n': [3, 1, 1], 'rank': [1, 2, 2]}
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.base import Operator
from sabot_lab.plan.nodes import TopN

__all__ = ["TopNOp"]


class TopNOp(Operator):
    """Ranks the groups of each emitted window and keeps the first ``n``.

    A window's groups are emitted together (one batch per firing), so each batch holds whole
    windows and is ranked on its own.
    """

    node: TopN
    parallel_safe = False

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        table = pa.Table.from_batches([batch])
        windows = list(self.node.window_keys)
        keys = [k for k in self.node.group_keys if k != self.node.by]
        names = [*windows, self.node.by, *keys]
        # Dictionary-encoded keys rank by their values, not by their dictionary positions.
        plain = pa.table({n: _decoded(table[n]) for n in dict.fromkeys(names)})
        order = pc.sort_indices(plain, [(w, "ascending", "at_end") for w in windows]
                                + [(self.node.by, "descending", "at_end")]
                                + [(k, "ascending", "at_end") for k in keys])
        ranked = table.take(order)
        n = ranked.num_rows
        new_window = np.zeros(n, dtype=bool)
        new_window[:1] = True
        for w in windows:
            values = _decoded(ranked[w]).cast(pa.int64()).to_numpy(zero_copy_only=False)
            new_window[1:] |= values[1:] != values[:-1]
        starts = np.flatnonzero(new_window)
        window_start = np.repeat(starts, np.diff(np.append(starts, n)))
        if self.node.with_ties:  # SQL's RANK(): a row ranks after the rows strictly above it
            by = _decoded(ranked[self.node.by]).to_numpy(zero_copy_only=False)
            new_value = new_window.copy()
            new_value[1:] |= by[1:] != by[:-1]
            runs = np.flatnonzero(new_value)
            rank = np.repeat(runs, np.diff(np.append(runs, n))) - window_start + 1
        else:
            rank = np.arange(n) - window_start + 1
        keep = rank <= self.node.n
        self.metrics.add(rows_filtered=int(n - keep.sum()))
        out = ranked.filter(pa.array(keep)).append_column(
            "rank", pa.array(rank[keep], pa.int32()))
        return out.cast(self.node.schema).combine_chunks().to_batches() or [
            pa.RecordBatch.from_pylist([], schema=self.node.schema)]


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) \
        else column
