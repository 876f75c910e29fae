# Every target bootstraps its own virtual environment: a fresh clone needs only Python >= 3.11.
# `make demo` installs what a run needs (pip install -e .); `make test` adds every extra it tests
# (.[test,report,ray]). Each has its own stamp, so demo then test upgrades the venv, and a second
# `make test` installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: demo test test-fast lint typecheck bench clean chromium screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

# Everything the runtime has and more: the runtime's stamp is renewed with it.
$(TESTING): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,report,ray]'
	touch $(TESTING) $(RUNTIME)

# --fresh: the demo shows a whole run every time (a plain rerun would resume: nothing to send).
demo: $(RUNTIME)
	$(BIN)/batchrun run jobs/demo.toml --fresh

# The report's browser test opens pages in headless Chromium, from the system's packages.
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# The coverage floor only ever rises: when a change lifts the total, lift COVERAGE_FLOOR with it.
# The CLI's own processes are measured too (pyproject.toml: [tool.coverage.run] patch).
COVERAGE_FLOOR := 94
# Two workers; the Ray tests share the session's one Ray, so they stay together (loadgroup).
WORKERS := -n 2 --dist loadgroup

test: $(TESTING) chromium
	$(BIN)/ruff check batchrun tests benchmarks
	$(BIN)/mypy batchrun
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q $(WORKERS) --cov --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)

# The edit loop: all but the Ray, browser and slow tests, without coverage.
test-fast: $(TESTING)
	$(BIN)/python -m pytest -q $(WORKERS) -m "not ray and not browser and not slow"

# docs/report.png: the demo run's report as Chromium shows it (the README's picture).
screenshot: $(TESTING) chromium
	$(BIN)/batchrun run jobs/demo.toml --fresh --no-progress --report
	$(BIN)/python -m tests.chromium out/demo.report.html docs/report.png

lint: $(TESTING)
	$(BIN)/ruff check batchrun tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: $(TESTING)
	$(BIN)/mypy batchrun

bench: $(TESTING)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/ratelimit.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/resume.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/ray.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
