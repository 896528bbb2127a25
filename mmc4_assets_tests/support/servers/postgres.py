"""A real PostgreSQL server for tests, and Dagster instances on it.

Why: the multi-machine instance (deploy/postgres/dagster.yaml) must be exercised against the
database it will meet in production, not SQLite. The server comes from Debian's `postgresql`
package (`make postgresql` installs it): `initdb` and `pg_ctl` from
/usr/lib/postgresql/<version>/bin, run as the `postgres` user when we are root (PostgreSQL
refuses root), listening on 127.0.0.1 only, on a free port, in a temporary folder that is
deleted when it stops. Durability is off (fsync and friends): a test server starts in seconds.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from mmc4_assets_tests.support.servers.process import ManagedServer, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[3]
POSTGRES_DAGSTER_YAML = PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml"
DEBIAN_PREFIX = Path("/usr/lib/postgresql")
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # webserver, daemon, code servers and parallel runs, each a few
}


@dataclass(frozen=True)
class PostgresParams:
    """How to reach one database of the server."""

    host: str
    port: int
    user: str
    password: str
    db: str

    def env(self) -> dict[str, str]:
        """The variables deploy/postgres/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db,
        }

    @property
    def url(self) -> str:
        """The database as a libpq URL (what the site ledger takes)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.db}"

    def connect(self):
        """A plain psycopg2 connection, for tests that look at the tables themselves."""
        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.db
        )


@dataclass(frozen=True)
class PostgresHome:
    """A DAGSTER_HOME holding the shipped Postgres dagster.yaml, and the environment that makes
    it point at one database: what a process of the deployment (webserver, daemon, run) sees."""

    path: Path
    params: PostgresParams

    @property
    def env(self) -> dict[str, str]:
        return {"DAGSTER_HOME": str(self.path), **self.params.env()}


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL's bin folder, else the folder of `initdb` on PATH."""
    versions = sorted(
        (path.parent for path in DEBIAN_PREFIX.glob("*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise RuntimeError(
        "PostgreSQL's initdb was not found (neither /usr/lib/postgresql/*/bin nor PATH): run "
        "`make postgresql` as root on Debian/Ubuntu, or install PostgreSQL and put its bin on PATH"
    )


class PostgresServer(ManagedServer):
    """One PostgreSQL cluster in a temporary folder; a context manager that always cleans up."""

    def __init__(self, user: str = "mmc4"):
        self.user = user
        self.password = secrets.token_urlsafe(12)
        self.bin = postgres_bin_dir()
        self.port = 0
        self.folder: Path | None = None
        self._run_as: dict = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mmc4-postgres-"))
        if os.geteuid() == 0:
            # initdb and postgres refuse root; the folder must belong to the user they run as.
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if self._run_as:
            os.chown(password_file, self._run_as["user"], self._run_as["group"])
        self._run(
            "initdb",
            *("-D", str(self.data), "-U", self.user, f"--pwfile={password_file}"),
            *("--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"),
        )
        password_file.unlink()
        self.port = free_port()
        settings = {**SERVER_SETTINGS, "port": str(self.port)}
        settings["unix_socket_directories"] = f"'{self.folder}'"
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        if self.folder is None:
            return
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    # ------------------------------------------------------------------ use

    def params(self, db: str = "postgres") -> PostgresParams:
        return PostgresParams("127.0.0.1", self.port, self.user, self.password, db)

    def create_database(self, name: str) -> PostgresParams:
        """A new, empty database (Dagster creates its tables on first use)."""
        connection = self.params().connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()
        return self.params(name)

    def write_home(self, folder: Path, db: str) -> PostgresHome:
        """A DAGSTER_HOME with the shipped deploy/postgres/dagster.yaml, on a new database."""
        params = self.create_database(db)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(POSTGRES_DAGSTER_YAML, folder / "dagster.yaml")
        return PostgresHome(folder, params)

    # ------------------------------------------------------------------ helpers

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def log(self) -> Path:
        assert self.folder is not None
        return self.folder / "server.log"

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        result = subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.folder,
            **self._run_as,
        )
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}"
            )
