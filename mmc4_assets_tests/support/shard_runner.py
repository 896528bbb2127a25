"""Run download_shard in a process of its own, as a download run does (tests of runs at once).

    python -m mmc4_assets_tests.support.shard_runner SPEC.json

SPEC: {"refs": [[doc, index, name, url], ...], "data_dir": ..., "shard": n, "settings": {...},
"result": path}. The result file gets the outcomes and the politeness counters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmc4_assets.downloader import DownloadSettings, ImageRef, download_shard


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    settings = DownloadSettings(**spec["settings"])
    refs = [ImageRef(*ref) for ref in spec["refs"]]
    stats: dict = {}
    table = download_shard(
        refs, data_dir=Path(spec["data_dir"]), shard=spec["shard"], settings=settings, stats=stats
    )
    rows = table[table["outcome"] != "ok"]
    failed = [list(row) for row in zip(rows["url"], rows["outcome"], rows["error"], strict=True)]
    result = {"outcomes": table["outcome"].tolist(), "failed": failed, "stats": stats}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
