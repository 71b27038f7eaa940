"""environment.yml (conda) and pyproject.toml (pip) declare the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names; conda's dask + distributed = dask[distributed].
CONDA_TO_PIP = {"python-duckdb": "duckdb", "distributed": "dask[distributed]"}


def _pip_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["test"]
    return dict(re.fullmatch(r"([\w\[\]-]+)(.*)", spec).groups() for spec in specs)


def _conda_requirements() -> dict[str, str]:
    found = {}
    dependencies = (ROOT / "environment.yml").read_text().split("dependencies:\n", 1)[1]
    for line in dependencies.splitlines():
        match = re.fullmatch(r"  - ([a-z][\w-]*)(>=[\w.]+)?", line)
        if match and match.group(1) not in ("python", "pip", "dask"):
            name = CONDA_TO_PIP.get(match.group(1), match.group(1))
            found[name] = match.group(2) or ""
    return found


def test_same_dependencies_and_lower_bounds():
    assert _conda_requirements() == _pip_requirements()


def test_conda_dask_matches_distributed():
    text = (ROOT / "environment.yml").read_text()
    bound = _pip_requirements()["dask[distributed]"]
    assert f"  - dask{bound}\n" in text
