"""Fraud rules against a deliberately simple pure-Python oracle (a dict per account)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import transactions
from sabot_lab.patterns.fraud import FraudRules, detect_fraud
from tests.oracle import assert_balanced


def oracle(rows: list[dict], window_ms=60_000, max_count=5, min_history=10, z_max=3.0,
           log_amount=False, max_kmh=900.0, min_elapsed_ms=1_000) -> list[tuple]:
    """(txn_id, rule) of every alert, in arrival order, rules in the order velocity, amount,
    geo; and the txn_ids refused as out of order."""
    accounts: dict = {}
    alerts, refused = [], []
    for r in rows:
        a = accounts.setdefault(r["account_id"], {"times": [], "values": [], "loc": None,
                                                  "last": None})
        t = r["ts"]
        if a["last"] is not None and t < a["last"]:
            refused.append(r["txn_id"])
            continue
        recent = [u for u in a["times"][-max_count:] if t - u < window_ms]
        if len(recent) + 1 > max_count:
            alerts.append((r["txn_id"], "velocity"))
        a["times"].append(t)
        x = math.log(r["amount"]) if log_amount else r["amount"]
        history = a["values"]
        if len(history) >= min_history:
            mean = sum(history) / len(history)
            std = math.sqrt(sum((v - mean) ** 2 for v in history) / (len(history) - 1))
            if std > 0 and (x - mean) / std > z_max:
                alerts.append((r["txn_id"], "amount"))
        history.append(x)
        moved = True
        if a["loc"] is not None:
            (lat1, lon1) = a["loc"]
            p1, p2 = math.radians(lat1), math.radians(r["lat"])
            h = (math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2)
                 * math.sin(math.radians(r["lon"] - lon1) / 2) ** 2)
            km = 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(h)))
            hours = max(t - a["last"], min_elapsed_ms) / 3_600_000
            if km / hours > max_kmh:
                alerts.append((r["txn_id"], "geo"))
                moved = False
        if moved:
            a["loc"] = (r["lat"], r["lon"])
        a["last"] = t
    return alerts, refused


def _rows(table: pa.Table) -> list[dict]:
    plain = table.select(["txn_id", "account_id", "ts", "amount", "lat", "lon"])
    plain = plain.set_column(2, "ts", plain["ts"].cast(pa.int64()))
    return plain.to_pylist()


def _random(n: int, accounts: int, seed: int) -> pa.Table:
    """Dense, adversarial traffic: few accounts, bursts, jumps, equal times."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, accounts + 1)  # a few busy accounts: bursts happen
    t = np.cumsum(rng.choice([0, 1, 500, 2_000, 30_000, 400_000], n,
                             p=[0.2, 0.2, 0.2, 0.2, 0.15, 0.05]))
    return pa.table({
        "txn_id": pa.array(np.arange(n)),
        "account_id": pa.array(rng.choice(accounts, n, p=weights / weights.sum())),
        "ts": pa.array(t).cast(pa.timestamp("ms")),
        "amount": pa.array(np.round(rng.lognormal(3, rng.choice([0.1, 1.5], n)), 2)),
        "lat": pa.array(rng.choice([40.6, 40.7, 51.5, -33.9], n) + rng.normal(0, 0.01, n)),
        "lon": pa.array(rng.choice([-73.8, -74.0, -0.1, 151.2], n) + rng.normal(0, 0.01, n)),
    })


def _alerts(result: sl.Result) -> list[tuple]:
    return list(zip(result.table["txn_id"].to_pylist(), result.table["rule"].to_pylist(),
                    strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 37, 5_000])
def test_alerts_equal_the_oracle_on_random_traffic(seed, batch_size):
    table = _random(3_000, accounts=15, seed=seed)
    result = detect_fraud(sl.Stream.from_table(table, batch_size=batch_size)).run()
    expected, refused = oracle(_rows(table))
    assert _alerts(result) == expected
    assert {r for r, _ in expected} and len({rule for _, rule in expected}) == 3
    assert result.side_outputs["invalid"]["txn_id"].to_pylist() == refused
    assert_balanced(result.operator_metrics)


def test_parameters_reach_the_rules():
    table = _random(2_000, accounts=20, seed=5)
    rules = FraudRules(window="10s", max_count=3, min_history=4, z_threshold=2.0,
                       log_amount=True, max_speed_kmh=300.0, min_elapsed="5s")
    result = detect_fraud(sl.Stream.from_table(table, batch_size=100), rules).run()
    expected, _ = oracle(_rows(table), window_ms=10_000, max_count=3, min_history=4, z_max=2.0,
                         log_amount=True, max_kmh=300.0, min_elapsed_ms=5_000)
    assert _alerts(result) == expected


