# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; on a GPU machine use e.g. `make TORCH=torch test`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnops-installed

.PHONY: demo test lint check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/attnops demo

# Triton-kernel tests run in a second process under the CPU interpreter (it must be set before
# Triton loads); pytest's exit code 5 means no test carries the marker.
test: lint
	$(BIN)/python -m pytest -n 2 -q
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 -q -m triton || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

check: $(STAMP)
	$(BIN)/attnops check

bench: $(STAMP)
	$(BIN)/attnops bench --device cpu --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
