# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv if missing, install, run the patterns end to end
#   make test   - the whole test suite (unit, doctests, notebooks)
# make bench runs every benchmark (with the benchmarks' extras, e.g. polars), writing a JSON
# record each, then regenerates the README's performance tables from those records.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
RESULTS := benchmarks/results

.PHONY: demo test lab bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sabot_lab.demo

test: $(STAMP)
	$(BIN)/python -m pytest sabot_lab tests notebooks --nbval-lax --nbval-current-env -q \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/enrichment.py --json $(RESULTS)/enrichment.json
	$(BIN)/python benchmarks/optimizer.py --repeats 5 --json $(RESULTS)/optimizer.json
	$(BIN)/python benchmarks/dask_runner.py --repeats 5 --no-diagnostics \
		--json $(RESULTS)/dask_runner.json
	$(BIN)/python benchmarks/agents.py --json $(RESULTS)/agents.json
	$(BIN)/python benchmarks/fraud.py --repeats 5 --json $(RESULTS)/fraud.json
	$(BIN)/python benchmarks/timers.py --json $(RESULTS)/timers.json
	$(BIN)/python benchmarks/windows.py --json $(RESULTS)/windows.json
	$(BIN)/python benchmarks/nexmark.py --json $(RESULTS)/nexmark.json
	$(BIN)/python benchmarks/scaling.py --json $(RESULTS)/scaling.json
	$(BIN)/python benchmarks/report.py --results $(RESULTS) --readme README.md

lint: $(STAMP)
	$(BIN)/ruff check sabot_lab tests benchmarks notebooks

clean:
	rm -rf $(VENV) out
