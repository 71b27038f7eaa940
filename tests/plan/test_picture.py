"""Plan pictures are valid SVG with one element per node and per edge."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.datasets import quotes, securities
from sabot_lab.patterns.enrichment import enrich_quotes

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> tuple[list[ET.Element], list[ET.Element]]:
    root = ET.fromstring(svg)
    groups = root.findall(f"{SVG}g")
    return ([g for g in groups if g.get("class") == "node"],
            [g for g in groups if g.get("class") == "edge"])


def _plans() -> list[sl.Stream]:
    t = pa.table({"k": [1, 2], "a<b&'\"": [1.0, 2.0], "s": ["x", "y"]})
    ref = sl.Table(pa.table({"k": [1], "name": ["one"]}), key="k")
    base = sl.Stream.from_table(t)
    wide = enrich_quotes(sl.Stream.from_table(quotes(100)),
                         sl.Table(securities(50), key="instrument_id"),
                         columns=securities(1).column_names[1:])
    return [
        base,
        base.filter(sl.col("k") > 1).select("k", "s"),
        base.enrich(ref).union(base.enrich(ref, how="left")).filter(sl.col("s") == "x"),
        wide,
    ]


@pytest.mark.parametrize("stream", _plans(), ids=["source", "chain", "union", "wide"])
def test_svg_is_valid_xml_with_a_group_per_node_and_edge(stream):
    for graph in (stream.graph(), stream.optimized()):
        nodes, edges = _parse(graph._repr_mimebundle_()["image/svg+xml"])
        assert len(nodes) == len(graph.nodes)
        assert len(edges) == sum(len(n.children) for n in graph.nodes)
        kinds = [g.get("data-kind") for g in nodes]
        assert kinds == [type(n).__name__ for n in graph.nodes]


def test_wide_schemas_are_abbreviated_but_complete_in_the_tooltip():
    graph = _plans()[3].graph()
    nodes, _ = _parse(graph.to_svg())
    enrich = next(g for g in nodes if g.get("data-kind") == "Enrich")
    texts = [t.text for t in enrich.findall(f"{SVG}text")]
    assert any("more" in t for t in texts)
    assert all(len(t) <= 96 for t in texts)
    tooltip = enrich.find(f"{SVG}title").text
    assert all(f"{name}:" in tooltip for name in graph.nodes[2].schema.names)


def test_result_plan_shows_rows_on_nodes_and_edges():
    t = pa.table({"a": list(range(10))})
    result = sl.Stream.from_table(t, batch_size=3).filter(sl.col("a") >= 4).run(optimize=False)
    _, edges = _parse(result.plan.to_svg())
    edge_text = [e.find(f"{SVG}text").text for e in edges]
    assert edge_text == ["10 rows", "6 rows"]
    assert "in=10 out=6" in result.plan._repr_mimebundle_()["text/plain"]


def test_compare_plans_highlights_moves_and_lists_rules():
    t = pa.table({"k": [1, 2, 3], "a": [1.0, 2.0, 3.0], "unused": ["x", "y", "z"]})
    ref = sl.Table(pa.table({"k": [1, 2], "name": ["one", "two"], "w": [1, 2]}), key="k")
    stream = sl.Stream.from_table(t).enrich(ref).filter(sl.col("a") > 1).select("k", "name")
    comparison = sl.compare_plans(stream)
    assert comparison.highlights_after() == {"Source": "pushed", "Enrich": "pruned"}
    assert "push_filter_below_enrich" in comparison.rules_fired()
    html = comparison._repr_html_()
    assert html.count("<svg") == 2 and "push_filter_into_source" in html
    for svg in html.split("<svg")[1:]:
        ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")
