"""Fraud detection: stateful per-account rules that raise alerts as transactions arrive.

Three rules, evaluated per transaction in arrival order against the account's state, by one
numba kernel over the batch's column arrays (:class:`FraudRules`):

* **velocity**: more than ``max_count`` transactions of the account within ``window``
  (earlier transactions count when ``t - earlier < window``); evidence: the count.
* **amount**: z-score of the amount against the account's running mean and sample standard
  deviation (Welford) of its earlier amounts, once it has ``min_history`` of them; alert when
  z > ``z_threshold``. Every transaction updates the running statistics after it is scored.
  With zero spread there is no score. ``log_amount=True`` scores log(amount) instead, which
  suits lognormal spending better (fewer false alarms).
* **geo**: great-circle distance from the account's last known location divided by the
  elapsed time (at least ``min_elapsed``, so two transactions in the same instant at
  different places are judged as if a second apart) above ``max_speed_kmh``. A transaction
  flagged as geo-impossible does not move the account's last known location, so the
  card holder's next genuine transaction at home is not flagged as well.

Severity is the measure divided by its threshold (1 at the threshold, rising with it).
Rows with a null key go to ``null_key``; null amounts or times, and missing, NaN or
out-of-range coordinates go to ``invalid``; a transaction older than the account's previous
one goes to ``invalid`` too (reason: out of order) and does not change the state.

Examples
--------
>>> import sabot_lab as sl
>>> from sabot_lab.datasets import transactions
>>> txns = transactions(20_000, n_accounts=1_000)
>>> result = detect_fraud(sl.Stream.from_table(txns, batch_size=5_000)).run()
>>> sorted(set(result.table["rule"].to_pylist()))
['amount', 'geo', 'velocity']
>>> result.table.column_names[:6]
['account_id', 'txn_id', 'ts', 'rule', 'severity', 'count_in_window']
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sabot_lab.plan.windows import parse_duration, to_unit
from sabot_lab.process import ProcessFunction
from sabot_lab.state import KeyedState, StateBlock, StateSpec
from sabot_lab.stream import Stream

__all__ = ["RULES", "FraudRules", "detect_fraud"]

RULES = ("velocity", "amount", "geo")
_EMPTY = np.iinfo(np.int64).min
_EARTH_KM = 6371.0088
_VELOCITY, _AMOUNT, _GEO, _OUT_OF_ORDER = 1, 2, 4, 8


# Per-account state, two rows of a few numbers each (one or two cache lines, where eight
# separate arrays would cost eight cache misses per transaction):
#   times: [last event time, ring of the last ``max_count`` event times]
#   stats: [transactions seen, next ring position, mean, M2 (Welford), last lat, last lon]
_SEEN, _NEXT, _MEAN, _M2, _LAT, _LON = range(6)


@numba.njit(nogil=True, cache=True)
def _rules(slots, ts, amount, lat, lon, times, stats,  # pragma: no cover - numba
           window, max_count, min_history, z_threshold, log_amount, max_speed_kmh,
           min_elapsed, hour,
           flags, count, z, km, kmh, prev_lat, prev_lon):
    """Evaluate every row in order against its account's state (``slots``), updating it.

    Outputs per row: ``flags`` (bits: 1 velocity, 2 amount, 4 geo, 8 out of order) and the
    evidence.
    """
    for i in range(slots.shape[0]):
        s = slots[i]
        t = ts[i]
        flags[i] = 0
        z[i] = np.nan
        km[i] = np.nan
        kmh[i] = np.nan
        prev_lat[i] = np.nan
        prev_lon[i] = np.nan
        n = int(stats[s, _SEEN])
        if n > 0 and t < times[s, 0]:
            flags[i] = _OUT_OF_ORDER
            count[i] = 0
            continue
        # velocity: this one plus the earlier ones within the window
        c = 1
        for j in range(1, max_count + 1):
            if times[s, j] != _EMPTY and t - times[s, j] < window:
                c += 1
        count[i] = c
        if c > max_count:
            flags[i] |= _VELOCITY
        position = int(stats[s, _NEXT])
        times[s, 1 + position] = t
        stats[s, _NEXT] = (position + 1) % max_count
        # amount: score against the history, then add to it (Welford)
        x = np.log(amount[i]) if log_amount else amount[i]
        mean = stats[s, _MEAN]
        if n >= min_history and n > 1:
            std = np.sqrt(stats[s, _M2] / (n - 1))
            if std > 0:
                z[i] = (x - mean) / std
                if z[i] > z_threshold:
                    flags[i] |= _AMOUNT
        delta = x - mean
        mean += delta / (n + 1)
        stats[s, _MEAN] = mean
        stats[s, _M2] += delta * (x - mean)
        # geo: speed from the last known location
        moved = True
        if n > 0:
            last_lat, last_lon = stats[s, _LAT], stats[s, _LON]
            p1, p2 = np.radians(last_lat), np.radians(lat[i])
            a = (np.sin((p2 - p1) / 2) ** 2
                 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon[i] - last_lon) / 2) ** 2)
            km[i] = 2 * _EARTH_KM * np.arcsin(min(1.0, np.sqrt(a)))
            kmh[i] = km[i] / (max(t - times[s, 0], min_elapsed) / hour)
            prev_lat[i] = last_lat
            prev_lon[i] = last_lon
            if kmh[i] > max_speed_kmh:
                flags[i] |= _GEO
                moved = False
        if moved:
            stats[s, _LAT] = lat[i]
            stats[s, _LON] = lon[i]
        times[s, 0] = t
        stats[s, _SEEN] = n + 1


def _float(batch: pa.RecordBatch, name: str) -> np.ndarray:
    return batch.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


class FraudRules(ProcessFunction):
    """Velocity, amount-anomaly and geo-impossible rules per account (the fast path).

    Parameters
    ----------
    window, max_count
        Velocity: alert when more than ``max_count`` transactions fall within ``window``.
    min_history, z_threshold, log_amount
        Amount: alert when the z-score exceeds ``z_threshold`` after ``min_history``
        transactions; ``log_amount`` scores log(amount).
    max_speed_kmh, min_elapsed
        Geo: alert above this speed; elapsed times below ``min_elapsed`` count as it.
    ttl
        Forget accounts idle for this long (``None``: keep them).
    columns
        Names of the (id, time, amount, latitude, longitude) columns.
    """

    name = "fraud_rules"

    def __init__(self, window: str = "60s", max_count: int = 5, min_history: int = 10,
                 z_threshold: float = 3.0, log_amount: bool = False,
                 max_speed_kmh: float = 900.0, min_elapsed: str = "1s",
                 ttl: str | None = None,
                 columns: Sequence[str] = ("txn_id", "ts", "amount", "lat", "lon")) -> None:
        if max_count < 1 or min_history < 2:
            raise ValueError("max_count must be >= 1 and min_history >= 2")
        self.window, self.max_count, self.min_history = window, max_count, min_history
        self.z_threshold, self.log_amount = z_threshold, log_amount
        self.max_speed_kmh, self.min_elapsed, self.ttl = max_speed_kmh, min_elapsed, ttl
        self.id_col, self.time_col, self.amount_col, self.lat_col, self.lon_col = columns
        self.columns = tuple(columns)
        self._unit = "ms"

    def __repr__(self) -> str:
        return (f"FraudRules(window={self.window!r}, max_count={self.max_count}, "
                f"min_history={self.min_history}, z_threshold={self.z_threshold}, "
                f"max_speed_kmh={self.max_speed_kmh})")

    def _units(self, unit: str) -> tuple[int, int, int]:
        """(window, min_elapsed, one hour) in the time column's unit."""
        return (to_unit(parse_duration(self.window), unit),
                to_unit(parse_duration(self.min_elapsed), unit),
                to_unit(parse_duration("1h"), unit))

    def state_spec(self) -> StateSpec:
        ttl = None if self.ttl is None else to_unit(parse_duration(self.ttl), self._unit)
        return StateSpec({"times": (np.int64, 1 + self.max_count), "stats": (np.float64, 6)},
                         defaults={"times": _EMPTY}, ttl=ttl)

    def describe_state(self, state: KeyedState) -> pd.DataFrame:
        """The per-account state with named columns (the kernel keeps it packed).

        >>> import sabot_lab as sl
        >>> from sabot_lab.datasets import transactions
        >>> rules = FraudRules()
        >>> result = detect_fraud(sl.Stream.from_table(transactions(5_000, n_accounts=50)),
        ...                       rules).run()
        >>> frame = rules.describe_state(result.keyed_state["1:keyedprocess"])
        >>> list(frame.columns)
        ['account_id', 'transactions', 'mean', 'std', 'last_lat', 'last_lon', 'last_ts', 'recent']
        >>> int(frame["transactions"].sum())
        5000
        """
        table = state.to_table()
        stats = np.asarray(table["stats"].to_pylist(), dtype=float).reshape(-1, 6)
        times = np.asarray(table["times"].to_pylist(), dtype=np.int64).reshape(
            -1, 1 + self.max_count)
        seen = stats[:, _SEEN]
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(stats[:, _M2] / (seen - 1))
        unit = self._unit
        recent = [sorted(t[t != _EMPTY].astype(f"datetime64[{unit}]")) for t in times[:, 1:]]
        return pd.DataFrame({
            "account_id": table["key"].to_numpy(), "transactions": seen.astype(np.int64),
            "mean": stats[:, _MEAN], "std": std, "last_lat": stats[:, _LAT],
            "last_lon": stats[:, _LON], "last_ts": times[:, 0].astype(f"datetime64[{unit}]"),
            "recent": recent}).sort_values("account_id", ignore_index=True)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        time_type = input_schema.field(self.time_col).type
        if pa.types.is_timestamp(time_type):
            self._unit = time_type.unit
        elif not pa.types.is_integer(time_type):
            raise TypeError(f"{self.time_col!r} must be a timestamp or integer milliseconds, "
                            f"it is {time_type}")
        return pa.schema([
            ("account_id", pa.int64()), ("txn_id", input_schema.field(self.id_col).type),
            ("ts", time_type), ("rule", pa.string()), ("severity", pa.float64()),
            ("count_in_window", pa.int32()), ("z_score", pa.float64()),
            ("distance_km", pa.float64()), ("speed_kmh", pa.float64()),
            ("prev_lat", pa.float64()), ("prev_lon", pa.float64()),
            ("detection_latency_ms", pa.float64())])

    def validate(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray] | None:
        checks = [
            (pc.is_null(batch.column(self.time_col)), "null event time"),
            (pc.is_null(batch.column(self.amount_col), nan_is_null=True),
             "null or NaN amount"),
            (pc.less_equal(batch.column(self.amount_col), 0).fill_null(False)
             if self.log_amount else None, "amount <= 0 cannot be scored on a log scale"),
            (pc.or_(pc.is_null(batch.column(self.lat_col), nan_is_null=True),
                    pc.is_null(batch.column(self.lon_col), nan_is_null=True)),
             "missing or NaN coordinates"),
            (pc.or_(pc.greater(pc.abs(batch.column(self.lat_col)), 90),
                    pc.greater(pc.abs(batch.column(self.lon_col)), 180)).fill_null(False),
             "coordinates out of range"),
        ]
        mask = np.zeros(batch.num_rows, dtype=bool)
        reasons = np.full(batch.num_rows, None, dtype=object)
        for check, reason in checks:
            if check is None:
                continue
            hit = check.to_numpy(zero_copy_only=False) & ~mask
            reasons[hit] = reason
            mask |= hit
        return (mask, reasons[mask]) if mask.any() else None

    def process(self, batch: pa.RecordBatch, keys: pa.Array, block: StateBlock
                ) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        n = batch.num_rows
        times = batch.column(self.time_col)
        ts = (times.cast(pa.int64()) if pa.types.is_timestamp(times.type) else times).to_numpy()
        window, min_elapsed, hour = self._units(self._unit)
        flags = np.empty(n, dtype=np.int8)
        count = np.empty(n, dtype=np.int32)
        z, km, kmh, prev_lat, prev_lon = (np.empty(n) for _ in range(5))
        _rules(block.slots, ts.astype(np.int64, copy=False), _float(batch, self.amount_col),
               _float(batch, self.lat_col), _float(batch, self.lon_col),
               block.arrays["times"], block.arrays["stats"], window, self.max_count,
               self.min_history, self.z_threshold, self.log_amount,
               self.max_speed_kmh, min_elapsed, hour,
               flags, count, z, km, kmh, prev_lat, prev_lon)
        rows, rules, severity = [], [], []
        for bit, rule, measure, threshold in (
                (_VELOCITY, "velocity", count, self.max_count),
                (_AMOUNT, "amount", z, self.z_threshold),
                (_GEO, "geo", kmh, self.max_speed_kmh)):
            hit = np.flatnonzero(flags & bit)
            rows.append(hit)
            rules.append(np.full(len(hit), RULES.index(rule), dtype=np.int8))
            severity.append(measure[hit] / threshold)
        rows_all, rule_all = np.concatenate(rows), np.concatenate(rules)
        order = np.lexsort((rule_all, rows_all))  # arrival order, then rule order
        take = rows_all[order]
        taken = pa.array(take, pa.int64())

        def evidence(values: np.ndarray) -> pa.Array:
            picked = values[take]
            return pa.array(picked, mask=np.isnan(picked))

        latency = (time.perf_counter() - start) * 1000
        alerts = pa.RecordBatch.from_arrays([
            keys.take(taken).cast(pa.int64()), batch.column(self.id_col).take(taken),
            times.take(taken),
            pa.DictionaryArray.from_arrays(pa.array(rule_all[order]), pa.array(RULES))
            .cast(pa.string()),
            pa.array(np.concatenate(severity)[order]),
            pa.array(count[take]), evidence(z), evidence(km), evidence(kmh),
            evidence(prev_lat), evidence(prev_lon),
            pa.array(np.full(len(take), latency))],
            schema=self.output_schema(batch.schema))
        out_of_order = (flags & _OUT_OF_ORDER) != 0
        return alerts, out_of_order, np.full(int(out_of_order.sum()),
                                             "event time earlier than the account's previous "
                                             "transaction (out of order)", dtype=object)


