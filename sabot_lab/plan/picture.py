"""Plan pictures: a JobGraph drawn as SVG by our own code (no graphviz needed).

Data flows down the page: sources at the top, the sink at the bottom. Each node is a box with
its operator and key parameters, its output schema (abbreviated when wide; the full schema is
the box's tooltip) and an optional note (e.g. rows and time after a run); edges can carry
labels (e.g. row counts).

Examples
--------
>>> import pyarrow as pa
>>> import sabot_lab as sl
>>> svg = plan_svg(sl.Stream.from_table(pa.table({"a": [1]})).filter(sl.col("a") > 0).graph())
>>> svg.startswith("<svg") and svg.count('class="node"') == 3 and svg.count('class="edge"') == 2
True
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from sabot_lab.plan.nodes import Node

__all__ = ["HIGHLIGHTS", "plan_svg"]

_CHAR_W = 6.6  # approximate width of one 11px monospace character
_LINE_H = 15
_PAD = 8
_GAP_Y = 46
_GAP_X = 24
_MAX_CHARS = 96

#: Fill colours by highlight name (used by ``compare_plans``).
HIGHLIGHTS = {
    "moved": "#fde7c6",      # a filter that left this place
    "pushed": "#d7f5dd",     # a filter or projection that arrived here
    "pruned": "#dbe9fb",     # fewer columns than before
    None: "#ffffff",
}
_BOLD = 'font-weight="bold"'
_GREY = 'fill="#555"'
_KIND_STROKE = {"Source": "#2b7a3d", "Sink": "#7a2b5b", "Enrich": "#2b4f7a", "Filter": "#9a6b00",
                "Union": "#555555"}


def _short(text: str, limit: int = _MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_line(node: Node) -> str:
    fields = [f"{f.name}: {f.type}" for f in node.schema]
    shown = ", ".join(fields[:4])
    more = f" … +{len(fields) - 4} more" if len(fields) > 4 else ""
    return _short(shown, _MAX_CHARS - len(more)) + more


def _layers(nodes: tuple[Node, ...]) -> dict[int, int]:
    layer: dict[int, int] = {}
    for n in nodes:  # topological: children come first
        layer[id(n)] = 1 + max((layer[id(c)] for c in n.children), default=-1)
    return layer


def plan_svg(
    nodes: tuple[Node, ...],
    notes: Mapping[int, str] | None = None,
    edge_labels: Mapping[int, str] | None = None,
    highlight: Mapping[int, str] | None = None,
    title: str | None = None,
) -> str:
    """Draw nodes (in topological order) as an SVG document.

    Parameters
    ----------
    nodes
        The plan's nodes, children before parents (``JobGraph.nodes``), or a JobGraph.
    notes
        Extra text per node, keyed by ``id(node)``.
    edge_labels
        Text on the edge leaving a node, keyed by ``id(node)``.
    highlight
        A :data:`HIGHLIGHTS` name per node, keyed by ``id(node)``.
    title
        A caption above the picture.
    """
    nodes = tuple(getattr(nodes, "nodes", nodes))
    notes, edge_labels, highlight = notes or {}, edge_labels or {}, highlight or {}
    layer = _layers(nodes)
    def stage_lines(n: Node) -> list[str]:
        return [_short(f"· {s.label}" + (f"  {notes[id(s)]}" if id(s) in notes else ""))
                for s in getattr(n, "stages", ())]

    lines = {
        id(n): [_short(n.label), *stage_lines(n), _schema_line(n),
                *([notes[id(n)]] if id(n) in notes else [])]
        for n in nodes
    }
    size = {
        key: (max(len(t) for t in text) * _CHAR_W + 2 * _PAD, len(text) * _LINE_H + _PAD)
        for key, text in lines.items()
    }
    rows: dict[int, list[Node]] = {}
    for n in nodes:
        rows.setdefault(layer[id(n)], []).append(n)
    row_width = {r: sum(size[id(n)][0] for n in ns) + _GAP_X * (len(ns) - 1)
                 for r, ns in rows.items()}
    width = max(row_width.values()) + 2 * _GAP_X
    top = 30 if title else 10
    pos: dict[int, tuple[float, float]] = {}
    y = top
    for r in sorted(rows):
        x = (width - row_width[r]) / 2
        for n in rows[r]:
            pos[id(n)] = (x, y)
            x += size[id(n)][0] + _GAP_X
        y += max(size[id(n)][1] for n in rows[r]) + _GAP_Y
    height = y - _GAP_Y + 10

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker>'
        "</defs>",
    ]
    if title:
        out.append(f'<text x="{_GAP_X}" y="18" font-weight="bold">{escape(title)}</text>')
    for n in nodes:
        for child in n.children:
            cx, cy = pos[id(child)]
            cw, ch = size[id(child)]
            px, py = pos[id(n)]
            pw, _ = size[id(n)]
            x1, y1, x2, y2 = cx + cw / 2, cy + ch, px + pw / 2, py
            label = edge_labels.get(id(child), "")
            text = (f'<text x="{(x1 + x2) / 2 + 6:.1f}" y="{(y1 + y2) / 2 + 4:.1f}" '
                    f'fill="#444">{escape(label)}</text>') if label else ""
            out.append(
                f'<g class="edge"><line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                f'stroke="#666" marker-end="url(#arrow)"/>{text}</g>'
            )
    for n in nodes:
        x, y = pos[id(n)]
        w, h = size[id(n)]
        kind = type(n).__name__
        fill = HIGHLIGHTS.get(highlight.get(id(n)), HIGHLIGHTS[None])
        stroke = _KIND_STROKE.get(kind, "#333333")
        tooltip = escape(n.label + "\n" + "\n".join(f"{f.name}: {f.type}" for f in n.schema))
        texts = "".join(
            f'<text x="{x + _PAD:.1f}" y="{y + _PAD + 8 + i * _LINE_H:.1f}" '
            f'{_BOLD if i == 0 else _GREY}>{escape(t)}</text>'
            for i, t in enumerate(lines[id(n)])
        )
        out.append(
            f'<g class="node" data-kind="{kind}"><title>{tooltip}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="5" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>{texts}</g>'
        )
    out.append("</svg>")
    return "".join(out)
