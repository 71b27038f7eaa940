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
``detection_latency_ms`` on an alert is the time the rules took for the batch it came in
(from the batch reaching the rules to its alerts being built).
Rows with a null key go to ``null_key``; null times, null, NaN or infinite amounts, and
missing, NaN or out-of-range coordinates go to ``invalid``; a transaction older than the
account's previous one goes to ``invalid`` too (reason: out of order) and does not change the
state.

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

from sabot_lab.kernels import PREFETCH_DISTANCE, prefetch
from sabot_lab.plan.windows import parse_duration, to_unit
from sabot_lab.process import ProcessFunction
from sabot_lab.state import KeyedState, StateBlock, StateSpec
from sabot_lab.stream import Stream

__all__ = ["RULES", "FraudRules", "detect_fraud"]

RULES = ("velocity", "amount", "geo")
_EMPTY = np.iinfo(np.int64).min
_EARTH_KM = 6371.0088


# Per-account state, two rows of a few numbers each (one or two cache lines, where eight
# separate arrays would cost eight cache misses per transaction):
#   times: [last event time, ring of the last ``max_count`` event times]
#   stats: [transactions seen, next ring position, mean, M2 (Welford), last lat, last lon]
_SEEN, _NEXT, _MEAN, _M2, _LAT, _LON = range(6)


_RULE_NAMES = pa.array(RULES)
_REASONS = ("", "null, NaN or infinite amount", "amount <= 0 cannot be scored on a log scale",
            "missing or NaN coordinates", "coordinates out of range",
            "event time earlier than the account's previous transaction (out of order)")


@numba.njit(nogil=True, cache=True)
def _rules(slots, ts, amount, lat, lon, times, stats,  # pragma: no cover - numba
           window, max_count, min_history, z_threshold, log_amount, max_speed_kmh,
           min_elapsed, hour, ttl, refused,
           alert_row, alert_rule, severity, count, z, km, kmh, prev_lat, prev_lon):
    """Evaluate every row in order against its account's state (``slots``), updating it,
    and write one alert per (row, rule) that fires, in arrival order.

    A row that cannot be scored gets ``refused[i]`` > 0 (an index into ``_REASONS``) and
    leaves the state alone. Returns the number of alerts written.
    """
    n_alerts = 0
    n_rows = slots.shape[0]
    for i in range(n_rows):
        if i + PREFETCH_DISTANCE < n_rows:  # the state is read at random: overlap the loads
            prefetch(times, slots[i + PREFETCH_DISTANCE])
            prefetch(stats, slots[i + PREFETCH_DISTANCE])
        x = amount[i]
        if x != x or np.isinf(x):  # an infinite amount would poison the running mean
            refused[i] = 1
            continue
        if log_amount and x <= 0:
            refused[i] = 2
            continue
        if lat[i] != lat[i] or lon[i] != lon[i]:
            refused[i] = 3
            continue
        if abs(lat[i]) > 90 or abs(lon[i]) > 180:
            refused[i] = 4
            continue
        s = slots[i]
        t = ts[i]
        n = int(stats[s, _SEEN])
        if n > 0 and t < times[s, 0]:
            refused[i] = 5
            continue
        if n > 0 and ttl > 0 and t - times[s, 0] > ttl:  # idle too long: start afresh
            n = 0
            stats[s, :] = 0.0
            times[s, :] = _EMPTY
        refused[i] = 0
        # velocity: this one plus the earlier ones within the window
        c = 1
        for j in range(1, max_count + 1):
            if times[s, j] != _EMPTY and t - times[s, j] < window:
                c += 1
        position = int(stats[s, _NEXT])
        times[s, 1 + position] = t
        stats[s, _NEXT] = (position + 1) % max_count
        # amount: score against the history, then add to it (Welford)
        if log_amount:
            x = np.log(x)
        mean = stats[s, _MEAN]
        score = np.nan
        if n >= min_history and n > 1:
            std = np.sqrt(stats[s, _M2] / (n - 1))
            if std > 0:
                score = (x - mean) / std
        delta = x - mean
        mean += delta / (n + 1)
        stats[s, _MEAN] = mean
        stats[s, _M2] += delta * (x - mean)
        # geo: speed from the last known location
        distance, speed, from_lat, from_lon = np.nan, np.nan, np.nan, np.nan
        if n > 0:
            from_lat, from_lon = stats[s, _LAT], stats[s, _LON]
            p1, p2 = np.radians(from_lat), np.radians(lat[i])
            a = (np.sin((p2 - p1) / 2) ** 2
                 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon[i] - from_lon) / 2) ** 2)
            distance = 2 * _EARTH_KM * np.arcsin(min(1.0, np.sqrt(a)))
            speed = distance / (max(t - times[s, 0], min_elapsed) / hour)
        geo = speed > max_speed_kmh
        if not geo:  # a geo-impossible transaction does not move the account
            stats[s, _LAT] = lat[i]
            stats[s, _LON] = lon[i]
        times[s, 0] = t
        stats[s, _SEEN] = n + 1
        for rule in range(3):
            if rule == 0 and c > max_count:
                level = c / max_count
            elif rule == 1 and score > z_threshold:
                level = score / z_threshold
            elif rule == 2 and geo:
                level = speed / max_speed_kmh
            else:
                continue
            alert_row[n_alerts] = i
            alert_rule[n_alerts] = rule
            severity[n_alerts] = level
            count[n_alerts] = c
            z[n_alerts] = score
            km[n_alerts] = distance
            kmh[n_alerts] = speed
            prev_lat[n_alerts] = from_lat
            prev_lon[n_alerts] = from_lon
            n_alerts += 1
    return n_alerts


