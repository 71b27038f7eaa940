"""Stateful jobs on Dask: where the plan is cut around the hash exchange by key.

A windowed job ``source … → with_watermark → … → window → … → [top_n → …] → sink`` is cut
into

1. **below**: everything below the watermark, run per source partition like a stateless job;
2. **watermark and middle**: the per-row watermark and the stateless operators up to the
   window, run in the same task, which then splits the rows by a hash of the window's group
   keys (the exchange);
3. **reducer**: the window and the stateless operators after it, run by the key-range agents
   (:mod:`.agent`, driven by :mod:`.stateful_job`), each over its keys' rows in arrival
   order, so each key range emits exactly the rows a local run emits for those keys;
4. **client**: ``top_n`` (which ranks across all keys) and what follows it, into the sink.

A keyed-state job (``key_by(k).process(fn)``) without a watermark is cut the same way, less
the watermark: rows are exchanged by ``k`` and each agent runs the process function with the
state of its keys. With a watermark (a function with event-time timers), the keyed process
takes the window's place: each agent fires the timers of its keys. A persistent store
(``state="rocksdict"``) is one per key range, ``<state_path>/range-00003``
(:func:`~sabot_lab.runtime.tasks.range_stores`): the ranges run at the same time, and a
store opens in one process.
"""


from __future__ import annotations

from sabot_lab.ops.sinks import CollectSink
from sabot_lab.ops.sources import TableScan
from sabot_lab.plan.graph import JobGraph
from sabot_lab.plan.nodes import (
    KeyedProcess,
    Node,
    Sink,
    Source,
    TopN,
    Union,
    Watermark,
    WindowAggregate,
)
from sabot_lab.runtime import tasks
from sabot_lab.runtime.execution import StatefulStages, chain_ids

__all__ = ["stateful_stages"]


def stateful_stages(graph: JobGraph) -> StatefulStages | None:
    """Cut ``graph`` for the DaskRunner, or ``None`` for a stateless job. Shapes the runner
    cannot distribute raise ``NotImplementedError`` naming the node."""
    chain: list[Node] = []
    node = graph.root.children[0]
    while not isinstance(node, Source | Union):
        chain.append(node)
        node = node.children[0]
    bottom = max((i for i, n in enumerate(chain) if isinstance(n, Watermark | KeyedProcess)),
                 default=None)
    if bottom is None:
        return None
    below = chain[bottom].children[0]
    ids = graph.node_ids()
    for n in JobGraph(Sink(below, CollectSink())).operators():
        if n.stateful:
            raise NotImplementedError(
                f"the DaskRunner runs one stateful stage per job, on its main chain; "
                f"{n.label} is below a union or below another stateful operator")
    above = chain[:bottom]
    for n in above:
        if not (n.stateless or n.stateful):
            raise NotImplementedError(f"the DaskRunner cannot distribute {n.label} yet")
    if isinstance(chain[bottom], KeyedProcess):
        if any(n.stateful for n in above):
            raise NotImplementedError(
                "the DaskRunner runs one stateful stage per job: windows or keyed state after "
                f"{chain[bottom].label} need an exchange of their own")
        reducer = tuple(chain[:bottom + 1])
        return StatefulStages(below, None, (), _detached(reducer), (), op_ids={
            "exchange": (), "reducer": chain_ids(ids, reducer),
            "client": (ids[id(graph.root)],)})
    keyed = [i for i, n in enumerate(above) if isinstance(n, WindowAggregate | KeyedProcess)]
    if len(keyed) > 1 or any(isinstance(n, Watermark) for n in above):
        raise NotImplementedError("the DaskRunner runs one window or keyed process per job, "
                                  "after one watermark")
    tops = [i for i, n in enumerate(above) if isinstance(n, TopN)]
    cut_client = max(tops) + 1 if tops else 0
    cut_middle = keyed[0] + 1 if keyed else len(above)
    middle, reducer, client = (tuple(above[cut_middle:]), tuple(above[cut_client:cut_middle]),
                               tuple(above[:cut_client]))
    return StatefulStages(
        below=below, watermark=_detached((chain[bottom],))[0], middle=_detached(middle),
        reducer=_detached(reducer), client=client, op_ids={
            "exchange": chain_ids(ids, (*middle, chain[bottom])),
            "reducer": chain_ids(ids, reducer),
            "client": (*chain_ids(ids, client), ids[id(graph.root)])})


def _detached(chain: tuple[Node, ...]) -> tuple[Node, ...]:
    """The chain (top to bottom) on an empty source of its input's schema. Plan nodes hold
    their inputs down to the source, and a source holds its table: a chain sent with every
    task as it is would carry the whole input partitions x key ranges times."""
    if not chain:
        return chain
    node = tasks.rebase(chain, Source(TableScan(chain[-1].children[0].schema.empty_table())))
    out = []
    for _ in chain:
        out.append(node)
        node = node.children[0]
    return tuple(out)


