"""The tests, in folders that mirror the packages they test.

`corpus/`, `downloader/` (with `fetching/`, `imaging/`, `politeness/`, `scheduling/`, `storing/`),
`run_health/`, `storage/`, `training/` and `assets/` test the packages of `mmc4_assets` of those
names; `devtools/` tests `mmc4_devtools`. The top-level modules test the product's top-level
modules (`test_partitions.py`, `test_schedules.py`, `test_sensors.py`) and the project as a whole:
the CLI, the UI and daemon, crash safety, the Postgres deployment, the instance file, packaging,
`deploy/` and the README. `support/` holds the helpers tests import; fixtures and hooks live in
the `conftest.py` files. Slow tests (servers, daemons, CLI runs, kill -9, runs at once) carry the
`system` marker wherever they live; `make test-fast` runs the rest (`-m "not system"`).
"""
