"""Enrichment results against DuckDB running the same join on the same data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import sabot_lab as sl
from sabot_lab.datasets import airports, flights, quotes, securities
from sabot_lab.ops.lookup import Lookup
from tests.oracle import assert_balanced, assert_same_rows, duck

QUOTE_COLS = ["quote_id", "instrument_id", "price", "volume"]
REF_COLS = ["symbol", "sector", "currency"]


@pytest.fixture(scope="module")
def market() -> tuple[pa.Table, pa.Table]:
    return quotes(60_000, batch_size=20_000).select(QUOTE_COLS), securities(2_000)


def _run(stream: sl.Stream) -> sl.Result:
    result = stream.run()
    assert_balanced(result.operator_metrics)
    return result


@pytest.mark.parametrize("how", ["inner", "left"])
def test_quotes_securities_int_key(market, how):
    q, s = market
    result = _run(
        sl.Stream.from_table(q, batch_size=7_000)
        .enrich(sl.Table(s, key="instrument_id"), columns=REF_COLS, how=how)
    )
    expected = duck(
        f"SELECT q.*, {', '.join('s.' + c for c in REF_COLS)} FROM q {how.upper()} JOIN s "
        "ON q.instrument_id = s.instrument_id",
        q=q, s=s,
    )
    assert_same_rows(result.table, expected)
    enrich = result.operator_metrics[1]
    assert enrich.null_keys == q.column("instrument_id").null_count
    unmatched = duck("SELECT count(*) AS n FROM q ANTI JOIN s USING (instrument_id)", q=q, s=s)
    assert enrich.unmatched == unmatched.column("n")[0].as_py()


@pytest.mark.parametrize("how", ["inner", "left"])
def test_flights_airports_string_key(how):
    f, a = flights(), airports()
    result = _run(
        sl.Stream.from_table(f, batch_size=999)
        .enrich(sl.Table(a, key="iata"), on={"origin": "iata"}, how=how,
                columns=["name", "state", "latitude"])
    )
    expected = duck(
        f"SELECT f.*, a.name, a.state, a.latitude FROM f {how.upper()} JOIN a "
        "ON f.origin = a.iata",
        f=f, a=a,
    )
    assert_same_rows(result.table, expected)


def _routes() -> pa.Table:
    """Every other distinct (origin, destination) pair of the flights, with a route number."""
    pairs = duck("SELECT DISTINCT origin, destination FROM f ORDER BY ALL", f=flights())
    keep = pairs.take(np.arange(0, pairs.num_rows, 2))
    return keep.append_column("route", pa.array(np.arange(keep.num_rows) * 7))


@pytest.mark.parametrize("how", ["inner", "left"])
def test_multi_key_string(how):
    f, routes = flights(), _routes()
    # Null keys in one of the two columns must never match.
    origin = pc.if_else(pc.equal(pc.cast(pc.divide(f.column("delay"), 1), pa.int64()), 7),
                        pa.scalar(None, pa.string()), f.column("origin"))
    f = f.set_column(f.schema.get_field_index("origin"), "origin", origin)
    result = _run(
        sl.Stream.from_table(f, batch_size=1_500)
        .enrich(sl.Table(routes, key=["origin", "destination"]), how=how)
    )
    expected = duck(
        f"SELECT f.*, r.route FROM f {how.upper()} JOIN r "
        "ON f.origin = r.origin AND f.destination = r.destination",
        f=f, r=routes,
    )
    assert_same_rows(result.table, expected)
    assert result.operator_metrics[1].null_keys == origin.null_count > 0


def test_multi_key_int_and_string_with_wide_range():
    rng = np.random.default_rng(3)
    ref = pa.table({
        "account": pa.array(rng.choice(10**12, 500, replace=False)),
        "ccy": pa.array(rng.choice(["EUR", "USD"], 500)),
        "limit": pa.array(rng.integers(0, 100, 500)),
    })
    stream = pa.table({
        "account": pa.array(np.concatenate([ref.column("account").to_numpy(),
                                            rng.integers(0, 10**12, 300)])),
        "ccy": pa.array(np.concatenate([ref.column("ccy").to_numpy(zero_copy_only=False),
                                        rng.choice(["EUR", "USD", "GBP"], 300)])),
    })
    result = _run(sl.Stream.from_table(stream, batch_size=97)
                  .enrich(sl.Table(ref, key=["account", "ccy"])))
    expected = duck("SELECT s.*, r.limit FROM s JOIN r USING (account, ccy)", s=stream, r=ref)
    assert_same_rows(result.table, expected)


def test_wide_int_range_uses_hash_lookup():
    ref = pa.table({"id": pa.array([5, 10**15, -(10**15)]), "v": ["a", "b", "c"]})
    assert Lookup.build(ref, ["id"]).strategy == "hash"
    stream = pa.table({"id": pa.array([10**15, 5, 6, None, -(10**15)])})
    out = sl.Stream.from_table(stream).enrich(sl.Table(ref, key="id"), how="left").to_table()
    assert out.column("v").to_pylist() == ["b", "a", None, None, "c"]


def test_dictionary_encoded_keys_and_narrower_int_type():
    f, a = flights(), airports()
    stream = f.set_column(f.schema.get_field_index("origin"), "origin",
                          pc.dictionary_encode(f.column("origin")))
    ref = a.set_column(0, "iata", pc.dictionary_encode(a.column("iata")))
    result = _run(sl.Stream.from_table(stream, batch_size=2_048)
                  .enrich(sl.Table(ref, key="iata"), on={"origin": "iata"}, columns=["city"]))
    expected = duck("SELECT f.*, a.city FROM f JOIN a ON f.origin = a.iata", f=f, a=a)
    assert_same_rows(result.table, expected)

    ints = pa.table({"k": pa.array([1, 2, 3, None], pa.int32())})
    ref64 = pa.table({"k": pa.array([2, 3], pa.int64()), "v": [20, 30]})
    out = sl.Stream.from_table(ints).enrich(sl.Table(ref64, key="k")).to_table()
    assert out.to_pydict() == {"k": [2, 3], "v": [20, 30]}


@pytest.mark.parametrize("how", ["inner", "left"])
def test_one_to_many(how):
    ref = pa.table({"k": [1, 1, 2, 3, 3, 3, None], "v": [10, 11, 20, 30, 31, 32, 99]})
    stream = pa.table({"k": [3, 1, 4, None, 2, 3], "n": [0, 1, 2, 3, 4, 5]})
    result = _run(sl.Stream.from_table(stream, batch_size=4)
                  .enrich(sl.Table(ref, key="k", unique=False), how=how))
    expected = duck(f"SELECT s.*, r.v FROM s {how.upper()} JOIN r USING (k)", s=stream, r=ref)
    assert_same_rows(result.table, expected)


def test_unmatched_rows_go_to_side_output_with_reason(market):
    q, s = market
    result = _run(
        sl.Stream.from_table(q, batch_size=10_000)
        .enrich(sl.Table(s, key="instrument_id"), columns=["symbol"], unmatched="side_output")
    )
    side = result.side_outputs["unmatched"]
    expected = duck("SELECT q.* FROM q ANTI JOIN s USING (instrument_id)", q=q, s=s)
    assert_same_rows(side.drop_columns(["reason"]), expected)
    null_rows = pc.sum(pc.equal(side.column("reason"), "null key")).as_py()
    assert null_rows == q.column("instrument_id").null_count
    assert result.table.num_rows + side.num_rows == q.num_rows


def test_name_clash_gets_suffix_and_empty_reference():
    stream = pa.table({"id": [1, 2], "name": ["s1", "s2"]})
    ref = pa.table({"id": [1], "name": ["r1"]})
    out = sl.Stream.from_table(stream).enrich(sl.Table(ref, key="id"), how="left").to_table()
    assert out.to_pydict() == {"id": [1, 2], "name": ["s1", "s2"], "name_ref": ["r1", None]}

    empty = sl.Table(ref.slice(0, 0), key="id")
    assert sl.Stream.from_table(stream).enrich(empty).to_table().num_rows == 0
    left = sl.Stream.from_table(stream).enrich(empty, how="left").to_table()
    assert left.column("name_ref").to_pylist() == [None, None]


def test_dictionary_strings_have_unique_dictionaries_for_pandas_and_group_by():
    f, a = flights(), airports()
    out = (sl.Stream.from_table(f)
           .enrich(sl.Table(a, key="iata"), on={"origin": "iata"}, columns=["state", "city"])
           .to_table())
    state = out.column("state").combine_chunks()
    assert pa.types.is_dictionary(state.type)
    assert len(state.dictionary) == len(pc.unique(state.dictionary))
    frame = out.to_pandas()  # categories must be unique and non-null
    groups = out.group_by("state").aggregate([([], "count_all")])
    expected = duck("SELECT a.state, count(*) AS n FROM f JOIN a ON f.origin = a.iata "
                    "GROUP BY a.state", f=f, a=a)
    assert groups.num_rows == expected.num_rows == frame["state"].nunique(dropna=False)


# --- bad-input regressions --------------------------------------------------------------------

@pytest.mark.parametrize("keys", [["k"], ["k", "s"]], ids=["one key", "two keys"])
def test_one_to_many_float_keys_match_as_the_unique_lookup_does(keys):
    """A one-to-many reference grouped keys by ``!=`` after sorting: each NaN alone (a NaN
    matched one row of several), -0.0 and 0.0 together under one sign. Keys now match as in
    the unique lookup (Arrow's hash kernels): NaN = NaN, -0.0 != 0.0. The oracle: a unique
    reference per row, built from that row alone."""
    nan = float("nan")
    ref = pa.table({"k": [nan, -0.0, 0.0, nan, -0.0, 1.0], "s": ["a"] * 6,
                    "v": [0, 1, 2, 3, 4, 5]})
    stream = pa.table({"k": [nan, 0.0, -0.0, 1.0, 2.0], "s": ["a"] * 5})
    lookup = Lookup.build(ref, keys, unique=False)
    groups, nulls = lookup.rows([stream.column(k).combine_chunks() for k in keys])
    got = [sorted(lookup.group_rows[lookup.group_start[g]:lookup.group_start[g]
                                    + lookup.group_count[g]].tolist()) if g >= 0 else []
           for g in groups.tolist()]
    expected = []
    for i in range(stream.num_rows):
        matches = []
        for r in range(ref.num_rows):
            one = Lookup.build(ref.slice(r, 1), keys)
            if one.rows([stream.column(k).slice(i, 1).combine_chunks() for k in keys])[0][0] >= 0:
                matches.append(r)
        expected.append(matches)
    assert got == expected == [[0, 3], [2], [1, 4], [5], []]
    assert nulls == 0


@pytest.mark.parametrize("unique", [True, False])
def test_integer_keys_of_other_signedness_match_by_value(unique):
    """int64 against uint64 keys: equal values match, values the other type cannot hold
    match nothing (they raised, or for a dense int64 reference, 2**64 - 1 matched -1).
    Oracle: DuckDB joining on the same columns."""
    stream = pa.table({"sk": pa.array([2**64 - 1, 0, 7, 2**63, None, 3], pa.uint64()),
                       "n": range(6)})
    last = 8 if unique else 3  # a repeated key for one-to-many
    dense = pa.table({"rk": [-1, 0, 3, 7, last], "v": range(5)})
    sparse = pa.table({"rk": [-1, 0, 3, 7, 2**62], "v": range(5)})
    for ref, strategy in ((dense, "dense"), (sparse, "hash")):
        assert Lookup.build(ref, ["rk"], unique=unique).strategy == strategy
        result = _run(sl.Stream.from_table(stream, batch_size=4).enrich(
            sl.Table(ref, key="rk", unique=unique), on={"sk": "rk"}, how="left"))
        expected = duck("SELECT s.*, r.v FROM s LEFT JOIN r ON s.sk = r.rk", s=stream, r=ref)
        assert_same_rows(result.table, expected)
        back = _run(sl.Stream.from_table(ref).enrich(
            sl.Table(stream, key="sk"), on={"rk": "sk"}, how="left"))
        expected = duck("SELECT r.*, s.n FROM r LEFT JOIN s ON s.sk = r.rk", s=stream, r=ref)
        assert_same_rows(back.table, expected)
