# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hpsearch create-study studies/digits-quick.yaml --replace
	$(BIN)/hpsearch launch local --study digits-quick --workers 3
	$(BIN)/hpsearch best digits-quick --top 5

# Two test processes, one file each at a time (module fixtures such as a throwaway PostgreSQL
# cluster stay whole): most tests wait on real worker processes, heartbeats and signals.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hpsearch tests bench worker.py

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf .hpsearch wandb
