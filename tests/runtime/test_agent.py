"""A key-range agent on its own (no cluster): pieces in any order, replays ignored, cuts at
partition boundaries that restart it exactly, and a final flush asked twice."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import transactions
from sabot_lab.patterns.fraud import detect_fraud
from sabot_lab.plan.optimizer import PlanOptimizer
from sabot_lab.runtime.agent import KeyRangeAgent
from sabot_lab.runtime.exchange import stateful_stages

PARTS = 6


@pytest.fixture(scope="module")
def setup():
    txns = transactions(30_000, n_accounts=800, seed=3)
    job = detect_fraud(sl.Stream.from_table(txns))
    stages = stateful_stages(PlanOptimizer().optimize(job.graph()))
    bounds = np.linspace(0, txns.num_rows, PARTS + 1).astype(int)
    pieces = [txns.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    expected = job.run().table.drop_columns(["detection_latency_ms"])
    return stages, pieces, expected


def _agent(stages, cut=None, every=2):
    return KeyRangeAgent(stages.reducer, stages.op_ids["reducer"], 0, every, None, cut)


def _output(agent, cuts, final):
    tables = [c.output for c in cuts if c.output is not None]
    tables += [final["output"]] if final["output"] is not None else []
    return pa.concat_tables(tables).drop_columns(["detection_latency_ms"])


def test_pieces_in_any_order_and_replays_give_the_local_output(setup):
    stages, pieces, expected = setup
    agent = _agent(stages)
    for k in (2, 0, 1, 1, 4, 3, 0, 5, 5):  # early ones wait; processed ones are ignored
        agent._push(k, pieces[k], 0)
    cuts = [agent.cuts.pop(p) for p in (2, 4, 6)]
    final = agent._finish(PARTS)
    sl.assert_same_results(_output(agent, cuts, final), expected, rtol=1e-12)
    assert agent._finish(PARTS) is final  # asked again: the same rows, not flushed twice


def test_an_agent_restarted_from_a_cut_continues_exactly(setup):
    stages, pieces, expected = setup
    first = _agent(stages)
    for k in range(3):
        first._push(k, pieces[k], 0)
    cut = first.cuts.pop(2)
    restarted = _agent(stages, cut=cut, every=3)  # also with another interval from there
    for k in range(PARTS):
        restarted._push(k, pieces[k], 0)  # 0 and 1 are before the cut: ignored
    later = restarted.cuts.pop(5)
    final = restarted._finish(PARTS)
    sl.assert_same_results(_output(restarted, [cut, later], final), expected, rtol=1e-12)
    assert final["metrics"][stages.op_ids["reducer"][0]]["rows_in"] == sum(
        p.num_rows for p in pieces)
