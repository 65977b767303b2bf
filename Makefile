# drstudio: `make run` and `make test` bootstrap everything themselves.
PYTHON ?= python3
VENV   ?= .venv
# A CPU build of torch from local disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
SCENE  ?= scenes/texture.json
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.drstudio-installed

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the dependency list changes (or the torch pin does).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/drstudio run $(SCENE)

test: $(STAMP)
	bash tests/support/ensure_display_deps.sh
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/drstudio bench

clean:
	rm -rf $(VENV) runs .pytest_cache
