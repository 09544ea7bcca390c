# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint format clean wheel-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[test,benchmark]"
# the query-sheet browser test uses Debian's Chromium, never one Playwright downloads (CI runs as root)
	if [ ! -x /usr/bin/chromium ]; then apt-get update && apt-get install -y --no-install-recommends chromium; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alr demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q

# A wheel (not editable) installed into a fresh venv runs `alr train` and `alr relabel` from a temp folder.
wheel-smoke: $(STAMP)
	BASE_PYTHON=$(PYTHON) TORCH_SPEC=$(TORCH_SPEC) bash scripts/wheel_smoke.sh $(BIN)/python

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
