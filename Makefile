# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv if missing, install, run the patterns end to end
#   make test   - the whole test suite (unit, doctests, notebooks)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

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

bench: $(STAMP)
	$(BIN)/python benchmarks/enrichment.py
	$(BIN)/python benchmarks/optimizer.py
	$(BIN)/python benchmarks/dask_runner.py
	$(BIN)/python benchmarks/fraud.py
	$(BIN)/python benchmarks/windows.py
	$(BIN)/python benchmarks/scaling.py

lint: $(STAMP)
	$(BIN)/ruff check sabot_lab tests benchmarks notebooks

clean:
	rm -rf $(VENV) out
