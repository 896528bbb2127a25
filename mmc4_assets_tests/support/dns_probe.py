"""Inside a network namespace: serve images on 127.0.0.1 and download them by name.

    ip netns exec NS python -m mmc4_assets_tests.support.dns_probe SPEC.json

The namespace's resolv.conf names the test's DNS server; the names in SPEC resolve through it.
SPEC: {"names": {name: images}, "settings": {...}, "data_dir": ..., "result": path}. The result
has each image's row (outcome, error, attempts) by name and the requests the server got.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mmc4_assets.downloader import DownloadSettings, ImageRef, download_shard
from mmc4_assets_tests.support.local_server import LocalServer, image_bytes, send


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    body = image_bytes(300, 200)
    server = LocalServer({f"/{i}.jpg": (lambda h: send(h, 200, body)) for i in range(1000)},
                         latency=0.05)  # fmt: skip
    hosts: Counter[str] = Counter()
    original = server.routes

    refs = []
    for name, count in spec["names"].items():
        for i in range(count):
            refs.append(ImageRef(len(refs), 0, f"{len(refs)}.jpg",
                                 f"http://{name}:{server.port}/{i}.jpg"))  # fmt: skip
    settings = DownloadSettings(**spec["settings"])
    try:
        table = download_shard(refs, data_dir=Path(spec["data_dir"]), shard=1, settings=settings)
    finally:
        server.close()
    for _, _, headers in server.requests:
        hosts[headers.get("Host", "").rsplit(":", 1)[0]] += 1
    rows: dict[str, list] = {}
    for row in table.itertuples():
        error = row.error if isinstance(row.error, str) else ""
        rows.setdefault(row.host, []).append([row.outcome, error, int(row.attempts)])
    result = {"rows": rows, "requests_by_host": dict(hosts), "routes": len(original)}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
