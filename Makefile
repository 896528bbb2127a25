# mmc4_assets: `make demo` runs the pipeline offline on the bundled sample; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The instance: dagster.yaml, here at the root, configures it and keeps its history in .dagster/.
# DAGSTER_HOME is always the root (a DAGSTER_HOME of your shell would leave dagster.yaml unused);
# `make ui DAGSTER_HOME=...` picks another instance.
DAGSTER_HOME := $(CURDIR)
export DAGSTER_HOME

.PHONY: env libmagic postgresql test demo ui lint bench clean

env: $(VENV)/.installed

# python-magic needs the system libmagic; install it where we can (Debian, as root), else say how.
libmagic:
	@$(PYTHON) -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('magic') else 1)" \
	|| { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	       echo "installing libmagic1 (needed by python-magic)"; \
	       apt-get update -qq && apt-get install -y -qq libmagic1 >/dev/null; \
	     else echo "libmagic is missing: install it (Debian/Ubuntu: sudo apt-get install libmagic1; macOS: brew install libmagic)"; exit 1; fi; }

# The tests start a real PostgreSQL server (initdb/pg_ctl of Debian's `postgresql` package) for the
# Postgres-backed instance; install it where we can, else say how.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
	|| { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	       echo "installing postgresql (the tests start a real PostgreSQL server)"; \
	       apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	     else echo "PostgreSQL is missing: install it (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql)"; exit 1; fi; }

$(VENV)/.installed: pyproject.toml | libmagic
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# setuptools warns on every editable install of a flat layout; nothing here to act on.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install -q -e '.[dev]'
	touch $@

test: env postgresql
	$(BIN)/python -m pytest -q

demo: env
	$(BIN)/python -m mmc4_assets.demo.run

# The UI and the daemon (schedules, sensors, the run queue) on the same instance.
ui: env
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg dev --host 127.0.0.1 --port 3000

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: env
	$(BIN)/python benchmarks/bench_reassign.py
	$(BIN)/python benchmarks/bench_download.py

clean:
	rm -rf $(VENV) .bench
