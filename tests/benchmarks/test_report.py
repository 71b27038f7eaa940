"""benchmarks/report.py: README blocks regenerated from records, and refusing stale ones."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import each other by file name
common = importlib.import_module("common")
report = importlib.import_module("report")


def write_record(results: Path, name: str) -> str:
    """A small record of benchmark ``name``, made by the scripts' own writer; returns the
    text of its one table cell, to find it in the README."""
    record = common.Record(name, ("duckdb",))
    cell = f"{name} sample cell"
    record.add_table("results", f"{name} sample table", ("engine", "median s"),
                     [(cell, "0.123")])
    record.add_results([{"engine": cell, "seconds": common.spread([0.1, 0.123, 0.2])}])
    record.note(f"{name} sample note")
    record.write(results / f"{name}.json")
    return cell


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    """A copy of the project's README."""
    return Path(shutil.copy(ROOT / "README.md", tmp_path / "README.md"))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results directory with a record for every benchmark."""
    directory = tmp_path / "results"
    for name in report.BENCHMARKS:
        write_record(directory, name)
    return directory


def block(text: str, name: str) -> str:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_readme_has_a_block_per_benchmark():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert set(report.MARKER.findall(text)) == set(report.BENCHMARKS)


def test_every_block_is_replaced_by_its_record(readme: Path, results: Path):
    before = readme.read_text(encoding="utf-8")
    report.update_readme(readme, results)
    after = readme.read_text(encoding="utf-8")
    for name in report.BENCHMARKS:
        body = block(after, name)
        assert body == "\n" + report.render_block(report.load_record(results, name)) + "\n"
        assert f"| {name} sample cell | 0.123 |" in body
        assert f"Note: {name} sample note" in body
        assert "command: `" in body and "from git " in body and "duckdb " in body
    outside = [part.split("<!-- /bench:")[-1] for part in after.split("<!-- bench:")]
    assert outside == [part.split("<!-- /bench:")[-1] for part in before.split("<!-- bench:")]


def test_regenerating_twice_gives_the_same_file(readme: Path, results: Path):
    report.update_readme(readme, results)
    once = readme.read_text(encoding="utf-8")
    report.update_readme(readme, results)
    assert readme.read_text(encoding="utf-8") == once


@pytest.mark.parametrize("marker", ["<!-- bench:windows -->", "<!-- /bench:windows -->"])
def test_a_missing_marker_raises_and_changes_nothing(readme: Path, results: Path, marker: str):
    text = readme.read_text(encoding="utf-8").replace(marker, "")
    readme.write_text(text, encoding="utf-8")
    with pytest.raises(report.ReportError, match=r"'windows'.*occurs 0 times"):
        report.update_readme(readme, results)
    assert readme.read_text(encoding="utf-8") == text


def test_a_missing_record_raises_and_changes_nothing(readme: Path, results: Path):
    (results / "fraud.json").unlink()
    text = readme.read_text(encoding="utf-8")
    with pytest.raises(report.ReportError, match=r"no record .*fraud\.json"):
        report.update_readme(readme, results)
    assert readme.read_text(encoding="utf-8") == text


def test_a_block_without_a_record_raises(readme: Path, results: Path):
    readme.write_text(readme.read_text(encoding="utf-8")
                      + "\n<!-- bench:retired -->\nold figures\n<!-- /bench:retired -->\n",
                      encoding="utf-8")
    with pytest.raises(report.ReportError, match=r"no record .*retired\.json"):
        report.update_readme(readme, results)


def test_a_record_of_another_benchmark_raises(results: Path):
    shutil.copy(results / "fraud.json", results / "windows.json")
    with pytest.raises(report.ReportError, match="record of 'fraud', not 'windows'"):
        report.load_record(results, "windows")


def test_markdown_picks_named_tables(results: Path):
    text = report.markdown("fraud", "results", results=results)
    assert "*fraud sample table*" in text
    with pytest.raises(report.ReportError, match="no table 'latency'"):
        report.markdown("fraud", "latency", results=results)


def test_main_exits_with_the_reason(readme: Path, results: Path):
    (results / "scaling.json").unlink()
    with pytest.raises(SystemExit, match=r"scaling\.json.*left unchanged"):
        report.main(["--results", str(results), "--readme", str(readme)])
