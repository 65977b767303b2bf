# drstudio: `make run` and `make test` bootstrap everything themselves, from the lock file.
PYTHON ?= python3
VENV   ?= .venv
SCENE  ?= scenes/texture.json
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.drstudio-installed
# The exact versions the suite passed with, hashed (pip-compile; refresh with `make lock`). It pins the
# CPU build of torch: an unpinned torch would pull a multi-GB CUDA build.
LOCK   := requirements.lock
PIP_VERSION        := 26.3
PIP_TOOLS_VERSION  := 7.7.0

.PHONY: run test lint bench lock check-lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip==$(PIP_VERSION)"

# Reinstall only when the lock (or this file) changes. The lock is installed with hashes and nothing
# else; drstudio itself goes in editable, without dependencies and with the locked setuptools.
$(STAMP): $(LOCK) pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/drstudio run $(SCENE)

test: $(STAMP)
	bash tests/support/ensure_display_deps.sh
	DRSTUDIO_LOCK_CHECK=1 $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/drstudio bench

# Re-resolve pyproject.toml's ranges (with the dev extra and lock-constraints.txt) to the newest
# versions and write them, hashed, to the lock. Run the suite before committing the new lock.
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install -q "pip==$(PIP_VERSION)" "pip-tools==$(PIP_TOOLS_VERSION)"
	$(VENV)-lock/bin/pip-compile -q --upgrade --generate-hashes --allow-unsafe --extra dev --strip-extras \
		--no-emit-index-url --no-emit-find-links -c lock-constraints.txt -o $(LOCK) pyproject.toml

# The venv holds exactly the lock (what tests/test_packaging.py checks inside `make test`).
check-lock: $(STAMP)
	DRSTUDIO_LOCK_CHECK=1 $(BIN)/python -m pytest -q tests/test_packaging.py

clean:
	rm -rf $(VENV) $(VENV)-lock runs .pytest_cache
