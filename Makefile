# Every target bootstraps its own virtual environment: a fresh clone needs only Python >= 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# --fresh: the demo shows a whole run every time (a plain rerun would resume: nothing to send).
demo: $(STAMP)
	$(BIN)/batchrun run jobs/demo.toml --fresh

test: $(STAMP)
	$(BIN)/ruff check batchrun tests benchmarks
	$(BIN)/mypy batchrun
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check batchrun tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy batchrun

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/ratelimit.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/resume.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
