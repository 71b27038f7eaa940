"""The README's Python examples run as written (the Dask one is covered by the Dask tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("code", [b for b in BLOCKS if "DaskRunner" not in b],
                         ids=lambda code: code.splitlines()[0][:40])
def test_readme_example_runs(code):
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)


def test_first_stream_shows_a_side_output():
    namespace: dict = {}
    exec(compile(BLOCKS[0], str(README), "exec"), namespace)
    side = namespace["result"].side_outputs["unmatched"]
    assert side.column("sec_id").to_pylist() == [3]
    assert namespace["result"].table.to_pydict() == {"symbol": ["MSFT", "AAPL"],
                                                     "quantity": [500, 700]}
