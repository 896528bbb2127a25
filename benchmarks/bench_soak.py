"""Soak: a long backfill on a persistent instance, to show that nothing grows without bound.

Run by hand, never in CI (issue 25). It builds a work folder (`.bench/soak-<timestamp>/`) holding
a DAGSTER_HOME (SQLite storage, the project's dagster.yaml with absolute paths), a data folder, a
scratch folder and `--shards` generated shards (~`--docs` documents, ~3 images each, 1 in 40 a
fault URL as in the demo) whose images live on a loopback web (`mmc4_devtools.loopback_web`:
`--hosts` servers on 127.0.0.1.., `--latency-ms` per answer). It starts `dagster-daemon` and
`dagster-webserver` on that instance, turns the stale-image sensor on, and asks the webserver
(GraphQL `launchPartitionBackfill`) for a backfill of the partitioned pipeline over the shards.

Every `--interval` seconds it records: shards and images done (status tables' rows), RSS of the
daemon, of the webserver and of all run processes (psutil, each tree), the instance's bytes and
rows (event log, runs, materializations, read-only sqlite3), the site ledger's rows, the data
folder's files and bytes per top-level folder, scratch bytes, and runs by status. Faults, on by
default: `--kill-run-at MIN` kills -9 one running run's process tree, `--restart-webserver-at MIN`
restarts the webserver, `--throttle-at MIN` makes the first host answer every request with 429
(Retry-After: 5) for a minute (a negative value turns any of them off).

At the end it prints a table: per quantity its first and last value, a least-squares slope per
shard done and per image, the projection to 23,085 shards, and a verdict (flat or growing). It
writes `benchmarks/results/bench_soak_<timestamp>.json` (series and verdicts), `.csv` (series) and
`.png` (plots; matplotlib, a dev-only install, with --no-deps: see benchmarks/README).

    flock /work/suite.lock .venv/bin/python benchmarks/bench_soak.py          # 150 shards, 60 min
    flock /work/suite.lock .venv/bin/python benchmarks/bench_soak.py --shards 6 --minutes 5 \\
        --interval 10                                                         # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psutil
import pyarrow.parquet as pq

from mmc4_devtools.demo import FAULT_EVERY, FAULT_PATHS
from mmc4_devtools.sample_shard import generate_documents

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ALL_SHARDS = 23_085
PIPELINE = ["raw_docs", "reassigned_docs", "downloaded_images", "status_report", "training_shards"]
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_instance(home: Path) -> None:
    """The project's dagster.yaml with every relative `.dagster` folder made absolute."""
    home.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "dagster.yaml").read_text()
    text = text.replace("base_dir: .dagster/storage", f"base_dir: {home}/storage")
    text = text.replace("base_dir: .dagster", f"base_dir: {home}")
    (home / "dagster.yaml").write_text(text)


