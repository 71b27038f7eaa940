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
...           .with_watermark("t", unit="s", out_of_orderness="10s")
...           .window(sl.tumbling("1min")).agg(n=sl.count(), total=sl.sum("v")))
>>> result = stream.run()
>>> result.table.select(["window_start", "n", "total"]).to_pylist()[:2]
[{'window_start': 0, 'n': 3, 'total': 7}, {'window_start': 60, 'n': 1, 'total': 3}]
>>> result.side_outputs["late"].select(["t", "window_start", "late_by"]).to_pylist()
[{'t': 9, 'window_start': 0, 'late_by': 60}]
"""

from __future__ import annotations

import builtins

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.ops.base import Operator
from sabot_lab.plan.nodes import WATERMARK_COLUMN, TopN, Watermark, WindowAggregate
from sabot_lab.plan.windows import parse_duration, to_unit

__all__ = ["TopNOp", "WatermarkOp", "WindowAggregateOp"]

_NO_WATERMARK = np.iinfo(np.int64).min


def event_times(array: pa.Array) -> np.ndarray:
    """Event times as int64 in the column's own unit (null slots hold 0)."""
    if pa.types.is_timestamp(array.type):
        array = array.cast(pa.int64())
    return array.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False)


@numba.njit(nogil=True, cache=True)
def _assign(ts, valid, state, bound, skew, check_skew, watermark, accepted, reason
            ):  # pragma: no cover - numba
    """Per row: the watermark before it; reject null and too-far-future event times.

    ``state`` holds [running maximum of accepted rows, event time of the previous row]. A row
    is too far ahead when it is more than ``skew`` ahead of both: an isolated bad clock is
    rejected, while a genuine jump is confirmed by the next row (only its first row is
    rejected). reason: 0 accepted, 1 null event time, 2 too far ahead.
    """
    running_max = state[0]
    previous = state[1]
    for i in range(ts.shape[0]):
        watermark[i] = running_max - bound if running_max != _NO_WATERMARK else _NO_WATERMARK
        if not valid[i]:
            accepted[i] = False
            reason[i] = 1
            continue
        if (check_skew and running_max != _NO_WATERMARK and ts[i] > running_max + skew
                and (previous == _NO_WATERMARK or ts[i] > previous + skew)):
            accepted[i] = False
            reason[i] = 2
        else:
            accepted[i] = True
            reason[i] = 0
            if ts[i] > running_max:
                running_max = ts[i]
        previous = ts[i]
    state[0] = running_max
    state[1] = previous


def _warm_up() -> None:
    """Load (or compile) the kernel before the first batch, so its one-off cost is not
    counted as the operator's work."""
    for ts in (np.zeros(1, dtype=np.int64), event_times(pa.array([0], pa.int64()))):
        state = np.full(2, _NO_WATERMARK, dtype=np.int64)
        _assign(ts, np.ones(1, dtype=np.bool_), state, 0, 0, False,
                np.empty(1, dtype=np.int64), np.empty(1, dtype=np.bool_),
                np.empty(1, dtype=np.int8))


class WatermarkOp(Operator):
    """Adds the per-row watermark column; rejects rows with unusable event times."""

    node: Watermark
    parallel_safe = False

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        unit = self.node.time_unit
        self.bound = to_unit(parse_duration(self.node.out_of_orderness), unit)
        skew = self.node.max_future_skew
        self.skew = to_unit(parse_duration(skew), unit) if skew is not None else 0
        self.state = np.full(2, _NO_WATERMARK, dtype=np.int64)  # running max, previous row
        self.side_outputs.declare("rejected", self.node.child.schema.append(
            pa.field("reason", pa.string())))
        _warm_up()

    @property
    def watermark(self) -> int:
        """The current watermark (after every row seen so far)."""
        running_max = int(self.state[0])
        return running_max - self.bound if running_max != _NO_WATERMARK else _NO_WATERMARK

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        column = batch.column(self.node.time_col)
        ts = event_times(column)
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        n = batch.num_rows
        watermark = np.empty(n, dtype=np.int64)
        accepted = np.empty(n, dtype=np.bool_)
        reason = np.empty(n, dtype=np.int8)
        _assign(ts, valid, self.state, self.bound, self.skew,
                self.node.max_future_skew is not None, watermark, accepted, reason)
        self.metrics.watermark = self.watermark
        rejected = n - int(accepted.sum())
        if rejected:
            why = np.array(["", "null event time",
                            f"more than {self.node.max_future_skew} ahead of every earlier row "
                            f"and of the row before it"], dtype=object)[reason[~accepted]]
            self.side_outputs.emit("rejected", batch.filter(pa.array(~accepted)).append_column(
                "reason", pa.array(why, pa.string())))
            self.metrics.add(rows_side_output=rejected)
            batch = batch.filter(pa.array(accepted))
            watermark = watermark[accepted]
        return [batch.append_column(WATERMARK_COLUMN, pa.array(watermark))]


