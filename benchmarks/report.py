"""Generate the README's performance tables from the benchmark records (``make bench``).

Every benchmark script writes a JSON record of its run with ``--json PATH`` (see
:class:`common.Record`). This script replaces, in ``README.md``, the text between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` with a block rendered from
``results/NAME.json``: the record's tables, its notes, and one line with the date, the git
revision, the package versions, the load and the exact command that produced the figures.
Every benchmark of :data:`BENCHMARKS` and every marker in the README needs its record and
both markers, exactly once each: otherwise nothing is written and the script exits with a
message naming what is missing, so no stale figure survives a regeneration. Notebooks show
the same tables with :func:`markdown`.

Run it from the repository root (``make bench`` runs it after the benchmarks)::

    .venv/bin/python benchmarks/report.py
    .venv/bin/python benchmarks/report.py --results benchmarks/results --readme README.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from common import format_table

__all__ = ["BENCHMARKS", "RESULTS", "ReportError", "markdown", "render_block", "update_readme"]

#: The benchmarks ``make bench`` runs: each has a record and a README block.
BENCHMARKS = ("enrichment", "optimizer", "dask_runner", "agents", "fraud", "timers",
              "windows", "nexmark", "scaling")
HERE = Path(__file__).resolve().parent
#: Where ``make bench`` writes the records.
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
#: An opening or closing marker; its group is the benchmark's name.
MARKER = re.compile(r"<!-- /?bench:([\w-]+) -->")


class ReportError(Exception):
    """A record or a README marker that is missing or malformed."""


def load_record(results: Path, name: str) -> dict[str, Any]:
    """The record of benchmark ``name`` in the directory ``results``.

    Raises
    ------
    ReportError
        If the file is missing, is not JSON, or is the record of another benchmark.
    """
    path = results / f"{name}.json"
    if not path.is_file():
        raise ReportError(f"no record {path}: run `python benchmarks/{name}.py --json {path}` "
                          f"(`make bench` runs every benchmark)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not a JSON record: {e}") from e
    if record.get("benchmark") != name:
        raise ReportError(f"{path} is the record of {record.get('benchmark')!r}, not {name!r}")
    return record


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_tables(record: Mapping[str, Any], names: Sequence[str] = ()) -> str:
    """The record's tables as Markdown, each under its title in italics; only the tables
    called ``names``, in that order, when given."""
    tables = {t["name"]: t for t in record["tables"]}
    unknown = [n for n in names if n not in tables]
    if unknown:
        raise ReportError(f"the {record['benchmark']} record has no table {unknown[0]!r} "
                          f"(it has {', '.join(tables) or 'none'})")
    parts = []
    for table in (tables[n] for n in names) if names else tables.values():
        rows = [[_cell(c) for c in row] for row in table["rows"]]
        parts.append(f"*{table['title']}*\n\n"
                     + format_table(table["headers"], rows, True, left=table["left"]))
    return "\n\n".join(parts)


def _versions(versions: Mapping[str, str]) -> str:
    names = {"python": "Python"}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in versions.items())


def _load(record: Mapping[str, Any]) -> str:
    load, machine = record["load_before"], record["machine"]
    text = (f"load average {load['1 min']:.2f} (1 min) / {load['5 min']:.2f} (5 min) before, "
            f"on {machine['cores']} cores ({machine['cpu']})")
    background = record["background"]
    if background is None:
        return text + ", background CPU unknown"
    text += f", {background['cores_busy_elsewhere']:.2f} cores busy elsewhere"
    if "cores_stolen" in background:
        text += f" and {background['cores_stolen']:.2f} stolen"
    return text + " during the run"


def provenance(record: Mapping[str, Any]) -> str:
    """One line: when, from which revision, with which versions, under what load and by
    which command the record's figures were made."""
    date = datetime.fromisoformat(record["date"]).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Generated {date} from git {record['git']}; {_versions(record['versions'])}; "
            f"{_load(record)}; command: `{record['command']}`")


def render_block(record: Mapping[str, Any], names: Sequence[str] = ()) -> str:
    """What goes between a benchmark's markers: tables, notes, the provenance line."""
    notes = [f"Note: {n}" for n in record["notes"]]
    return "\n\n".join([render_tables(record, names), *notes, provenance(record)])


def markdown(name: str, *tables: str, results: Path = RESULTS) -> str:
    """The block of benchmark ``name`` (only ``tables``, if named), for a notebook:
    ``IPython.display.Markdown(markdown("fraud", "throughput"))``."""
    return render_block(load_record(results, name), tables)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block of ``name`` replaced by ``body``.

    Raises
    ------
    ReportError
        Unless both markers occur exactly once, the opening one first.
    """
    start, end = _markers(name)
    counts = {m: text.count(m) for m in (start, end)}
    bad = [f"{m} occurs {n} times" for m, n in counts.items() if n != 1]
    if bad:
        raise ReportError(f"README block {name!r}: {'; '.join(bad)} (expected once each)")
    i, j = text.index(start), text.index(end)
    if j < i:
        raise ReportError(f"README block {name!r}: {end} comes before {start}")
    return f"{text[:i]}{start}\n{body}\n{text[j:]}"


def update_readme(readme: Path, results: Path, benchmarks: Iterable[str] = BENCHMARKS) -> None:
    """Rewrite every benchmark block of ``readme`` from the records in ``results``.

    The blocks are those of ``benchmarks`` and of every marker in the file. The file is
    written only when every block could be rendered.

    Raises
    ------
    ReportError
        If a record or a marker is missing or malformed.
    """
    text = readme.read_text(encoding="utf-8")
    for name in dict.fromkeys([*benchmarks, *MARKER.findall(text)]):
        text = replace_block(text, name, render_block(load_record(results, name)))
    readme.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"directory of the JSON records (default {RESULTS})")
    parser.add_argument("--readme", type=Path, default=README,
                        help=f"the file whose blocks are rewritten (default {README})")
    args = parser.parse_args(argv)
    try:
        update_readme(args.readme, args.results)
    except ReportError as e:
        sys.exit(f"report.py: {e}; {args.readme} left unchanged")
    print(f"rewrote the benchmark blocks of {args.readme} from {args.results}")


if __name__ == "__main__":
    main()
