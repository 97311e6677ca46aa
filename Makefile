# The README's two commands: `make demo` and `make test`. Each creates .venv
# (once) with the project and its test extras, then runs its job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/scaling demo

# scripts/postgres.sh installs Debian's postgresql if it is missing and starts a
# throw-away cluster on a local port for the store tests; pytest picks up its URL.
# `scaling data fetch fashion-mnist` puts the real Fashion-MNIST files in the cache (no
# root needed; nothing is downloaded when they are there) for the one test that reads
# them (tests/test_data_fashion.py); without the Debian archive that test says why it skips.
test: $(BIN)/.installed
	$(BIN)/scaling data fetch fashion-mnist || echo "make test: could not fetch Fashion-MNIST; its real-data test will be skipped" >&2
	bash scripts/postgres.sh start
	PATH="$(abspath $(BIN)):$$PATH" SCALING_TEST_PG_URL="$$(bash scripts/postgres.sh url)" \
	  $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15; rc=$$?; bash scripts/postgres.sh stop; exit $$rc

clean:
	rm -rf $(VENV) results/runs.db results/demo
