"""The deployment files (Dockerfile, deploy/) agree with the project they deploy.

Kubernetes, Helm and image registries are out of reach here, so these check what can be checked
offline: every file parses, and each name or command a file repeats from the project (the module
the code server loads, the driver, the run tag and its limits, the variables, the system packages)
is the project's own.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib

import dagster as dg
import orjson
import pytest
import yaml

from mmc4_assets.assets.images import DOWNLOAD_RUN_TAGS
from mmc4_assets_tests.support.instance_files import instance_settings
from mmc4_assets_tests.support.servers.postgres import POSTGRES_DAGSTER_YAML, PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def apt_packages(command: str) -> set[str]:
    """The packages of every `apt-get install` in a shell command line (quoted text ignored)."""
    lexer = shlex.shlex(command.replace("$$", "$"), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    packages: set[str] = set()
    words: list[str] = []
    for token in [*lexer, ";"]:
        if set(token) <= set("&|;<>(){}"):  # an operator or a redirection ends a command
            if "apt-get" in words and "install" in words:
                after = words[words.index("install") + 1 :]
                packages |= {word for word in after if not word.startswith("-")}
            words = []
        else:
            words.append(token)
    return packages


def makefile_recipe(target: str) -> str:
    lines = (PROJECT_ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().rstrip("\\"))
    return " ".join(recipe)


def test_every_deploy_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {path.relative_to(DEPLOY).as_posix() for path in files} >= {
        "postgres/dagster.yaml",
        "helm/values.yaml",
    }
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_the_code_server_loads_the_project_definitions(values, dockerfile):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[:2] == ["-m", "mmc4_assets"]
    module = importlib.import_module(args[1])
    assert isinstance(module.defs, dg.Definitions)
    assert module.defs.resolve_asset_graph().get_all_asset_keys() >= {
        dg.AssetKey(name) for name in ("raw_docs", "reassigned_docs", "status_report")
    }
    # The image's own command serves the same module on the port the chart expects.
    (cmd,) = [arguments for instruction, arguments in dockerfile if instruction == "CMD"]
    command = yaml.safe_load(cmd)
    assert command[:3] == ["dagster", "api", "grpc"]
    assert command[command.index("-m") + 1] == args[1]
    assert command[command.index("-p") + 1] == str(deployment["port"])


def test_helm_storage_is_the_shipped_postgres_instance(values):
    shipped = yaml.safe_load(POSTGRES_DAGSTER_YAML.read_text())["storage"]["postgres"]
    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False  # an external database
    assert postgresql["postgresqlScheme"] == shipped["postgres_db"]["scheme"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]


def test_helm_queue_has_the_local_instance_limits_under_the_same_names(values):
    local = instance_settings()
    helm = values["concurrency"]
    assert helm["enabled"] is True
    ((tag, download),) = DOWNLOAD_RUN_TAGS.items()
    (local_limit,) = local["concurrency"]["runs"]["tag_concurrency_limits"]
    (helm_limit,) = helm["runs"]["tagConcurrencyLimits"]
    assert (local_limit["key"], local_limit["value"]) == (tag, download)
    assert (helm_limit["key"], helm_limit["value"]) == (tag, download)
    assert 0 < helm_limit["limit"] <= helm["runs"]["maxConcurrentRuns"]
    assert helm["pools"]["defaultLimit"] >= 1
    assert "default_limit" in local["concurrency"]["pools"]
    # The chart refuses limits given both here and on the run coordinator.
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert not coordinator["config"]["queuedRunCoordinator"]


def test_runs_are_kubernetes_jobs_with_resource_requests(values):
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    requests = launcher["config"]["k8sRunLauncher"]["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]


def test_the_variables_and_secrets_are_the_ones_the_project_reads(values):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True  # runs get them too
    names = {variable["name"] for variable in deployment["env"]}
    resources = (PROJECT_ROOT / "mmc4_assets" / "resources.py").read_text()
    assert {"MMC4_DATA_DIR", "MMC4_DOCS_URL"} <= names
    for name in names:
        assert f'"{name}"' in resources, f"{name} is not read by mmc4_assets/resources.py"
    assert deployment["envSecrets"] == [{"name": "mmc4-object-store"}]
    # No credential is written into the values themselves.
    assert not any(re.search(r"KEY|SECRET|PASSWORD", name) for name in names)
    assert values["postgresql"]["postgresqlPassword"] == ""


def test_the_image_installs_what_the_makefile_installs(dockerfile):
    runs = " && ".join(arguments for instruction, arguments in dockerfile if instruction == "RUN")
    assert apt_packages(makefile_recipe("libmagic")) <= apt_packages(runs)
    assert apt_packages(makefile_recipe("libmagic")) == {"libmagic1"}
    # The same steps as the Makefile's venv: `python -m venv`, upgrade pip, install the project.
    assert "-m venv" in runs and "pip install -q --upgrade pip" in runs
    installed = re.search(r"pip install -q '\.\[([\w,]+)\]'", runs)
    assert installed, runs
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    chosen = [dependency for extra in installed[1].split(",") for dependency in extras[extra]]
    assert any(dependency.startswith("dagster-k8s") for dependency in chosen)
    # The image library the Makefile installs: Pillow-SIMD, built against the same headers.
    assert any(dependency.startswith("pillow-simd==") for dependency in chosen)
    assert apt_packages(makefile_recipe("pillow-simd-deps")) <= apt_packages(runs)
    assert "libjpeg62-turbo-dev" in apt_packages(makefile_recipe("pillow-simd-deps"))


def test_the_image_has_what_pip_needs_and_runs_as_a_user(dockerfile):
    ignored = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for instruction, arguments in dockerfile:
        if instruction == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            for source in sources:
                assert (PROJECT_ROOT / source).exists(), source
                assert source not in ignored, f"{source} is copied but .dockerignore drops it"
    (user,) = [arguments for instruction, arguments in dockerfile if instruction == "USER"]
    assert user not in {"0", "root"}
    readme = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["readme"]
    copied = " ".join(arguments for instruction, arguments in dockerfile if instruction == "COPY")
    assert readme in copied.split()  # setuptools reads it during `pip install .`


def test_pilot_site_shares_counts_images_per_site(tmp_path):
    """deploy/pilot_site_shares.py, as docs/many-machines.md runs it: shares per registrable
    domain, largest first, with the budget that finishes each in 3 days (~650 x share)."""
    urls = [*(f"https://i{n % 4}.wp.com/a/{n}.jpg" for n in range(6)), "http://example.org/x.png"]
    docs = tmp_path / "42.jsonl"
    docs.write_bytes(
        orjson.dumps({"image_info": [{"raw_url": url} for url in urls[:4]]})
        + b"\n"
        + orjson.dumps({"image_info": [{"raw_url": url} for url in urls[4:]]})
        + b"\n"
    )
    script = DEPLOY / "pilot_site_shares.py"
    result = subprocess.run(
        [sys.executable, str(script), str(docs)], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["wp.com", "example.org"]
    assert lines[0].split()[1] == "85.71%" and lines[0].endswith("budget for 3 days: 557")
    assert lines[1].endswith("budget for 3 days: 93")