def _aggregate(frame: pd.DataFrame, node: WindowAggregate) -> pd.DataFrame:
    """Aggregates per (window_start, keys), sorted by them."""
    groups = frame.groupby(["window_start", *node.keys], dropna=False, sort=True, observed=True)
    out = {}
    for name, agg in node.aggs:
        if agg.function == "count":
            out[name] = groups.size()
        elif agg.function == "quantile":
            out[name] = groups[agg.column].quantile(agg.q, interpolation="linear")
        elif agg.function == "sum":
            out[name] = groups[agg.column].sum(min_count=1)
        else:
            out[name] = getattr(groups[agg.column], agg.function)()
    if not out:
        return groups.size().to_frame("n").drop(columns="n").reset_index()
    return pd.DataFrame(out).reset_index()


class WindowAggregateOp(Operator):
    """Keeps the rows of open windows, aggregates a window when the watermark passes its end.

    State is bounded by the open windows: a window's rows are dropped once the watermark is
    past its end plus the allowed lateness. Aggregation at firing time is vectorized
    (pandas group-by); rows that update an emitted window are rare by construction and are
    handled one by one.
    """

    node: WindowAggregate
    parallel_safe = False

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        unit = self.node.time_unit
        self.size = to_unit(self.node.window.size_ns, unit)
        self.slide = to_unit(self.node.window.slide_ns, unit)
        self.lateness = to_unit(parse_duration(self.node.allowed_lateness), unit)
        self.bound = to_unit(parse_duration(self.node.out_of_orderness), unit)
        self.schema = self.node.schema
        self.time_type = self.schema.field("window_start").type
        self.metrics.aggregates = True
        late_type = pa.duration(unit) if pa.types.is_timestamp(self.time_type) else pa.int64()
        self.side_outputs.declare("late", pa.schema(
            [f for f in self.node.child.schema if f.name != WATERMARK_COLUMN]
            + [pa.field("window_start", self.time_type), pa.field("window_end", self.time_type),
               pa.field("late_by", late_type)]))
        self.columns = list(dict.fromkeys(
            [*self.node.keys, *(a.column for _, a in self.node.aggs if a.column)]))
        self.open: list[pd.DataFrame] = []      # rows of windows not yet emitted
        self.open_first_end = np.iinfo(np.int64).max  # earliest end among open windows
        self.emitted: list[pd.DataFrame] = []   # rows of emitted windows still within lateness
        self.revisions: dict[tuple, int] = {}
        self.watermark = _NO_WATERMARK

    def _expand(self, batch: pa.RecordBatch) -> pd.DataFrame:
        """One row per (row, window it belongs to), with window_start and the row watermark."""
        ts = event_times(batch.column(self.node.time_col))
        first = np.floor_divide(ts, self.slide) * self.slide
        k = self.size // self.slide
        frame = batch.select(self.columns).to_pandas() if self.columns else pd.DataFrame(
            index=range(batch.num_rows))
        frame["_row"] = np.arange(batch.num_rows)
        frame["_wm"] = batch.column(WATERMARK_COLUMN).to_numpy()
        if k == 1:
            frame["window_start"] = first
            return frame
        expanded = frame.loc[np.repeat(frame.index.to_numpy(), k)].reset_index(drop=True)
        expanded["window_start"] = np.repeat(first, k) - np.tile(np.arange(k), len(first)) * (
            self.slide)
        return expanded

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        frame = self._expand(batch)
        self.metrics.add(rows_expanded=len(frame) - batch.num_rows)
        end = frame["window_start"].to_numpy() + self.size
        wm = frame["_wm"].to_numpy()
        late = end + self.lateness <= wm
        update = (end <= wm) & ~late
        normal = ~(late | update)
        self.metrics.add(rows_aggregated=int(normal.sum() + update.sum()))
        if late.any():
            self._side_output_late(batch, frame[late], wm[late] - end[late])
        if normal.any():
            self.open.append(frame[normal])
            first_end = int(frame["window_start"].to_numpy()[normal].min()) + self.size
            self.open_first_end = builtins.min(self.open_first_end, first_end)
        ts = event_times(batch.column(self.node.time_col))
        if len(ts):
            self.watermark = builtins.max(self.watermark, int(ts.max()) - self.bound)
        out = self._fire(self.watermark)
        if update.any():
            out.append(self._updates(frame[update]))
        self._free(self.watermark)
        return [b for b in out if b.num_rows]

    def on_watermark(self, timestamp: int) -> list[pa.RecordBatch]:
        return self._fire(timestamp)

    def finish(self) -> list[pa.RecordBatch]:
        """End of a bounded input: every open window fires."""
        return [b for b in self._fire(np.iinfo(np.int64).max) if b.num_rows]

    def _fire(self, watermark: int) -> list[pa.RecordBatch]:
        if not self.open or watermark < self.open_first_end:
            return []  # nothing can fire: leave the buffered rows alone
        rows = pd.concat(self.open, ignore_index=True)
        ends = rows["window_start"].to_numpy() + self.size
        ready = ends <= watermark
        self.open = [rows[~ready]] if (~ready).any() else []
        self.open_first_end = int(ends[~ready].min()) if (~ready).any() else np.iinfo(
            np.int64).max
        firing = rows[ready]
        if self.lateness:  # only windows that late rows may still update keep their rows
            self.emitted.append(firing)
        result = _aggregate(firing, self.node)
        if self.lateness:  # updates can follow: remember which groups were emitted
            group_cols = ["window_start", *self.node.keys]
            for key in result[group_cols].itertuples(index=False, name=None):
                self.revisions[key] = 0
        return [self._to_batch(result, revision=0)]

    def _updates(self, rows: pd.DataFrame) -> pa.RecordBatch:
        """One updated result per late-but-allowed row, in arrival order."""
        history = pd.concat(self.emitted, ignore_index=True) if self.emitted else rows.iloc[:0]
        out = []
        group_cols = ["window_start", *self.node.keys]
        for i in range(len(rows)):  # rare: rows inside the allowed lateness only
            row = rows.iloc[[i]]
            history = pd.concat([history, row], ignore_index=True)
            same = np.ones(len(history), dtype=bool)
            for c in group_cols:
                value = row[c].iloc[0]
                same &= (history[c] == value).to_numpy() if not pd.isna(value) else (
                    history[c].isna().to_numpy())
            key = tuple(row[c].iloc[0] for c in group_cols)
            # A group first seen through a late-but-allowed row gets its first result (0).
            self.revisions[key] = self.revisions.get(key, -1) + 1
            result = _aggregate(history[same], self.node)
            result["revision"] = self.revisions[key]
            out.append(result)
        self.emitted = [history]
        return self._to_batch(pd.concat(out, ignore_index=True), revision=None)

    def _free(self, watermark: int) -> None:
        """Forget windows past their allowed lateness."""
        if not self.emitted:
            return
        first_expiry = builtins.min(int(f["window_start"].min()) for f in self.emitted if len(f))\
            if any(len(f) for f in self.emitted) else np.iinfo(np.int64).max
        if watermark < first_expiry + self.size + self.lateness:
            return  # no emitted window is past its allowed lateness yet
        rows = pd.concat(self.emitted, ignore_index=True)
        keep = (rows["window_start"].to_numpy() + self.size + self.lateness) > watermark
        self.emitted = [rows[keep]] if keep.any() else []
        if not keep.all():
            gone = set(rows.loc[~keep, "window_start"])
            self.revisions = {k: v for k, v in self.revisions.items() if k[0] not in gone}

    def _to_batch(self, frame: pd.DataFrame, revision: int | None) -> pa.RecordBatch:
        if revision is not None:
            frame["revision"] = revision
        frame["is_update"] = frame["revision"] > 0
        frame["window_end"] = frame["window_start"] + self.size
        arrays = []
        for field in self.schema:
            values = frame[field.name]
            if field.name in ("window_start", "window_end"):
                arrays.append(pa.array(values.to_numpy(np.int64)).cast(self.time_type))
            else:
                arrays.append(pa.Array.from_pandas(values).cast(field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _side_output_late(self, batch: pa.RecordBatch, rows: pd.DataFrame, late_by: np.ndarray
                          ) -> None:
        source_rows = pa.array(rows["_row"].to_numpy())
        late = batch.take(source_rows).drop_columns([WATERMARK_COLUMN])
        start = rows["window_start"].to_numpy(np.int64)
        late = late.append_column("window_start", pa.array(start).cast(self.time_type))
        late = late.append_column("window_end",
                                  pa.array(start + self.size).cast(self.time_type))
        late_type = pa.duration(self.node.time_unit) if pa.types.is_timestamp(
            self.time_type) else pa.int64()
        late = late.append_column("late_by", pa.array(late_by.astype(np.int64)).cast(late_type))
        self.side_outputs.emit("late", late)
        self.metrics.add(rows_side_output=len(rows))


class TopNOp(Operator):
    """Ranks the groups of each emitted window and keeps the first ``n``.

    A window's groups are emitted together (one batch per firing), so each batch holds whole
    windows and is ranked on its own.
    """

    node: TopN
    parallel_safe = False

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        frame = batch.to_pandas()
        keys = [k for k in self.node.child.keys if k != self.node.by]
        order = [*self.node.window_keys, self.node.by, *keys]
        ascending = [True] * len(self.node.window_keys) + [False] + [True] * len(keys)
        frame = frame.sort_values(order, ascending=ascending, kind="stable",
                                  na_position="last")
        frame["rank"] = frame.groupby(list(self.node.window_keys), sort=False).cumcount() + 1
        kept = frame[frame["rank"] <= self.node.n]
        self.metrics.add(rows_filtered=len(frame) - len(kept))
        table = pa.Table.from_pandas(kept, preserve_index=False)
        return [table.cast(self.node.schema).combine_chunks().to_batches()[0]] if len(kept) \
            else [pa.RecordBatch.from_pylist([], schema=self.node.schema)]
