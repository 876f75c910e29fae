# Every target bootstraps its own virtual environment: a fresh clone needs only Python >= 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean chromium screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,report,ray]'
	touch $(STAMP)

# --fresh: the demo shows a whole run every time (a plain rerun would resume: nothing to send).
demo: $(STAMP)
	$(BIN)/batchrun run jobs/demo.toml --fresh

# The report's browser test opens pages in headless Chromium, from the system's packages.
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# The coverage floor only ever rises: when a change lifts the total, lift COVERAGE_FLOOR with it.
# The CLI's subprocesses are measured too (pyproject.toml: [tool.coverage.run] patch).
COVERAGE_FLOOR := 93

test: $(STAMP) chromium
	$(BIN)/ruff check batchrun tests benchmarks
	$(BIN)/mypy batchrun
	$(BIN)/python -m pytest -q --cov --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)

# docs/report.png: the demo run's report as Chromium shows it (the README's picture).
screenshot: $(STAMP) chromium
	$(BIN)/batchrun run jobs/demo.toml --fresh --no-progress --report
	$(BIN)/python -m tests.chromium out/demo.report.html docs/report.png

lint: $(STAMP)
	$(BIN)/ruff check batchrun tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy batchrun

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/ratelimit.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/resume.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/ray.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
