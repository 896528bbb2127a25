"""Learned per-site limits against sites that have a capacity: one run, then three at once.

The web (loopback, every name resolved to 127.0.0.1 through a hosts file of the runs' own mount
namespace): a CDN behind four names (cdn0..cdn3.bigcdn.test, one site) that serves 48 requests
at once in 0.5 s, a shop's server (shop.test) that serves 2 in 0.3 s, and 40 ordinary sites
with room to spare (0.1 s). Past its capacity a server queues (answers take longer), past twice
its capacity it sheds with a bare 503.

Each mode runs side by side with the same web: learned limits (the default) against fixed
budgets of 8 per site (``adaptive: false``, what the engine did before). Printed: the CDN's
requests in flight on average while it had work (and as a share of its capacity), the shop's
answers against its unloaded latency and what it shed, images ok, rate_limited, the rate, the
ledger's transactions per run.

    flock /tmp/mmc4-bench.lock .venv/bin/python benchmarks/bench_capacity.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmc4_devtools.capacity_web import CapacityServer  # noqa: E402

CDN_NAMES = [f"cdn{n}.bigcdn.test" for n in range(4)]
ORDINARY = [f"site{n}.test" for n in range(40)]


class Web:
    def __init__(self) -> None:
        self.cdn = CapacityServer(48, 0.5)
        self.shop = CapacityServer(2, 0.3)
        self.ordinary = CapacityServer(10_000, 0.1)

    def urls(self, shard: int, cdn: int, shop: int, ordinary: int) -> list[str]:
        urls = [f"http://{CDN_NAMES[i % 4]}:{self.cdn.port}/s{shard}/{i}.jpg" for i in range(cdn)]
        urls += [f"http://shop.test:{self.shop.port}/s{shard}/{i}.jpg" for i in range(shop)]
        urls += [
            f"http://{ORDINARY[i % len(ORDINARY)]}:{self.ordinary.port}/s{shard}/{i}.jpg"
            for i in range(ordinary)
        ]
        return urls

    def close(self) -> None:
        for server in (self.cdn, self.shop, self.ordinary):
            server.close()


def start_run(work: Path, name: str, urls: list[str], settings: dict, shard: int, hosts: Path):
    spec = {
        "refs": [[doc, 0, f"{doc}.jpg", url] for doc, url in enumerate(urls)],
        "data_dir": str(work / name / "data"),
        "shard": shard,
        "settings": settings,
        "result": str(work / f"{name}.json"),
    }
    path = work / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "mmc4_assets_tests.support.shard_runner", str(path)]
    bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, str(hosts), *command],
        cwd=ROOT,
    )


def measure(mode: str, runs: int, args, work: Path, hosts: Path) -> dict:
    """``runs`` shard runs at once in ``mode``, in a folder and on a ledger of their own (files or
    limits left by an earlier measurement would be reused, not fetched or learned)."""
    work = work / f"{mode}, {runs} run(s)"
    work.mkdir()
    web = Web()
    settings = {
        "allow_private_networks": True,
        "respect_robots_txt": False,
        "fetch_processes": 1,
        "ledger_url": f"sqlite:///{work / 'ledger.sqlite'}",
    }
    if mode == "fixed budgets of 8":
        settings.update(adaptive=False, per_site=8)
    cdn, shop, ordinary = args.cdn // runs, args.shop, args.ordinary
    started = time.monotonic()
    try:
        processes = [
            start_run(work, f"{mode}-{n}", web.urls(n, cdn, shop, ordinary), settings, n, hosts)
            for n in range(runs)
        ]
        for process in processes:
            process.wait()
        wall = time.monotonic() - started
        results = [json.loads((work / f"{mode}-{n}.json").read_text()) for n in range(runs)]
    finally:
        web.close()
    outcomes = [outcome for r in results for outcome in r["outcomes"]]
    shop_seconds = web.shop.served_seconds()
    return {
        "mode": mode,
        "runs": runs,
        "images": len(outcomes),
        "ok": outcomes.count("ok"),
        "rate_limited": outcomes.count("rate_limited"),
        "not_ok": dict(Counter(outcome for outcome in outcomes if outcome != "ok")),
        "why_not_ok": dict(
            Counter(
                f"{urlsplit(url).hostname}: {outcome}: {error}"
                for r in results
                for url, outcome, error in r.get("failed", [])
            ).most_common(5)
        ),
        "wall_s": round(wall, 1),
        "images_per_s": round(len(outcomes) / wall, 1),
        "cdn_mean_in_flight": round(web.cdn.mean_in_flight(), 1),
        "cdn_max_in_flight": web.cdn.max_in_flight,
        "cdn_shed": web.cdn.shed(),
        "shop_latency_x": round(sum(shop_seconds) / len(shop_seconds) / 0.3, 2),
        "shop_shed_percent": round(100 * web.shop.shed() / max(1, len(web.shop.answers)), 1),
        "shop_mean_in_flight": round(web.shop.mean_in_flight(), 1),
        "ledger_transactions_per_run": round(
            sum(r["stats"].get("ledger_transactions", 0) for r in results) / runs
        ),
        "site_limits": [r["stats"].get("site_limits", [])[:3] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cdn", type=int, default=1200, help="CDN images (split over runs)")
    parser.add_argument("--shop", type=int, default=100, help="shop images per run")
    parser.add_argument("--ordinary", type=int, default=400, help="ordinary images per run")
    parser.add_argument("--skip-fixed", action="store_true", help="learned limits only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    hosts = work / "hosts"
    names = [*CDN_NAMES, "shop.test", *ORDINARY]
    hosts.write_text(Path("/etc/hosts").read_text() + "".join(f"127.0.0.1 {n}\n" for n in names))
    modes = ["learned limits"] + ([] if args.skip_fixed else ["fixed budgets of 8"])
    rows = []
    for runs in (1, 3):
        for mode in modes:
            print(f"{mode}, {runs} run(s) ...", flush=True)
            row = measure(mode, runs, args, work, hosts)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        "| mode | runs | images/s | ok | rate_limited | CDN in flight (of 48) | CDN max "
        "| shop latency / unloaded | shop shed | shop in flight | ledger tx per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['runs']} | {r['images_per_s']} | {r['ok']}/{r['images']} | "
            f"{r['rate_limited']} | {r['cdn_mean_in_flight']} "
            f"({100 * r['cdn_mean_in_flight'] / 48:.0f}%) | {r['cdn_max_in_flight']} | "
            f"{r['shop_latency_x']}x | {r['shop_shed_percent']}% | {r['shop_mean_in_flight']} | "
            f"{r['ledger_transactions_per_run']} |"
        )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    target = out / f"bench_capacity_{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"results: {target}")


if __name__ == "__main__":
    main()