def _float(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column as float64 with NaN for nulls (zero-copy when it already is one)."""
    column = batch.column(name)
    if column.type != pa.float64():
        column = column.cast(pa.float64())
    if column.null_count:
        column = column.fill_null(np.nan)
    return column.to_numpy(zero_copy_only=False)


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
        Forget accounts idle for this long (``None``: keep them): a transaction more than
        ``ttl`` after its account's previous one starts from a fresh state, row by row (so
        alerts do not depend on batch sizes), and idle accounts are removed from the store.
    columns
        Names of the (id, time, amount, latitude, longitude) columns. Amounts and
        coordinates are numbers (integer or floating point); the time is a timestamp or
        integer milliseconds.
    account_col
        The account column (the key): alerts carry it as ``account_id``, of its type.
    """

    name = "fraud_rules"

    def __init__(self, window: str = "60s", max_count: int = 5, min_history: int = 10,
                 z_threshold: float = 3.0, log_amount: bool = False,
                 max_speed_kmh: float = 900.0, min_elapsed: str = "1s",
                 ttl: str | None = None,
                 columns: Sequence[str] = ("txn_id", "ts", "amount", "lat", "lon"),
                 account_col: str = "account_id") -> None:
        if max_count < 1 or min_history < 2:
            raise ValueError("max_count must be >= 1 and min_history >= 2")
        self.window, self.max_count, self.min_history = window, max_count, min_history
        # Floats always: an int threshold would compile another numba specialisation.
        self.z_threshold, self.log_amount = float(z_threshold), bool(log_amount)
        self.max_speed_kmh, self.min_elapsed, self.ttl = float(max_speed_kmh), min_elapsed, ttl
        self.id_col, self.time_col, self.amount_col, self.lat_col, self.lon_col = columns
        self.account_col = account_col
        self.columns = (account_col, *columns)
        self._unit = "ms"
        self._constants: tuple | None = None  # per-batch constants, set on the first batch
        self._buffers: tuple[np.ndarray, ...] = ()  # the kernel's output, reused per batch

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
        for name in (self.amount_col, self.lat_col, self.lon_col):
            kind = input_schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                    or pa.types.is_decimal(kind)):
                raise TypeError(
                    f"{name!r} must be numeric (integer or floating point), it is {kind}; "
                    f"convert it first, e.g. .with_columns({name}=sl.col({name!r})"
                    f".cast('float64'))")
        return pa.schema([
            ("account_id", input_schema.field(self.account_col).type),
            ("txn_id", input_schema.field(self.id_col).type),
            ("ts", time_type), ("rule", pa.string()), ("severity", pa.float64()),
            ("count_in_window", pa.int32()), ("z_score", pa.float64()),
            ("distance_km", pa.float64()), ("speed_kmh", pa.float64()),
            ("prev_lat", pa.float64()), ("prev_lon", pa.float64()),
            ("detection_latency_ms", pa.float64())])

    def validate(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray] | None:
        """Null event times; the other checks (amounts, coordinates, order) run in the
        kernel, row by row."""
        times = batch.column(self.time_col)
        if not times.null_count:
            return None
        return pc.is_null(times).to_numpy(zero_copy_only=False), np.array("null event time")

    def process(self, batch: pa.RecordBatch, keys: pa.Array, block: StateBlock
                ) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        n = batch.num_rows
        times = batch.column(self.time_col)
        ts = (times.view(pa.int64()) if pa.types.is_timestamp(times.type) else times).to_numpy()
        if self._constants is None or not self._constants[0].equals(batch.schema):
            self._constants = (batch.schema, *self._units(self._unit),
                               self.output_schema(batch.schema), self.state_spec().ttl or 0)
        _, window, min_elapsed, hour, schema, ttl = self._constants
        if not self._buffers or len(self._buffers[0]) < n:
            # Kept between batches: fresh arrays this size cost page faults every batch.
            self._buffers = (np.empty(n, dtype=np.int8), np.empty(3 * n, dtype=np.int64),
                             np.empty(3 * n, dtype=np.int8), np.empty(3 * n, dtype=np.int32),
                             *(np.empty(3 * n) for _ in range(6)))
        refused, alert_row, alert_rule, count, *evidence = self._buffers
        refused = refused[:n]
        found = _rules(block.slots, ts.astype(np.int64, copy=False),
                       _float(batch, self.amount_col), _float(batch, self.lat_col),
                       _float(batch, self.lon_col), block.arrays["times"],
                       block.arrays["stats"], window, self.max_count, self.min_history,
                       self.z_threshold, self.log_amount, self.max_speed_kmh, min_elapsed, hour,
                       ttl, refused, alert_row, alert_rule, evidence[0], count, *evidence[1:])
        picked = batch.select([self.account_col, self.id_col, self.time_col]).take(
            pa.array(alert_row[:found]))
        severity, *measures = (values[:found].copy() for values in evidence)  # buffers reused
        alerts = pa.RecordBatch.from_arrays([
            *picked.columns, _RULE_NAMES.take(pa.array(alert_rule[:found])),
            pa.array(severity), pa.array(count[:found].copy()),
            *(pa.array(values, mask=np.isnan(values)) for values in measures),
            pa.array(np.full(found, (time.perf_counter() - start) * 1000))], schema=schema)
        bad = refused > 0
        return alerts, bad, np.asarray(_REASONS, dtype=object)[refused[bad]]

    def __getstate__(self) -> dict:
        """Pickled without the per-batch buffers and constants (for Dask tasks)."""
        return {**self.__dict__, "_buffers": (), "_constants": None}


