"""Event time: watermark assignment and window aggregation.

Lateness is decided per row, in arrival order, from the watermark *before* that row, so the
emitted rows do not depend on batch sizes:

* a row whose window ends after its watermark is counted in the window's first result
  (revision 0), emitted once the watermark passes the window's end;
* a row whose window has ended, but by no more than the allowed lateness, updates it: the
  window is emitted again (revision 1, 2…, ``is_update``) with that row included;
* a later row goes to the ``late`` side output with the window it missed and by how much.

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> events = pa.table({"t": [0, 5, 61, 2, 130, 9], "v": [1, 2, 3, 4, 5, 6]})
>>> stream = (sl.Stream.from_table(events, batch_size=2)
...           .with_watermark("t", unit="s", max_out_of_orderness="10s")
...           .window(sl.tumbling("1min")).agg(n=sl.count(), total=sl.sum("v")))
>>> result = stream.run()
>>> result.table.select(["window_start", "n", "total"]).to_pylist()[:2]
[{'window_start': 0, 'n': 3, 'total': 7}, {'window_start': 60, 'n': 1, 'total': 3}]
>>> result.side_outputs["late"].select(["t", "window_start", "late_by"]).to_pylist()
[{'t': 9, 'window_start': 0, 'late_by': 60}]
"""

from __future__ import annotations

import builtins
import dataclasses
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

from sabot_lab.ops.base import OperatorMetrics, SideOutputs
from sabot_lab.ops.snapshot import SnapshotReader, in_range
from sabot_lab.ops.window.base import WindowOperator, sort_by_window_and_keys
from sabot_lab.ops.window.watermark import event_times
from sabot_lab.plan.nodes import WATERMARK_COLUMN, WindowAggregate
from sabot_lab.plan.windows import format_duration, to_unit

__all__ = ["WindowAggregateOp"]

#: Rows of released windows kept for reuse before the partial aggregates are compacted.
_SPARE_ROWS = 64


@numba.njit(nogil=True, cache=True)
def _classify(ts, wm, slide, size, lateness, j, start, kind):  # pragma: no cover - numba
    """For window ``j`` of each row (0 = the latest window holding it): its start, and
    whether the row is normal (0), an update of an emitted window (1) or late (2).
    Returns the counts of each kind, the smallest and largest start of normal rows, and the
    largest event time and row watermark of the batch."""
    counts = np.zeros(3, dtype=np.int64)
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    t_max, wm_max = np.iinfo(np.int64).min, np.iinfo(np.int64).min
    # The slide period [period, period + slide) of the previous row, and its window start:
    # rows come mostly in time order, so the division is rarely needed.
    period, s = np.int64(1), np.int64(0)
    period_end = np.int64(0)
    for i in range(ts.shape[0]):
        t = ts[i]
        if t < period or t >= period_end:
            q = t // slide
            period = q * slide
            period_end = period + slide
            s = (q - j) * slide
        start[i] = s
        t_max = max(t_max, t)
        w = wm[i]
        wm_max = max(wm_max, w)
        end = s + size
        if end + lateness <= w:
            kind[i] = 2
            counts[2] += 1
        elif end <= w:
            kind[i] = 1
            counts[1] += 1
        else:
            kind[i] = 0
            counts[0] += 1
            low = min(low, s)
            high = max(high, s)
    return counts, low, high, t_max, wm_max


def _warm_up() -> None:
    """Load (or compile) the classification kernel before the first batch."""
    one = np.zeros(1, dtype=np.int64)
    _classify(one, one, 1, 1, 0, 0, one.copy(), np.zeros(1, dtype=np.int8))


@dataclass
class _OpenWindow:
    """A window with state: its row of slots, whether it has fired, and the revision last
    emitted per key id (-1: none yet; only kept while updates are possible)."""

    row: int
    fired: bool = False
    revisions: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, dtype=np.int32))

    def revision(self, key: int) -> int:
        return int(self.revisions[key]) if key < len(self.revisions) else -1

    def set_revision(self, keys: np.ndarray, revision: int) -> None:
        if len(keys) and keys.max() >= len(self.revisions):
            grown = np.full(int(keys.max()) + 1, -1, dtype=np.int32)
            grown[:len(self.revisions)] = self.revisions
            self.revisions = grown
        self.revisions[keys] = revision


