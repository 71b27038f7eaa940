"""The import graph: no cycles, and no module imports one of a higher layer.

Layers, lowest first (a module may import its own layer and those below):

0. ``errors``, ``expr``, ``kernels``: vocabulary with no sabot_lab imports of note;
1. ``reference``, ``plan``: tables, plan nodes, rules, pictures;
2. ``state``, ``process``, ``ops``: what runs on batches;
3. ``result``, ``dashboard``: what a run produces and who watches it;
4. ``runtime``: the runners;
5. ``diagnosis``, ``live``: tools over runs (sample jobs; a job in the background);
6. ``stream``, ``testing``, ``teaching``, ``patterns``, ``datasets``, ``demo``, and the
   package itself: the public surface.

Imports inside functions count too, except the few thin convenience calls listed in
``UPWARD_ALLOWED`` (a method that hands its object to a tool of a higher layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "sabot_lab"

LAYERS = {
    "errors": 0, "expr": 0, "kernels": 0,
    "reference": 1, "plan": 1,
    "state": 2, "process": 2, "ops": 2,
    "result": 3, "dashboard": 3,
    "runtime": 4,
    "diagnosis": 5, "live": 5,
    "stream": 6, "testing": 6, "teaching": 6, "patterns": 6, "datasets": 6, "demo": 6,
    "": 6,
}
#: (importer, imported): a method that is a thin call into a higher layer, by design.
UPWARD_ALLOWED = {
    ("sabot_lab.result", "sabot_lab.diagnosis"),  # Result.diagnose() -> sl.diagnose(result)
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    top = module.removeprefix("sabot_lab").removeprefix(".").split(".")[0]
    return LAYERS[top]


def test_every_module_has_a_layer():
    assert not [m for m in _modules() if
                m.removeprefix("sabot_lab").removeprefix(".").split(".")[0] not in LAYERS]


def test_no_module_imports_a_higher_layer():
    upward = sorted((a, b) for a, targets in _graph().items() for b in targets
                    if _layer(b) > _layer(a) and (a, b) not in UPWARD_ALLOWED)
    assert not upward


def test_the_import_graph_has_no_cycles():
    graph = {a: {b for b in bs if (a, b) not in UPWARD_ALLOWED} for a, bs in _graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles
