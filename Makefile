# mmc4_assets: `make demo` runs the pipeline offline on the bundled sample; `make test` runs the suite
# (`make test-fast` its unit tier).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The instance: dagster.yaml, here at the root, configures it and keeps its history in .dagster/.
# DAGSTER_HOME is always the root (a DAGSTER_HOME of your shell would leave dagster.yaml unused);
# `make ui DAGSTER_HOME=...` picks another instance.
DAGSTER_HOME := $(CURDIR)
export DAGSTER_HOME

.PHONY: FORCE env libmagic pillow-simd-deps postgresql test test-fast test-pillow demo ui lint bench clean

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

# The image library is Pillow-SIMD (the `simd` extra: the same `PIL` API, SSE4/AVX2 resampling),
# built from source against Debian's libjpeg-turbo, zlib, libwebp, libtiff and openjpeg headers;
# install them where we can (Debian, as root), else say how. AVIF comes from pillow-avif-plugin.
pillow-simd-deps:
	@{ echo '#include <jpeglib.h>'; echo '#include <zlib.h>'; echo '#include <webp/encode.h>'; \
	   echo '#include <tiffio.h>'; echo '#include <openjpeg.h>'; } \
	   | cc -E $$(pkg-config --cflags-only-I libopenjp2 2>/dev/null) -x c - >/dev/null 2>&1 \
	|| { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	       echo "installing the headers Pillow-SIMD builds against"; \
	       apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjpeg62-turbo-dev zlib1g-dev libwebp-dev libtiff-dev libopenjp2-7-dev >/dev/null; \
	     else echo "Pillow-SIMD needs a C compiler and these headers: install them (Debian/Ubuntu: sudo apt-get install gcc libjpeg62-turbo-dev zlib1g-dev libwebp-dev libtiff-dev libopenjp2-7-dev; macOS: brew install jpeg-turbo webp libtiff openjpeg), or build with plain Pillow: make env PIL=pillow"; exit 1; fi; }

# PIL=pillow-simd (default) or PIL=pillow: the `simd` or `pillow` extra, an explicit choice
# recorded in .venv/pil-flavour, which the tests check (test_pil.py). Pillow-SIMD uses AVX2 where
# the building CPU has it.
PIL ?= pillow-simd
ifeq ($(filter pillow pillow-simd,$(PIL)),)
$(error PIL must be pillow-simd or pillow, not $(PIL))
endif
PIL_EXTRA := $(if $(filter pillow,$(PIL)),pillow,simd)
SIMD_CC := cc$(if $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo y), -mavx2)
# Plain Pillow, the fallback: installed aside (never imported unless put first on PYTHONPATH),
# the same release Pillow-SIMD is built from, for `make test-pillow` and the suite's fallback test.
PILLOW_FALLBACK := Pillow==12.1.1
PILLOW_FALLBACK_DIR := $(VENV)/pillow-fallback

# Rewritten only when PIL changes, so that a change reinstalls.
$(VENV)/pil-flavour: FORCE
	@mkdir -p $(VENV) && [ "$$(cat $@ 2>/dev/null)" = "$(PIL)" ] || echo $(PIL) > $@
FORCE:

$(VENV)/.installed: pyproject.toml $(VENV)/pil-flavour | libmagic $(if $(filter simd,$(PIL_EXTRA)),pillow-simd-deps)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# Both distributions install the `PIL` package: never leave the other one underneath.
	$(BIN)/pip uninstall -q -y $(if $(filter simd,$(PIL_EXTRA)),pillow,pillow-simd) 2>/dev/null || true
	@# setuptools warns on every editable install of a flat layout; nothing here to act on.
	CC='$(SIMD_CC)' PYTHONWARNINGS='ignore:Editable installation' \
	  $(BIN)/pip install -q -e '.[dev,$(PIL_EXTRA)]'
	@# The editable install maps mmc4_assets alone (what the wheel ships); the checkout itself on
	@# the venv's path lets the tests, benchmarks, demo and their server processes import
	@# mmc4_devtools and mmc4_assets_tests from any folder.
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "mmc4_checkout.pth").write_text("$(CURDIR)\n")'
	$(BIN)/pip install -q --no-deps --upgrade --target $(PILLOW_FALLBACK_DIR) '$(PILLOW_FALLBACK)'
	touch $@

test: env postgresql
	$(BIN)/python -m pytest -q

# The unit tier: every test but the `system` ones (servers, daemons, CLI runs), under a minute;
# no PostgreSQL needed.
test-fast: env
	$(BIN)/python -m pytest -q -m "not system"

# The imaging tests under plain Pillow (the fallback), first on the path ahead of the venv's PIL.
IMAGING_TESTS := mmc4_assets_tests/downloader/imaging/test_prepare.py mmc4_assets_tests/downloader/imaging/test_pil.py
test-pillow: env
	PYTHONPATH=$(PILLOW_FALLBACK_DIR) MMC4_EXPECT_PIL=pillow $(BIN)/python -m pytest -q -n 0 $(IMAGING_TESTS)

demo: env
	$(BIN)/python -m mmc4_devtools.demo

# The UI and the daemon (schedules, sensors, the run queue) on the same instance. The allocator
# settings the fetch processes give themselves, for every process: the daemon decodes the code
# location's snapshot anew each minute, and glibc's defaults keep twice as much of what it frees
# (docs/operating.md).
MALLOC_ENV := MALLOC_ARENA_MAX=4 MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=1048576
ui: env
	$(BIN)/python -m mmc4_assets.run_health.pools  # the download pool's limit before any run
	$(MALLOC_ENV) VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg dev --host 127.0.0.1 --port 3000

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: env
	$(BIN)/python benchmarks/bench_reassign.py
	$(BIN)/python benchmarks/bench_download.py

clean:
	rm -rf $(VENV) .bench