def detect_fraud(transactions: Stream, rules: FraudRules | None = None,
                 account_col: str = "account_id", state: str = "memory",
                 state_path: str | None = None) -> Stream:
    """Alerts for a stream of transactions: ``transactions.key_by(account).process(rules)``.

    ``rules`` default to ``FraudRules(account_col=account_col)``; rules given must key by
    ``account_col`` too."""
    rules = rules or FraudRules(account_col=account_col)
    if rules.account_col != account_col:
        raise ValueError(f"the rules read accounts from {rules.account_col!r}, but "
                         f"account_col is {account_col!r}: pass "
                         f"FraudRules(account_col={account_col!r})")
    return transactions.key_by(account_col).process(rules, state=state, state_path=state_path)


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
    if args.distributed:
        from sabot_lab.runtime.dask import DaskRunner

        with DaskRunner(args.scheduler) as runner:
            result = job.run(runner)
    else:
        result = job.run()
    alerts = result.table
    truth = txns.filter(pc.field("is_fraud"))
    caught = pc.is_in(truth["txn_id"], alerts["txn_id"])
    print(result)
    print(alerts.group_by("rule").aggregate([("txn_id", "count")]).to_pandas().to_string())
    print(f"fraudulent transactions flagged: {pc.sum(caught).as_py():,} of {truth.num_rows:,}")


if __name__ == "__main__":
    main()