def test_generated_fraud_is_caught_and_evidence_is_consistent():
    txns = transactions(50_000, n_accounts=2_000, seed=3)
    result = detect_fraud(sl.Stream.from_table(txns, batch_size=4_096)).run()
    expected, _ = oracle(_rows(txns))
    assert _alerts(result) == expected
    alerts = result.table.to_pandas()
    truth = txns.to_pandas().set_index("txn_id")
    for kind in ("velocity", "amount", "geo"):
        flagged = set(alerts.loc[alerts["rule"] == kind, "txn_id"])
        cases = truth[truth["fraud_kind"] == kind]
        assert len(flagged & set(cases.index)) >= 0.3 * len(cases), kind
    geo = alerts[alerts["rule"] == "geo"]
    assert (geo["speed_kmh"] > 900).all() and (geo["severity"] > 1).all()
    assert geo["prev_lat"].notna().all()
    assert (alerts.loc[alerts["rule"] == "velocity", "count_in_window"] > 5).all()
    assert (alerts["detection_latency_ms"] >= 0).all()


def test_bad_rows_go_to_side_outputs_with_reasons():
    table = pa.table({
        "txn_id": pa.array(range(7)),
        "account_id": pa.array([1, None, 1, 1, 1, 1, 2]),
        "ts": pa.array([5_000, 5_000, 6_000, 7_000, 8_000, 1_000, 9_000], pa.timestamp("ms")),
        "amount": pa.array([10.0, 10.0, None, float("nan"), 12.0, 11.0, 3.0]),
        "lat": pa.array([1.0, 1.0, 1.0, 1.0, float("nan"), 1.0, 95.0]),
        "lon": pa.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
    })
    result = detect_fraud(sl.Stream.from_table(table, batch_size=3)).run()
    assert result.side_outputs["null_key"]["txn_id"].to_pylist() == [1]
    invalid = dict(zip(result.side_outputs["invalid"]["txn_id"].to_pylist(),
                       result.side_outputs["invalid"]["reason"].to_pylist(), strict=True))
    assert invalid == {
        2: "null, NaN or infinite amount", 3: "null, NaN or infinite amount",
        4: "missing or NaN coordinates",
        5: "event time earlier than the account's previous transaction (out of order)",
        6: "coordinates out of range"}
    assert_balanced(result.operator_metrics)


def test_rocksdict_state_gives_the_same_alerts(tmp_path):
    table = _random(2_000, accounts=30, seed=7)
    memory = detect_fraud(sl.Stream.from_table(table, batch_size=256)).run()
    rocks = detect_fraud(sl.Stream.from_table(table, batch_size=256), state="rocksdict",
                         state_path=str(tmp_path / "state")).run()
    assert _alerts(rocks) == _alerts(memory)


def test_python_process_function_matches_the_numba_rules_for_velocity():
    table = _random(1_500, accounts=10, seed=8)

    def velocity(key, row, state):
        ring = state["recent"]
        count = 1 + int(sum(1 for u in ring if u >= 0 and row["ts"] - u < 60_000))
        ring[int(state["n"]) % 5] = row["ts"]
        state["n"] += 1
        return [{"txn_id": row["txn_id"]}] if count > 5 else []

    fn = sl.PythonProcessFunction(
        velocity, state={"recent": ("int64", 5), "n": "int64"}, defaults={"recent": -1},
        columns=["txn_id", "ts"], output=pa.schema([("txn_id", pa.int64())]))
    plain = table.set_column(2, "ts", table["ts"].cast(pa.int64()))
    slow = sl.Stream.from_table(plain, batch_size=100).key_by("account_id").process(fn).run()
    expected, _ = oracle(_rows(table))
    assert slow.table["txn_id"].to_pylist() == [t for t, rule in expected if rule == "velocity"]


@pytest.mark.parametrize("batch_size", [7, 300, 3_000])
def test_ttl_forgets_idle_accounts_row_by_row(batch_size):
    """An account idle for longer than the ttl starts afresh: the oracle replays the rules
    from scratch for it, whatever the batch size."""
    table = _random(3_000, accounts=12, seed=9)
    rules = FraudRules(ttl="10min")
    result = detect_fraud(sl.Stream.from_table(table, batch_size=batch_size), rules).run()
    rows = _rows(table)
    last: dict = {}
    for r in rows:  # an idle gap makes the account a new one for the oracle
        previous = last.get(r["account_id"])
        if previous is not None and r["ts"] - previous[1] > 600_000:
            last[r["account_id"]] = (previous[0] + 1, r["ts"])
        else:
            last[r["account_id"]] = ((previous or (0, 0))[0], r["ts"])
        r["account_id"] = (r["account_id"], last[r["account_id"]][0])
    expected, _ = oracle(rows)
    assert _alerts(result) == expected
    restarted = sum(generation for generation, _ in last.values())
    assert restarted > 0