def write_shards(folder: Path, shards: int, docs: int, base_urls: list[str]) -> int:
    """`shards` shard files named as the corpus names them; images spread over every host."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for shard in range(shards):
        lines, count = [], 0
        for document in generate_documents(docs, seed=shard, image_base_url="http://HOST"):
            for image in document["image_info"]:
                count += 1
                path = image["raw_url"].removeprefix("http://HOST")
                if count % FAULT_EVERY == 0:
                    path = FAULT_PATHS[(count // FAULT_EVERY) % len(FAULT_PATHS)] + f"?{shard}"
                host = base_urls[zlib.crc32(image["image_name"].encode()) % len(base_urls)]
                image["raw_url"] = host + path
            lines.append(orjson.dumps(document))
        (folder / f"docs_no_face_shard_{shard}_v2.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        total += count
    return total


def spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in its own session (killed as a group), its output in `log`."""
    handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_web(work: Path, hosts: int, latency_ms: float) -> tuple[subprocess.Popen, list[str]]:
    cmd = [sys.executable, "-m", "mmc4_devtools.loopback_web", "--hosts", str(hosts)]
    cmd += ["--latency-ms", str(latency_ms), "--port", str(free_port())]
    cmd += ["--cache-dir", str(work / "webcache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    web = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(work / "web.log", "ab"),  # noqa: SIM115 - lives as long as the web
        text=True,
        start_new_session=True,
    )
    urls = [web.stdout.readline().strip() for _ in range(hosts)]
    if not all(u.startswith("http://") for u in urls):
        raise RuntimeError(f"the loopback web did not start: {urls}")
    return web, urls


def start_webserver(env: dict, port: int, work: Path) -> subprocess.Popen:
    cmd = [str(BIN / "dagster-webserver"), "-m", "mmc4_assets", "-p", str(port), "-h", "127.0.0.1"]
    proc = spawn(cmd, env, work / "webserver.log")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the webserver exited; see webserver.log") from None
            time.sleep(1)
    raise RuntimeError("the webserver did not answer within 180 s")


def graphql(port: int, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""


def launch_backfill(port: int, shards: int) -> str:
    params = {
        "partitionNames": [str(s) for s in range(shards)],
        "assetSelection": [{"path": [key]} for key in PIPELINE],
        "title": f"soak {shards} shards",
    }
    answer = graphql(port, BACKFILL, {"p": params})
    result = (answer.get("data") or {}).get("launchPartitionBackfill") or {}
    if result.get("__typename") != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {answer}")
    return result["backfillId"]


# --------------------------------------------------------------------------- sampling


def ours(home: Path) -> list[psutil.Process]:
    """Every live process started with our DAGSTER_HOME (daemon, webserver, code servers, runs)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("DAGSTER_HOME") == str(home):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def is_run(proc: psutil.Process) -> bool:
    """A run's process: what a code server (`dagster api grpc`) starts (its multiprocessing
    child), or `dagster api execute_run`."""
    try:
        if "execute_run" in " ".join(proc.cmdline()):
            return True
        parent = proc.parent()
        return (
            parent is not None
            and "grpc" in " ".join(parent.cmdline())
            and "grpc" not in " ".join(proc.cmdline())
            and "resource_tracker" not in " ".join(proc.cmdline())
        )
    except psutil.Error:
        return False


def is_code_server(proc: psutil.Process) -> bool:
    try:
        return "api grpc" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def tree_rss(root: psutil.Process, exclude: set[int]) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        if proc.pid in exclude:
            continue
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def memory(home: Path, daemon: subprocess.Popen, webserver: subprocess.Popen) -> dict:
    """RSS of the daemon's and webserver's trees (without runs), and of every run's tree."""
    runs = [p for p in ours(home) if is_run(p)]
    run_pids: set[int] = set()
    for run in runs:
        try:
            run_pids |= {run.pid, *(c.pid for c in run.children(recursive=True))}
        except psutil.Error:
            pass
    sizes = {}
    for name, popen in (("daemon", daemon), ("webserver", webserver)):
        try:
            proc = psutil.Process(popen.pid)
            sizes[f"rss_{name}"] = tree_rss(proc, run_pids)
            # Its own process alone, and its code servers: the daemon starts a new one now and
            # then and keeps the old one while runs it started live, a step in the tree's RSS.
            sizes[f"rss_{name}_alone"] = proc.memory_info().rss
            sizes[f"{name}_code_servers"] = sum(is_code_server(c) for c in proc.children())
        except psutil.Error:
            sizes[f"rss_{name}"] = 0
    rss_runs = 0
    for pid in run_pids:
        try:
            rss_runs += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return {**sizes, "rss_runs": rss_runs, "run_processes": len(runs)}


def folder_usage(folder: Path) -> tuple[int, int]:
    files = size = 0
    for base, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(base, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def by_top_folder(folder: Path, prefix: str) -> dict:
    """Files and bytes of each top-level folder of `folder` (loose files under `_files`)."""
    out: dict[str, int] = {}
    if not folder.exists():
        return out
    loose_files = loose_bytes = 0
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            files, size = folder_usage(entry)
            out[f"{prefix}{entry.name}_files"], out[f"{prefix}{entry.name}_bytes"] = files, size
        else:
            loose_files, loose_bytes = loose_files + 1, loose_bytes + entry.lstat().st_size
    out[f"{prefix}_files"], out[f"{prefix}_bytes"] = loose_files, loose_bytes
    return out


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def scalar(path: Path, sql: str) -> int:
    if not path.exists():
        return 0
    try:
        with read_only(path) as db:
            return int(db.execute(sql).fetchone()[0] or 0)
    except sqlite3.Error:
        return -1


def instance_rows(home: Path) -> dict:
    """Rows of the instance's SQLite files: runs by status, event log, materializations, ledger."""
    history = home / "history"
    out = {"runs_" + s: 0 for s in ("SUCCESS", "FAILURE", "QUEUED", "STARTED", "CANCELED")}
    if (history / "runs.db").exists():
        with read_only(history / "runs.db") as db:
            for status, count in db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"):
                out[f"runs_{status}"] = count
            out["runs_total"] = sum(v for k, v in out.items() if k.startswith("runs_"))
            out["backfills"] = db.execute("SELECT COUNT(*) FROM bulk_actions").fetchone()[0]
            statuses = [s for (s,) in db.execute("SELECT status FROM bulk_actions")]
            out["backfills_requested"] = statuses.count("REQUESTED")
    shards = [p for p in (history / "runs").glob("*.db") if p.name != "index.db"]
    out["event_log_rows"] = sum(scalar(p, "SELECT COUNT(*) FROM event_logs") for p in shards)
    out["event_log_run_dbs"] = len(shards)
    index = history / "runs" / "index.db"
    out["index_event_rows"] = scalar(index, "SELECT COUNT(*) FROM event_logs")
    out["materializations"] = scalar(
        index,
        "SELECT COUNT(*) FROM event_logs WHERE dagster_event_type='ASSET_MATERIALIZATION'",
    )
    ticks = home / "schedules" / "schedules.db"
    out["sensor_ticks"] = scalar(ticks, "SELECT COUNT(*) FROM job_ticks")
    out["sensor_ticks_with_runs"] = scalar(
        ticks, "SELECT COUNT(*) FROM job_ticks WHERE status = 'SUCCESS'"
    )
    out.update(tick_seconds(ticks))
    ledger = home / "mmc4" / "site_ledger.sqlite"
    for table in ("mmc4_site_leases", "mmc4_site_state", "mmc4_site_limits", "mmc4_robots"):
        name = table.removeprefix("mmc4_site_").removeprefix("mmc4_")
        out[f"ledger_{name}_rows"] = scalar(ledger, f"SELECT COUNT(*) FROM {table}")
    return out


def tick_seconds(ticks: Path, sensors=("stale_images_sensor", "dead_runs_sensor")) -> dict:
    """How long each sensor's latest tick took (its end_timestamp less its timestamp)."""
    out = {f"tick_s_{name}": 0.0 for name in sensors}
    if not ticks.exists():
        return out
    try:
        with read_only(ticks) as db:
            for name in sensors:
                row = db.execute(
                    "SELECT tick_body FROM job_ticks WHERE json_extract(tick_body, '$.job_name')"
                    " = ? AND json_extract(tick_body, '$.end_timestamp') IS NOT NULL "
                    "ORDER BY id DESC LIMIT 1",
                    [name],
                ).fetchone()
                if row:
                    body = json.loads(row[0])
                    out[f"tick_s_{name}"] = round(body["end_timestamp"] - body["timestamp"], 3)
    except (sqlite3.Error, KeyError, TypeError, ValueError):
        pass
    return out


class StatusRows:
    """Rows of every status/{shard}.parquet (images finished), re-read only when a file changes."""

    def __init__(self, data: Path):
        self.folder = data / "status"
        self.cache: dict[str, tuple[float, int]] = {}

    def count(self) -> tuple[int, int]:
        total = shards = 0
        for path in self.folder.glob("*.parquet") if self.folder.exists() else []:
            try:
                mtime = path.stat().st_mtime
                if self.cache.get(path.name, (None,))[0] != mtime:
                    self.cache[path.name] = (mtime, pq.ParquetFile(path).metadata.num_rows)
            except OSError:
                continue
            total, shards = total + self.cache[path.name][1], shards + 1
        return shards, total


# --------------------------------------------------------------------------- analysis

# Quantities that are counters of work done or of runs, not resources; no verdict for them.
NO_VERDICT = (
    "t",
    "minutes",
    "shards_done",
    "images_done",
    "images_per_s_5min",
    "run_processes",
    "fault",
    "backfills_requested",
)


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs, None when xs do not vary."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 3 or sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


# Quantities that are the backfill's output or its history: they grow with every shard by design,
# and their slope says how much (the verdict says "output"); every other quantity should be flat.
OUTPUTS = (
    "data_images",
    "data_raw_docs",
    "data_reassigned_docs",
    "data_status",
    "data_webdataset",
    "runs_",
    "event_log",
    "index_event",
    "materializations",
    "home_history",
    "home_storage",
    "home_bytes",
    "sensor_ticks",
)


def verdict(series: list[dict], key: str) -> dict:
    """Flat or growing: growing when the fitted rise over the shards done exceeds 10% of the
    largest value seen (and 1 MB for bytes); projected to every shard of the corpus. The fit
    leaves out the warm-up (samples before a tenth of the shards were done: code loading)."""
    rows = [r for r in series if isinstance(r.get(key), int | float) and r[key] >= 0]
    warm = [r for r in rows if r["shards_done"] >= 0.1 * rows[-1]["shards_done"] > 0]
    rows = warm if len({r["shards_done"] for r in warm}) >= 3 else rows
    if len(rows) < 3:
        return {"verdict": "n/a"}
    shards = [r["shards_done"] for r in rows]
    images = [r["images_done"] for r in rows]
    values = [r[key] for r in rows]
    per_shard, per_image = slope(shards, values), slope(images, values)
    out = {"first": values[0], "last": values[-1], "max": max(values), "samples": len(rows)}
    if per_shard is None:
        return {**out, "verdict": "n/a (no shard finished)"}
    rise = per_shard * (shards[-1] - shards[0])
    floor = 1e6 if key.endswith("bytes") or key.startswith("rss") else 0.5
    growing = rise > max(0.1 * max(abs(v) for v in values), floor)
    projection = values[-1] + per_shard * (ALL_SHARDS - shards[-1])
    label = "flat"
    if growing:
        label = "growing (output)" if key.startswith(OUTPUTS) else "GROWING"
    return {
        **out,
        "per_shard": per_shard,
        "per_image": per_image,
        "projected_23085": projection,
        "verdict": label,
    }


def add_rates(series: list[dict], window: float = 300.0) -> None:
    """images/s over the trailing `window` seconds, on every sample; a quantity not yet seen
    (a folder or table not made yet) is 0."""
    keys = {k for row in series for k in row if k != "fault"}
    for row in series:
        row.update({k: 0 for k in keys if k not in row})
    for i, row in enumerate(series):
        j = next(k for k in range(i + 1) if row["t"] - series[k]["t"] <= window)
        span = row["t"] - series[j]["t"]
        done = row["images_done"] - series[j]["images_done"]
        row["images_per_s_5min"] = round(done / span, 2) if span > 0 else 0.0


def human(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key.endswith("bytes") or key.startswith("rss"):
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if abs(value) < 1000 or unit == "TB":
                return f"{value:.3g} {unit}" if unit != "B" else f"{value:.0f} B"
            value /= 1000
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(series: list[dict]) -> dict:
    keys = sorted(k for k in series[-1] if k not in NO_VERDICT)
    verdicts = {k: verdict(series, k) for k in keys}
    last = series[-1]
    print(
        f"\n{last['shards_done']} shards, {last['images_done']} images in {last['minutes']:.1f} "
        f"min ({last['images_done'] / max(last['t'], 1):.1f} images/s overall)"
    )
    head = f"{'quantity':<32} {'first':>10} {'last':>10} {'per shard':>10} {'per image':>10}"
    print(head + f" {'at 23,085':>10}  verdict")
    for key, v in verdicts.items():
        cells = [human(v.get(c), key) for c in ("first", "last", "per_shard", "per_image")]
        cells.append(human(v.get("projected_23085"), key))
        print(f"{key:<32} " + " ".join(f"{c:>10}" for c in cells) + f"  {v['verdict']}")
    return verdicts


def save(series: list[dict], verdicts: dict, meta: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "verdicts": verdicts, "series": series}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    keys = sorted({k for row in series for k in row})
    with open(stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(series)
    try:
        plot(series, stem.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot (see benchmarks/README: pip install --no-deps)")
    print(f"\nwrote {stem}.json, .csv, .png")


def plot(series: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minutes"] for r in series]
    panels = [
        ("images/s (5 min)", ["images_per_s_5min"], 1),
        ("RSS (MB)", ["rss_daemon", "rss_daemon_alone", "rss_webserver", "rss_runs"], 1e6),
        ("instance (MB)", ["home_history_bytes", "home_storage_bytes", "home_mmc4_bytes"], 1e6),
        ("event log / runs", ["event_log_rows", "materializations", "runs_total"], 1),
        ("ledger rows", [k for k in sorted(series[-1]) if k.startswith("ledger_")], 1),
        ("data (MB)", sorted(k for k in series[-1] if k.startswith("data_") and "bytes" in k), 1e6),
        ("scratch (MB)", ["scratch_bytes"], 1e6),
        ("shards done", ["shards_done"], 1),
    ]
    fig, axes = plt.subplots(4, 2, figsize=(13, 14), sharex=True)
    for ax, (title, keys, scale) in zip(axes.flat, panels, strict=True):
        for key in keys:
            ax.plot(minutes, [r.get(key, 0) / scale for r in series], label=key)
        ax.set_title(title)
        ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- faults, lifecycle


def kill_one_run(home: Path) -> str:
    """kill -9 the process tree of one running run; says what it did."""
    for run in (p for p in ours(home) if is_run(p)):
        try:
            procs = [run, *run.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        return f"killed run process {run.pid} and {len(procs) - 1} children"
    return "no run process to kill"


def stop_group(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def cleanup(procs: dict, home: Path) -> None:
    for name in ("webserver", "daemon", "web"):
        stop_group(procs.get(name))
    leftovers = ours(home)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if leftovers:
        print(f"killed {len(leftovers)} leftover processes of the instance")


def sample(t0: float, home: Path, data: Path, scratch: Path, status: StatusRows, procs) -> dict:
    shards, images = status.count()
    row = {"t": round(time.monotonic() - t0, 1), "shards_done": shards, "images_done": images}
    row["minutes"] = round(row["t"] / 60, 2)
    row.update(memory(home, procs["daemon"], procs["webserver"]))
    row.update(by_top_folder(home, "home_"))
    row["home_bytes"] = sum(v for k, v in row.items() if k.startswith("home_") and "bytes" in k)
    row.update(instance_rows(home))
    row.update(by_top_folder(data, "data_"))
    row["scratch_files"], row["scratch_bytes"] = folder_usage(scratch)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=150)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--docs", type=int, default=100, help="documents per shard (~3 images each)")
    p.add_argument("--hosts", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument("--kill-run-at", type=float, default=None, help="minutes (default 40%%)")
    p.add_argument("--restart-webserver-at", type=float, default=None, help="min (default 60%%)")
    p.add_argument("--throttle-at", type=float, default=None, help="min (default 50%%)")
    p.add_argument("--no-sensor", action="store_true", help="leave the stale-image sensor off")
    p.add_argument("--until-done", action="store_true", help="stop once every shard is done")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in the daemon's environment only (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="tracemalloc snapshots of the daemon every 4 min into <work>/tracemalloc (use --keep)",
    )
    args = p.parse_args(argv)
    if args.kill_run_at is None:
        args.kill_run_at = 0.4 * args.minutes
    if args.restart_webserver_at is None:
        args.restart_webserver_at = 0.6 * args.minutes
    if args.throttle_at is None:
        args.throttle_at = 0.5 * args.minutes
    return args


def prepare(args, work: Path, procs: dict) -> tuple[dict, int, int]:
    """Instance, shards, web, daemon and webserver up; returns (env, webserver port, images)."""
    home, data, scratch = work / "dagster_home", work / "data", work / "scratch"
    write_instance(home)
    scratch.mkdir(parents=True, exist_ok=True)
    procs["web"], base_urls = start_web(work, args.hosts, args.latency_ms)
    images = write_shards(work / "docs", args.shards, args.docs, base_urls)
    print(f"{args.shards} shards, {images} images on {args.hosts} hosts ({base_urls[0]} ..)")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(home),
        "MMC4_DOCS_URL": str(work / "docs"),
        "MMC4_DATA_DIR": str(data),
        "MMC4_SCRATCH_DIR": str(scratch),
        "MMC4_ALLOW_PRIVATE_NETWORKS": "1",
        "VIRTUAL_ENV": sys.prefix,
    }
    port = free_port()
    # As `make ui` does: the download pool's limit exists before the first queued run.
    subprocess.run(
        [sys.executable, "-m", "mmc4_assets.run_health.pools"], env=env, cwd=ROOT, check=True
    )
    procs["daemon"] = spawn(
        [str(BIN / "dagster-daemon"), "run", "-m", "mmc4_assets"],
        daemon_env(args, env, work),
        work / "daemon.log",
    )
    procs["webserver"] = start_webserver(env, port, work)
    if not args.no_sensor:
        subprocess.run(
            [str(BIN / "dagster"), "sensor", "start", "stale_images_sensor", "-m", "mmc4_assets"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return env, port, images


def daemon_env(args, env: dict, work: Path) -> dict:
    """The daemon's environment: the runs', plus `--daemon-env` and, with `--tracemalloc`, the
    snapshot hook (mmc4_devtools/daemon_tracemalloc, into `<work>/tracemalloc`)."""
    extra = dict(item.split("=", 1) for item in args.daemon_env)
    if args.tracemalloc:
        hook = ROOT / "mmc4_devtools" / "daemon_tracemalloc"
        extra["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
        extra["MMC4_TRACEMALLOC_DIR"] = str(work / "tracemalloc")
    return {**env, **extra}


def soak(args, work: Path, procs: dict, env: dict, port: int, series: list[dict]) -> None:
    """Samples into `series` (kept when interrupted) until the time is up or, with
    --until-done, the backfill is done."""
    home, data, scratch = work / "dagster_home", work / "data", work / "scratch"
    status = StatusRows(data)
    backfill = launch_backfill(port, args.shards)
    print(f"backfill {backfill} launched; webserver http://127.0.0.1:{port}; work {work}")
    t0, faults = time.monotonic(), {"kill": False, "restart": False, "throttle": False}
    while True:
        row = sample(t0, home, data, scratch, status, procs)
        series.append(row)
        print(
            f"{row['minutes']:6.1f} min  shards {row['shards_done']:4}  images "
            f"{row['images_done']:6}  runs ok/fail/queued/started {row['runs_SUCCESS']}/"
            f"{row['runs_FAILURE']}/{row['runs_QUEUED']}/{row['runs_STARTED']}  RSS daemon "
            f"{row['rss_daemon'] / 1e6:.0f} web {row['rss_webserver'] / 1e6:.0f} runs "
            f"{row['rss_runs'] / 1e6:.0f} MB",
            flush=True,
        )
        idle = row["runs_QUEUED"] == row["runs_STARTED"] == row.get("backfills_requested", 1) == 0
        if args.until_done and idle:
            break
        if row["t"] >= args.minutes * 60:
            break
        if 0 <= args.kill_run_at <= row["minutes"] and not faults["kill"]:
            what = kill_one_run(home)
            faults["kill"] = "no run" not in what
            print(f"fault: {what}")
            row["fault"] = what
        if 0 <= args.restart_webserver_at <= row["minutes"] and not faults["restart"]:
            stop_group(procs["webserver"])
            procs["webserver"] = start_webserver(env, port, work)
            faults["restart"] = True
            row["fault"] = "webserver restarted"
            print("fault: webserver restarted")
        if 0 <= args.throttle_at <= row["minutes"] and not faults["throttle"]:
            procs["web"].send_signal(signal.SIGUSR1)  # the busiest host answers 429 for 60 s
            faults["throttle"] = True
            row["fault"] = "first host throttling (429) for 60 s"
            print("fault: " + row["fault"])
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0 - row["t"])))


def interrupted(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = ROOT / ".bench" / f"soak-{stamp}"
    work.mkdir(parents=True)
    procs: dict = {}
    series: list[dict] = []
    signal.signal(signal.SIGTERM, interrupted)
    images = 0
    try:
        env, port, images = prepare(args, work, procs)
        soak(args, work, procs, env, port, series)
    except KeyboardInterrupt:
        print("interrupted: stopping and reporting what was recorded")
    finally:
        cleanup(procs, work / "dagster_home")
    if not series:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 1
    add_rates(series)
    verdicts = report(series)
    meta = {**vars(args), "images": images, "stamp": stamp, "work": str(work)}
    meta["cpus"] = os.cpu_count()
    save(series, verdicts, meta, RESULTS / f"bench_soak_{stamp}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
