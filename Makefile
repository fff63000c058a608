# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create the virtual environment and install facetrip into it when needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.facetrip-installed

.PHONY: install test demo bench-losses clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: $(INSTALLED)
	$(BIN)/python -m pytest

demo: $(INSTALLED)
	$(BIN)/facetrip train

bench-losses: $(INSTALLED)
	$(BIN)/python scripts/bench_losses.py --output docs/reports/bench_losses.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