def detect_fraud(transactions: Stream, rules: FraudRules | None = None,
                 account_col: str = "account_id", state: str = "memory",
                 state_path: str | None = None) -> Stream:
    """Alerts for a stream of transactions: ``transactions.key_by(account).process(rules)``."""
    return transactions.key_by(account_col).process(rules or FraudRules(), state=state,
                                                    state_path=state_path)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: detect fraud in generated transactions, locally or on Dask."""
    from sabot_lab.datasets import transactions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--distributed", action="store_true", help="run on a Dask cluster")
    parser.add_argument("--scheduler", help="scheduler address (default: a LocalCluster)")
    args = parser.parse_args(argv)
    txns = transactions(args.transactions, n_accounts=args.accounts)
    job = detect_fraud(Stream.from_table(txns, batch_size=10_000))
    runner = None
    if args.distributed:
        from sabot_lab.runtime.dask import DaskRunner

        runner = DaskRunner(args.scheduler)
    result = job.run(runner)
    alerts = result.table
    truth = txns.filter(pc.field("is_fraud"))
    caught = pc.is_in(truth["txn_id"], alerts["txn_id"])
    print(result)
    print(alerts.group_by("rule").aggregate([("txn_id", "count")]).to_pandas().to_string())
    print(f"fraudulent transactions flagged: {pc.sum(caught).as_py():,} of {truth.num_rows:,}")
    if runner is not None:
        runner.close()


if __name__ == "__main__":
    main()
