"""The offline demo: one shard through every asset, with nothing but loopback servers.

It writes a sample shard shaped like real mmc4, serves it (zipped, as the corpus ships it) from a
loopback HTTP server, serves its images from the project's loopback image host, and materializes
every asset for partition 42 with `dg launch` from the project root, on the project's instance
(dagster.yaml at the root), which `make ui` shows.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

from mmc4_assets.corpus.atomic import atomic_write
from mmc4_assets.corpus.status import read_status, summarize
from mmc4_assets.training.files import existing_parts, sizes_path
from mmc4_devtools.loopback_web import LoopbackWeb
from mmc4_devtools.sample_shard import generate_documents

SHARD = 42
PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGE_PORT = int(os.environ.get("MMC4_DEMO_IMAGE_PORT", "8765"))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


def serve_folder(folder: Path) -> ThreadingHTTPServer:
    """Serve a folder on 127.0.0.1 (ephemeral port) from a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Every FAULT_EVERY-th image points at a misbehaving URL, so the demo shows what is recorded.
FAULT_EVERY = 40
FAULT_PATHS = (
    "/fault/404/gone.jpg",
    "/fault/html/page.jpg",
    "/fault/truncated/cut.jpg",
    "/fault/noai/optout.jpg",
    "/fault/bomb.png",
    "/fault/redirect/2/moved.jpg",
    "/fault/gzip/zipped.jpg",
    "/fault/500/broken.jpg",
)


def write_zipped_sample(folder: Path, image_base_url: str) -> Path:
    """The sample shard, with a few fault URLs mixed in, zipped as the corpus ships it."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"docs_no_face_shard_{SHARD}_v2.jsonl"
    lines, count = [], 0
    for document in generate_documents(300, seed=42, image_base_url=image_base_url):
        for image in document["image_info"]:
            count += 1
            if count % FAULT_EVERY == 0:
                fault = FAULT_PATHS[(count // FAULT_EVERY) % len(FAULT_PATHS)]
                image["raw_url"] = image_base_url + fault
        lines.append(orjson.dumps(document))
    zipped = folder / f"{name}.zip"
    with atomic_write(zipped) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, b"\n".join(lines) + b"\n")
    return zipped


def main() -> int:
    data_dir = Path(os.environ.get("MMC4_DATA_DIR", "data")).absolute()
    source_dir = data_dir / "demo_source"
    # The project's instance (the Makefile sets DAGSTER_HOME to the root too): dg reads its
    # settings from $DAGSTER_HOME/dagster.yaml.
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT)
    with LoopbackWeb(hosts=1, latency_ms=20.0, port=IMAGE_PORT) as web:
        zipped = write_zipped_sample(source_dir, web.base_urls[0])
        docs_server = serve_folder(source_dir)
        docs_url = (
            f"http://127.0.0.1:{docs_server.server_address[1]}/"
            "docs_no_face_shard_{shard}_v2.jsonl.zip"
        )
        env = {
            **os.environ,
            "MMC4_DATA_DIR": str(data_dir),
            "MMC4_DOCS_URL": docs_url,
            "MMC4_ALLOW_PRIVATE_NETWORKS": "1",
            # dg checks that the project's venv is the active one; this interpreter's venv is.
            "VIRTUAL_ENV": sys.prefix,
            "DAGSTER_HOME": str(home),
        }
        # The command a user types (README): `dg launch` from the project root.
        command = [
            str(Path(sys.executable).with_name("dg")),
            "launch",
            "--assets",
            "*",
            "--partition",
            str(SHARD),
        ]
        print(f"sample shard: {zipped} served as {docs_url}")
        print(f"images served by {web.base_urls[0]}")
        print("running:", " ".join(command))
        result = subprocess.run(command, env=env, cwd=PROJECT_ROOT)
        docs_server.shutdown()
    if result.returncode != 0:
        print("the demo run failed; see the log above", file=sys.stderr)
        return result.returncode
    table = read_status(data_dir, SHARD)
    summary = summarize(table)
    print(f"\nDone. Outputs under {data_dir}:")
    for relative in (
        f"raw_docs/{SHARD}.jsonl",
        f"reassigned_docs/{SHARD}.jsonl",
        f"images/{SHARD}/",
        f"status/{SHARD}.parquet",
        f"status/{SHARD}.tsv.gz",
    ):
        print(f"  {data_dir / relative}")
    print(f"\nimages: {summary['images']}, success rate {summary['success_rate']:.1%}")
    for outcome, count in summary["outcomes"].items():
        if count:
            print(f"  {outcome:<16} {count}")
    print(f"\nTraining shards (OpenFlamingo's mmc4 format) of shard {SHARD}:")
    sizes = orjson.loads(sizes_path(data_dir, SHARD).read_bytes())
    for tar in existing_parts(data_dir, SHARD):
        print(f"  {tar}  ({sizes[tar.name]} samples, {tar.stat().st_size:,} bytes)")
    print(f"  {sizes_path(data_dir, SHARD)}  (samples per tar)")
    print(f"\nSee the runs in the UI: make ui (the instance: {home / 'dagster.yaml'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