class WindowAggregateOp(WindowOperator):
    """Incremental window aggregation: partial aggregates per (window, key), updated per batch.

    Each batch is classified per row (and per window the row belongs to): rows the watermark
    had not passed go into their window's slots with one numba kernel call per column; rows
    within the allowed lateness update an emitted window and re-emit it; later rows go to the
    ``late`` side output. Windows fire when the watermark passes their end, and their state is
    freed once no update can reach them, so memory is bounded by the open windows.
    """

    def __init__(self, node: WindowAggregate, metrics: OperatorMetrics,
                 side_outputs: SideOutputs) -> None:
        super().__init__(node, metrics, side_outputs)
        unit = node.time_unit
        self.size = to_unit(node.window.size_ns, unit)
        self.slide = to_unit(node.window.slide_ns, unit)
        self.lateness = to_unit(node.allowed_lateness_ns, unit)
        self.open: dict[int, _OpenWindow] = {}  # by window start
        _warm_up()

    # --- per batch -------------------------------------------------------------------------

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        n = batch.num_rows
        if not n:
            return []
        ts = event_times(batch.column(self.node.time_col))
        wm = batch.column(WATERMARK_COLUMN).to_numpy()
        data = self.partials.prepare(batch)
        per_row = self.size // self.slide
        self.metrics.add(rows_expanded=n * (per_row - 1))
        self.t_max = self.wm_max = np.iinfo(np.int64).min
        fused = per_row == 1 and self.node.key_filter is None and not self.partials.sketches
        done = 0
        if fused and len(self.partials.columns) <= 1 and not self.partials.quantile_columns:
            # Integer keys seen before: looked up in the same pass, no key ids written.
            known = self.keys.integer_table(batch.select(list(self.node.keys)))
            if known is not None:
                done = self._fused_runs(known[0], data, ts, wm, known[1:])
                if done:
                    if done == n:
                        return self._after_batch([], [], batch, np.zeros(0, np.int64), wm, n)
                    batch, ts, wm = batch.slice(done), ts[done:], wm[done:]
                    data = {name: (values[done:], valid[done:])
                            for name, (values, valid) in data.items()}
                    n -= done
        key_ids = self.keys.encode(batch.select(list(self.node.keys)))
        self.partials.ensure_keys(len(self.keys))
        done = self._fused_runs(key_ids, data, ts, wm) if fused else 0
        if done:
            if done == n:
                return self._after_batch([], [], batch, key_ids, wm, n)
            batch, ts, wm, key_ids = batch.slice(done), ts[done:], wm[done:], key_ids[done:]
            data = {name: (values[done:], valid[done:]) for name, (values, valid) in data.items()}
            n -= done
        excluded = None
        if self.node.key_filter is not None:  # groups the plan filters out after the window
            keep = self.node.key_filter.evaluate(batch)
            keep = (np.full(n, keep.as_py() is True) if isinstance(keep, pa.Scalar)
                    else keep.fill_null(False).to_numpy(zero_copy_only=False))
            excluded = ~keep if not keep.all() else None
        late: list[tuple[np.ndarray, np.ndarray]] = []
        updates: list[tuple[np.ndarray, np.ndarray]] = []
        aggregated = 0
        start = np.empty(n, dtype=np.int64)
        kind = np.empty(n, dtype=np.int8)
        for j in range(per_row):  # the windows a row belongs to: one for tumbling
            counts, low, high, high_t, high_wm = _classify(ts, wm, self.slide, self.size,
                                                           self.lateness, j, start, kind)
            if excluded is not None:  # decided lateness first: late rows stay late
                dropped = excluded & (kind != 2)
                kind[dropped] = 3
                counts = np.bincount(kind, minlength=4)[:3]
                normal = kind == 0
                if normal.any():
                    low, high = int(start[normal].min()), int(start[normal].max())
                self.metrics.add(rows_filtered=int(dropped.sum()))
            if counts[0] == n:
                self._accumulate(start, low, high, key_ids, data, None)
            elif counts[0]:
                self._accumulate(start, low, high, key_ids, data, kind == 0)
            aggregated += int(counts[0] + counts[1])
            for code, out in ((2, late), (1, updates)):
                if counts[code]:
                    rows = np.flatnonzero(kind == code)
                    out.append((rows + j * n, start[rows]))  # sortable: row, then window
        self.metrics.add(rows_aggregated=aggregated)
        self.t_max = builtins.max(self.t_max, int(high_t))
        self.wm_max = builtins.max(self.wm_max, int(high_wm))
        return self._after_batch(late, updates, batch, key_ids, wm, n)

    def _fused_runs(self, keys: np.ndarray, data: dict, ts: np.ndarray, wm: np.ndarray,
                    table: tuple[np.ndarray, int] | None = None) -> int:
        """Aggregate the leading rows of a batch that come in time order, each run all in
        one window the watermark has not passed, classified and aggregated in one fused pass
        per run (``keys``: ids, or key values with the dictionary's ``table``); returns how
        many rows were taken (the rest go through classification)."""
        done, n = 0, len(ts)
        while done < n:
            period = int(ts[done]) // self.slide * self.slide
            if period + self.size <= int(wm[done]):
                break
            taken, high_t, high_wm = self.partials.accumulate_window(
                self._window(period).row, keys[done:],
                {name: (values[done:], valid[done:]) for name, (values, valid) in data.items()},
                ts[done:], wm[done:], period, period + self.slide, period + self.size, table)
            if not taken:
                break
            done += taken
            self.t_max = builtins.max(self.t_max, high_t)
            self.wm_max = builtins.max(self.wm_max, high_wm)
        if done:
            self.metrics.add(rows_aggregated=done)
        return done

    def _after_batch(self, late: list, updates: list, batch: pa.RecordBatch,
                     key_ids: np.ndarray, wm: np.ndarray, n: int) -> list[pa.RecordBatch]:
        """Late rows to their side output, the watermark moved (largest event time and row
        watermark of the batch: ``t_max``, ``wm_max``), windows fired, updates emitted,
        state freed."""
        if late:
            self._side_output_late(batch, *self._in_arrival_order(late, n), wm)
        self.watermark = builtins.max(self.watermark, self.t_max - self.bound, self.wm_max)
        out = self._fire(self.watermark)
        if updates:
            out.append(self._updates(batch, key_ids, *self._in_arrival_order(updates, n)))
        self._free(self.watermark)
        return out

    @staticmethod
    def _in_arrival_order(parts: list[tuple[np.ndarray, np.ndarray]], n: int
                          ) -> tuple[np.ndarray, np.ndarray]:
        """(row, window start) pairs ordered by row, then by window."""
        order_key = np.concatenate([p for p, _ in parts])
        starts = np.concatenate([s for _, s in parts])
        order = np.lexsort((order_key // n, order_key % n))
        return order_key[order] % n, starts[order]

    def _window(self, start: int) -> _OpenWindow:
        window = self.open.get(start)
        if window is None:
            window = self.open[start] = _OpenWindow(self.partials.new_row())
        return window

    def _accumulate(self, start: np.ndarray, low: int, high: int, key_ids: np.ndarray,
                    data: dict, take: np.ndarray | None) -> None:
        if low == high:  # the usual case: the whole batch is in one window
            self.partials.accumulate(self._window(low).row, key_ids, data, take)
            return
        index = (start - low) // self.slide
        if take is not None:
            index[~take] = 0
        if (high - low) // self.slide < 4 * len(index):
            present = np.flatnonzero(np.bincount(index if take is None else index[take]))
            rows = np.zeros(int(present.max()) + 1, dtype=np.int64)
            rows[present] = [self._window(low + int(i) * self.slide).row for i in present]
        else:  # windows far apart (a bad clock without a skew guard): no table that large
            present, index = np.unique(index, return_inverse=True)
            rows = np.array([self._window(low + int(i) * self.slide).row for i in present])
        self.partials.accumulate(rows[index], key_ids, data, take)

    def on_watermark(self, timestamp: int) -> list[pa.RecordBatch]:
        return self._fire(timestamp)

    def state_size(self) -> tuple[int, int]:
        """Groups with state (window × key, over the windows still open) and the bytes of
        their partial aggregates."""
        groups = sum(len(self.partials.present(w.row)) for w in self.open.values())
        return groups, self.partials.nbytes

    def own_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The open windows: start, row of slots, fired, revisions emitted per key."""
        self._compact()  # no rows of windows gone in the snapshot
        starts = sorted(self.open)
        windows = [self.open[s] for s in starts]
        return {}, {
            "open.start": np.array(starts, np.int64),
            "open.row": np.array([w.row for w in windows], np.int64),
            "open.fired": np.array([w.fired for w in windows], np.bool_),
            "open.revisions": np.concatenate(
                [w.revisions for w in windows] or [np.zeros(0, np.int32)]),
            "open.revision_counts": np.array([len(w.revisions) for w in windows], np.int64)}

    def load_own_state(self, reader: SnapshotReader) -> None:
        starts = reader.array("open.start", np.int64)
        rows = reader.array("open.row", np.int64)
        fired = reader.array("open.fired", np.bool_)
        revisions = reader.array("open.revisions", np.int32)
        lengths = reader.array("open.revision_counts", np.int64)
        reader.check(len(starts) == len(rows) == len(fired) == len(lengths)
                     and len(np.unique(starts)) == len(starts)
                     and len(np.unique(rows)) == len(rows)
                     and in_range(rows, 0, self.partials.rows)
                     and not set(rows.tolist()) & set(self.partials.free_rows)
                     and (lengths >= 0).all() and int(lengths.sum()) == len(revisions)
                     and self.partials.key_capacity >= len(self.keys),
                     "open windows do not match their slots")
        self.open = {}
        for start, row, was_fired, part in zip(
                starts.tolist(), rows.tolist(), fired.tolist(),
                np.split(revisions, np.cumsum(lengths)[:-1]) if len(lengths) else [],
                strict=True):
            self.open[start] = _OpenWindow(row, was_fired, part.copy())

    def finish(self) -> list[pa.RecordBatch]:
        """End of a bounded input: every open window fires."""
        out = self._fire(np.iinfo(np.int64).max)
        self._free(np.iinfo(np.int64).max)
        return out

    # --- firing, updates, freeing -------------------------------------------------------------

    def _fire(self, watermark: int) -> list[pa.RecordBatch]:
        ready = sorted(s for s, w in self.open.items()
                       if not w.fired and s + self.size <= watermark)
        if not ready:
            return []
        starts, rows, keys = [], [], []
        for start in ready:  # one result batch for all of them: cheap when many fire at once
            window = self.open[start]
            present = self.partials.present(window.row)
            starts.append(np.full(len(present), start))
            rows.append(np.full(len(present), window.row))
            keys.append(present)
        keys = np.concatenate(keys)
        batch = self._batch(np.concatenate(starts), keys,
                            self.partials.arrays(np.concatenate(rows), keys),
                            np.zeros(len(keys), dtype=np.int32))
        for start, present in zip(ready, np.split(keys, np.cumsum([len(s) for s in starts])),
                                  strict=False):
            window = self.open[start]
            window.fired = True
            if self.lateness:
                window.set_revision(present, 0)
            else:
                self.partials.release(window.row)
                del self.open[start]
        table = sort_by_window_and_keys(pa.Table.from_batches([batch]), self.node.keys)
        return table.combine_chunks().to_batches()

    def _updates(self, batch: pa.RecordBatch, key_ids: np.ndarray, rows: np.ndarray,
                 starts: np.ndarray) -> pa.RecordBatch:
        """One updated result per row inside the allowed lateness, in arrival order."""
        data = self.partials.prepare(batch)
        results: list[dict[str, object]] = []
        revisions = []
        for row, start in zip(rows.tolist(), starts.tolist(), strict=True):
            # Rare by construction (rows behind the watermark but within the lateness).
            window = self._window(start)
            window.fired = True
            key = key_ids[row:row + 1]
            self.partials.accumulate(window.row, key, {
                name: (values[row:row + 1], valid[row:row + 1])
                for name, (values, valid) in data.items()})
            # A group first seen through a late-but-allowed row gets its first result (0).
            revision = window.revision(int(key[0])) + 1
            window.set_revision(key, revision)
            revisions.append(revision)
            results.append(self.partials.results(window.row, int(key[0])))
        aggs = {name: pa.array([r[name] for r in results], self.schema.field(name).type)
                for name, _ in self.node.aggs}
        return self._batch(starts, key_ids[rows], aggs, np.array(revisions, dtype=np.int32))

    def _free(self, watermark: int) -> None:
        """Forget windows that no row can reach any more (past end + allowed lateness)."""
        for start in [s for s, w in self.open.items()
                      if w.fired and s + self.size + self.lateness <= watermark]:
            self.partials.release(self.open.pop(start).row)
        if len(self.partials.free_rows) > builtins.max(_SPARE_ROWS, len(self.open)):
            self._compact()

    def _compact(self) -> None:
        """Let go of the rows of windows gone (a batch spanning many windows leaves many)."""
        starts = sorted(self.open)
        mapping = self.partials.compact([self.open[s].row for s in starts])
        for start in starts:
            self.open[start].row = mapping[self.open[start].row]

    def _batch(self, starts: np.ndarray, keys: np.ndarray, aggs: dict[str, pa.Array],
               revisions: np.ndarray) -> pa.RecordBatch:
        starts = starts.astype(np.int64)
        columns = {"window_start": pa.array(starts).cast(self.time_type),
                   "window_end": pa.array(starts + self.size).cast(self.time_type),
                   **dict(zip(self.node.keys, self.keys.values(keys), strict=True)),
                   **aggs,
                   "revision": pa.array(revisions, pa.int32()),
                   "is_update": pa.array(revisions > 0)}
        return pa.RecordBatch.from_arrays(
            [columns[f.name].cast(f.type) for f in self.schema], schema=self.schema)

    def _side_output_late(self, batch: pa.RecordBatch, rows: np.ndarray, starts: np.ndarray,
                          wm: np.ndarray) -> None:
        self.side_output_late(batch, rows, starts, starts + self.size, wm,
                              f"the watermark had passed window_end + allowed lateness "
                              f"({format_duration(self.node.allowed_lateness_ns)})")
