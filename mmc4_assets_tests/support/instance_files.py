"""The project's instance file, dagster.yaml at the root, as the tests use it.

Why: the file keeps the instance's history in .dagster/, a path relative to where a command runs.
A test that ran Dagster from the project itself would write into the developer's own history, so
tests run commands from a copy of the project's root, or give Dagster a home of its own with the
same settings.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ROOT_DAGSTER_YAML = PROJECT_ROOT / "dagster.yaml"
# Where the local instance keeps its history; deploy/postgres/dagster.yaml has `storage` instead.
HISTORY_KEYS = frozenset({"storage", "local_artifact_storage", "compute_logs"})
# What the commands a user types from the root read there.
ROOT_FILES = ("pyproject.toml", "workspace.yaml", "dagster.yaml", "mmc4_assets")


def instance_settings() -> dict:
    """The root file's settings but where it keeps history: the queue, pools, run monitoring and
    retries, log level."""
    config = yaml.safe_load(ROOT_DAGSTER_YAML.read_text())
    return {key: value for key, value in config.items() if key not in HISTORY_KEYS}


def write_home(home: Path) -> Path:
    """A DAGSTER_HOME with the project's instance settings, whose history Dagster keeps in `home`
    itself (its default), not in the project's .dagster/."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_settings(), sort_keys=False))
    return home


def project_root_copy(folder: Path) -> Path:
    """The project's root as a fresh clone has it, with no history yet: the files the commands read
    there (dagster.yaml among them) linked into `folder`. Commands run from it keep their history
    in its own .dagster/."""
    folder.mkdir(parents=True)
    for name in ROOT_FILES:
        (folder / name).symlink_to(PROJECT_ROOT / name)
    return folder.resolve()
