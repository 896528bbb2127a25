"""Image download throughput, memory and output validity: ours vs img2dataset vs the reference.

Why one script: the downloaders must see the SAME URL list from the SAME loopback web in one
run, or the ratios mean nothing. Each tool runs as a child process so its wall time, CPU and
memory are its own. Two webs:

- ``--web loopback`` (default): LoopbackWeb in this process, 8 hosts, 30 ms, ~10% faults;
  ours vs img2dataset vs the reference scripts.
- ``--web real``: RealWeb in its own server process, shaped like a real shard's web (1,900
  hosts, HTTPS, heavy-tailed latency, dead and silent hosts); ours vs img2dataset, then ours
  again on the same URLs with no latency and no faults (our CPU-bound rate).

    .venv/bin/python benchmarks/bench_download.py --images 25000
    .venv/bin/python benchmarks/bench_download.py --web real

See benchmarks/README.md for what is measured and the options chosen for each tool.

(~840 lines, one file on purpose: each peer's runner, the audit of its files and the report
must read the same URL list and result records; its functions each do one of those.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
OURS_PYTHON = ROOT / ".venv" / "bin" / "python"
REFERENCE_PYTHON = BENCH / "reference" / "bin" / "python"
REFERENCE_SCRIPT = ROOT.parent / "shared" / "reference" / "mmc4_scripts" / "download_images.py"
IMG2DATASET_BIN = BENCH / "img2dataset" / "bin" / "img2dataset"
MAX_SIDE = 800
SIDECARS = {".json", ".txt", ".parquet", ".tmp", ".gz", ".tsv"}

sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- memory sampling


class TreeMemory:
    """Samples the summed RSS and PSS of a process and all its descendants.

    Why both: the reference forks 16 workers and img2dataset 2 plus a logger; summed RSS counts
    shared pages once per process, PSS splits them fairly. ru_maxrss only sees the largest one.
    """

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    @staticmethod
    def _usage(pid: int) -> tuple[int, int]:
        rss = pss = 0
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
        except OSError:
            pass
        return rss, pss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            usage = [self._usage(pid) for pid in self._tree()]
            self.peak_rss = max(self.peak_rss, sum(u[0] for u in usage))
            self.peak_pss = max(self.peak_pss, sum(u[1] for u in usage))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], *, cwd: Path, log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` to completion; return wall time, exit code and memory peaks."""
    env = {**(env or os.environ), "no_proxy": "*", "NO_PROXY": "*"}  # loopback only, ever
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        memory = TreeMemory(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        memory.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": wall,
        "exit_code": proc.returncode,
        "peak_tree_rss_mb": memory.peak_rss / 2**20,
        "peak_tree_pss_mb": memory.peak_pss / 2**20,
        "max_single_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the whole tree, once every child was reaped
    }


# --------------------------------------------------------------------------- output checks


def _invalid_reason(path: str) -> str | None:
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            head = handle.read(512).lower()
        if b"<html" in head or b"<!doctype" in head:
            return "html"
        with Image.open(path) as image:
            image.load()
            if max(image.size) > MAX_SIDE:
                return "over 800 px"
    except Exception as error:  # noqa: BLE001 - any failure to decode makes the file invalid
        return f"undecodable ({type(error).__name__})"
    return None


def audit_files(folder: Path) -> dict:
    """Every image file a tool left: how many, and which are invalid (HTML, broken, > 800 px)."""
    files = [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() not in SIDECARS and not p.name.startswith(".")
    ]
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        reasons = list(pool.map(_invalid_reason, files, chunksize=256))
    invalid = Counter(r.split(" (")[0] for r in reasons if r)
    return {"files": len(files), "invalid": sum(invalid.values()), "invalid_kinds": dict(invalid)}


# --------------------------------------------------------------------------- the three tools


def run_ours(
    entries: list[dict],
    work: Path,
    ca_file: Path | None = None,
    settings: dict | None = None,
    runs: int = 1,
) -> dict:
    """``runs`` download_shard processes at once into one data dir, each its own shard.

    Every host's images are dealt round-robin over the shards, so the runs meet the same hosts
    and sites at once (what several shard runs of one deployment do). Measured as one tree.
    """
    settings = dict(settings or {})
    if ca_file is not None:
        settings.setdefault("ca_bundle", str(ca_file))
    if settings.get("ledger_url") == "shared":  # a fresh site ledger the runs share
        settings["ledger_url"] = f"sqlite:///{work}/site_ledger.sqlite"
    shards: list[list[int]] = [[] for _ in range(runs)]
    turn: dict[str, int] = {}
    for i, entry in enumerate(entries):
        host = entry["url"].split("/")[2]
        # Each host's images round-robin, each host starting on the next shard: balanced shards.
        at = turn.setdefault(host, len(turn))
        shards[at % runs].append(i)
        turn[host] = at + 1
    data = work / "data"
    cmds = []
    for shard, members in enumerate(shards):
        refs = work / f"refs-{shard}.jsonl"
        with open(refs, "w") as handle:
            for i in members:
                entry = entries[i]
                doc, index = entry.get("doc", i // 5), entry.get("index", i % 5)
                row = {"doc": doc, "index": index, "image_name": entry["image_name"]}
                handle.write(json.dumps({**row, "url": entry["url"]}) + "\n")
        worker = [str(OURS_PYTHON), __file__, "--worker-ours", str(refs), str(data), str(shard)]
        cmds.append([*worker, json.dumps(settings)])
    if runs == 1:
        cmd = cmds[0]
    else:  # one small parent for the group, so the tree's CPU and memory are all of them
        cmd = ["sh", "-c", " & ".join(shlex.join(c) for c in cmds) + " & wait"]
    env = dict(os.environ)
    if ca_file is not None:
        env.update(MMC4_CA_BUNDLE=str(ca_file), SSL_CERT_FILE=str(ca_file))
    result = run_measured(cmd, cwd=ROOT, log=work / "ours.log", env=env)
    result.update(audit_files(data / "images"))
    outcomes: Counter[str] = Counter()
    result["outcome_by_url"], result["error_by_url"] = {}, {}
    for shard in range(runs):
        summary = data.parent / f"summary-{shard}.json"
        if not summary.exists():
            continue
        one = json.loads(summary.read_text())
        outcomes.update(one["outcomes"])
        result["outcome_by_url"].update(one["outcome_by_url"])
        result["error_by_url"].update(one["error_by_url"])
        result["settings"] = one["settings"]
        for key in ("startup_cpu_s", "step_cpu_s"):
            result[key] = result.get(key, 0.0) + one[key]
        politeness = Counter(result.get("politeness", {}))
        most = max(
            politeness["most_requests_per_site"], one["politeness"].get("most_requests_per_site", 0)
        )
        politeness.update(one.get("politeness", {}))
        politeness["most_requests_per_site"] = most  # a maximum over runs, not a sum
        result["politeness"] = dict(politeness)
    result["outcomes"] = dict(outcomes)
    result["ok"] = outcomes.get("ok", 0)
    result["runs"] = runs
    return result


def _engine():
    """The project's download engine: its one import here."""
    from mmc4_assets.downloader import DownloadSettings, ImageRef, download_shard

    return DownloadSettings, ImageRef, download_shard


def worker_ours(refs_path: str, data_dir: str, shard: str, settings_json: str) -> None:
    """Child-process side of run_ours: the project's downloader, default settings but for
    ``allow_private_networks`` and what ``--ours-setting`` passes."""
    import resource

    import pandas as pd

    DownloadSettings, ImageRef, download_shard = _engine()
    startup = resource.getrusage(resource.RUSAGE_SELF)
    with open(refs_path) as handle:
        rows = [json.loads(line) for line in handle]
    refs = [ImageRef(r["doc"], r["index"], r["image_name"], r["url"]) for r in rows]
    settings = DownloadSettings(**{"allow_private_networks": True, **json.loads(settings_json)})

    def progress(info) -> None:
        print(f"ours: {info.done}/{info.total} {info.images_per_second:.0f} img/s", flush=True)

    stats: dict = {}
    table: pd.DataFrame = download_shard(
        refs,
        data_dir=Path(data_dir),
        shard=int(shard),
        settings=settings,
        previous=pd.DataFrame(),
        progress=progress,
        progress_interval=5.0,
        stats=stats,
    )
    end = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "settings": {k: v for k, v in vars(settings).items() if k != "ca_bundle"},
        "outcomes": dict(Counter(table["outcome"])),
        "outcome_by_url": dict(zip(table["url"], table["outcome"], strict=True)),
        "error_by_url": {
            url: error
            for url, outcome, error in zip(
                table["url"], table["outcome"], table["error"], strict=True
            )
            if outcome != "ok" and isinstance(error, str)
        },
        "politeness": stats,
        "startup_cpu_s": startup.ru_utime + startup.ru_stime,  # interpreter and imports
        "step_cpu_s": end.ru_utime + end.ru_stime,  # the step's own process, start-up included
    }
    Path(data_dir).parent.joinpath(f"summary-{shard}.json").write_text(json.dumps(summary))
    table.to_parquet(Path(data_dir).parent / f"status-{shard}.parquet")  # for --keep's reader


def run_img2dataset(
    entries: list[dict],
    work: Path,
    threads: int,
    processes: int = 2,
    ca_file: Path | None = None,
) -> dict:
    urls = work / "urls.txt"
    urls.write_text("".join(e["url"] + "\n" for e in entries))
    out = work / "out"
    cmd = [
        str(IMG2DATASET_BIN),
        f"--url_list={urls}",
        "--input_format=txt",
        f"--output_folder={out}",
        "--output_format=files",
        f"--processes_count={processes}",
        f"--thread_count={threads}",
        "--number_sample_per_shard=1000",  # 10000 would leave one of two processes idle
        f"--image_size={MAX_SIDE}",
        "--resize_mode=keep_ratio_largest",
        "--resize_only_if_bigger=True",
        "--enable_wandb=False",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    if ca_file is not None:  # urllib makes a default context, reading this file, per request
        env["SSL_CERT_FILE"] = str(ca_file)
    result = run_measured(cmd, cwd=work, log=work / "img2dataset.log", env=env)
    result.update(audit_files(out))
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    result["ok"] = sum(s.get("successes", 0) for s in stats)
    # Which URLs it got, to count its successes among those robots.txt leaves open to us.
    import pyarrow.parquet as pq

    result["ok_urls"] = []
    for table in out.glob("*.parquet"):
        rows = pq.read_table(table, columns=["url", "status"]).to_pylist()
        result["ok_urls"] += [row["url"] for row in rows if row["status"] == "success"]
    return result


def run_reference(entries: list[dict], work: Path) -> dict:
    shard = work / "bench.jsonl"
    with open(shard, "w") as handle:
        for start in range(0, len(entries), 5):
            images = [
                {"image_name": e["image_name"], "raw_url": e["url"]}
                for e in entries[start : start + 5]
            ]
            handle.write(json.dumps({"text_list": ["x"] * 5, "image_info": images}) + "\n")
    images = work / "images"
    cmd = [
        str(REFERENCE_PYTHON),
        str(REFERENCE_SCRIPT),
        f"--input_jsonl={shard}",
        f"--output_image_dir={images}/",
        f"--report_dir={work / 'report'}/",
    ]  # as it ships: 16 processes, chunks of 100
    result = run_measured(cmd, cwd=work, log=work / "reference.log")
    result.update(audit_files(images))
    result["ok"] = result["files"] - result["invalid"]
    return result


# --------------------------------------------------------------------------- report


def _row(name: str, attempted: int, r: dict) -> str:
    rate = attempted / r["wall_s"] if r["wall_s"] else 0.0
    r["images_per_s"] = rate
    return (
        f"{name:<12} {attempted:>7} {r['wall_s']:>8.1f} {rate:>8.1f} {r['ok']:>7} "
        f"{r['files']:>7} {r['invalid']:>7} {r['peak_tree_rss_mb']:>9.0f} "
        f"{r['peak_tree_pss_mb']:>9.0f} {r['max_single_rss_mb']:>9.0f} {r['cpu_s']:>7.0f} "
        f"{r['exit_code']:>4}"
    )


def report(results: dict[str, tuple[int, dict]]) -> None:
    print()
    print(
        f"{'tool':<12} {'URLs':>7} {'wall s':>8} {'img/s':>8} {'ok':>7} {'files':>7} "
        f"{'invalid':>7} {'RSS MB':>9} {'PSS MB':>9} {'1proc MB':>9} {'CPU s':>7} {'rc':>4}"
    )
    for name, (attempted, r) in results.items():
        print(_row(name, attempted, r))
    print("  (img/s = attempted URLs / wall time; RSS/PSS = peak summed over the process tree;")
    print(
        "   1proc = ru_maxrss of the largest single process; invalid = HTML, undecodable, >800 px)"
    )
    ours = results.get("ours", (0, {}))[1].get("images_per_s")
    for other in ("img2dataset", "reference"):
        theirs = results.get(other, (0, {}))[1].get("images_per_s")
        if ours and theirs:
            print(f"ours / {other}: {ours / theirs:.2f}x images/s")
    for name, (_, r) in results.items():
        if r.get("invalid_kinds"):
            print(f"{name} invalid files: {r['invalid_kinds']}")


def expectation_check(entries: list[dict], r: dict, name: str = "ours") -> int:
    """How often our recorded outcome matches what the web says it should be; prints them."""
    got = r.pop("outcome_by_url", {})
    errors = r.pop("error_by_url", {})
    missed = [e for e in entries if got.get(e["url"]) != e["expect"]]
    misses = Counter((e["expect"], got.get(e["url"], "missing")) for e in missed)
    print(f"{name} outcomes: {r.get('outcomes')}")
    print(f"{name} outcome != expected: {sum(misses.values())} {dict(misses) if misses else ''}")
    # Why, by the recorded error with the site's name taken out (the most common five).
    why = Counter(re.sub(r"^[^:]*: ", "", errors.get(e["url"], "-"))[:90] for e in missed)
    for reason, count in why.most_common(5):
        print(f"  {count} x {reason}")
    r["outcome_mismatches"] = sum(misses.values())
    r["mismatch_kinds"] = {f"{want}->{got}": n for (want, got), n in misses.items()}
    standin_check(entries, got, r, name)
    return sum(misses.values())


STANDIN_OUTCOMES = ("placeholder", "too_small")


def standin_check(entries: list[dict], got: dict, r: dict, name: str) -> None:
    """The stand-in web's goal (issue 24): stand-in URLs flagged as expected, and real images
    (expected ok) flagged placeholder; printed when the plan has stand-ins."""
    planned = {e["url"]: e for e in entries if e["expect"] in STANDIN_OUTCOMES}
    if not planned:
        return
    flagged = [u for u, e in planned.items() if got.get(u) == e["expect"]]
    missed = Counter(
        (e["standin"], got.get(u, "missing"))
        for u, e in planned.items()
        if got.get(u) != e["expect"]
    )
    real = {e["url"] for e in entries if e["expect"] == "ok"}
    wrong = sorted(u for u in real if got.get(u) == "placeholder")
    reused = {e["url"] for e in entries if e.get("reused")}
    kinds = Counter(e["standin"] for e in planned.values())
    share = len(flagged) / len(planned)
    print(
        f"{name} stand-ins: {len(planned)} stand-in URLs planned {dict(kinds)}, flagged as "
        f"expected {len(flagged)} ({100 * share:.1f}%), missed {sum(missed.values())} "
        f"{dict(missed) if missed else ''}; real images (expect ok) flagged placeholder: "
        f"{len(wrong)} of {len(real)} ({len(reused)} URLs used by several documents, "
        f"{sum(got.get(u) == 'ok' for u in reused)} of them ok); goal >= 99% and 0: "
        f"{'met' if share >= 0.99 and not wrong else 'NOT met'}"
    )
    for url in wrong[:5]:
        print(f"  wrongly placeholder: {url}")
    r["standins"] = {
        "planned": len(planned),
        "flagged": len(flagged),
        "missed": {f"{kind}->{out}": n for (kind, out), n in missed.items()},
        "real_flagged_placeholder": len(wrong),
    }


def _ensure_img2dataset() -> None:
    if not IMG2DATASET_BIN.exists():
        subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_img2dataset.sh")], check=True)


def _ensure_reference() -> None:
    if not REFERENCE_PYTHON.exists() or shutil.which("mogrify") is None:
        subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_reference.sh")], check=True)


def bench_loopback_web(args, work: Path) -> dict[str, tuple[int, dict]]:
    """Ours, img2dataset and the reference on LoopbackWeb (few fast hosts, plain HTTP)."""
    from mmc4_devtools.loopback_web import LoopbackWeb, build_benchmark_urls, warm_cache

    hosts, images = args.hosts or 8, args.images or 25_000
    threads = args.img2dataset_threads or 64
    web = LoopbackWeb(hosts, args.latency_ms, stall_seconds=45, cache_dir=BENCH / "webcache")
    results: dict[str, tuple[int, dict]] = {}
    with web:
        entries = build_benchmark_urls(web, images, seed=args.seed)
        started = time.perf_counter()
        rendered = warm_cache(web.cache_dir, [e["url"] for e in entries])
        print(
            f"{len(entries)} URLs on {hosts} hosts, {args.latency_ms:.0f} ms latency; "
            f"rendered {rendered} new images in {time.perf_counter() - started:.0f} s; "
            f"expected: {dict(Counter(e['expect'] for e in entries))}",
            flush=True,
        )
        print(f"work folder: {work}", flush=True)
        tools = [
            ("ours", args.skip_ours, lambda d: run_ours(entries, d), len(entries)),
            (
                "img2dataset",
                args.skip_img2dataset,
                lambda d: run_img2dataset(entries, d, threads),
                len(entries),
            ),
            (
                "reference",
                args.skip_reference,
                lambda d: run_reference(entries[: args.reference_images], d),
                min(len(entries), args.reference_images),
            ),
        ]
        # Environments first: a missing one fails the run before anything is timed.
        if not args.skip_img2dataset:
            _ensure_img2dataset()
        if not args.skip_reference:
            _ensure_reference()
        for name, skip, run, attempted in tools:
            if skip:
                continue
            print(f"running {name} on {attempted} URLs ...", flush=True)
            folder = work / name
            folder.mkdir()
            results[name] = (attempted, run(folder))
            print(f"  {name}: {results[name][1]['wall_s']:.1f} s", flush=True)
    if "ours" in results:
        expectation_check(entries, results["ours"][1])
    report(results)
    if "reference" in results:
        print(
            f"note: the reference ran on the first {results['reference'][0]} URLs only "
            "(it is slow); rates are compared, not totals."
        )
    return results


FAST = "ours, no latency"
PER_RUN = "ours, budgets per run"  # the same runs, each keeping its own site budgets
HAND = "ours, hand budgets"  # fixed budgets: 8 per site, the capacity plan's pilot for the rest
FIXED = "ours, fixed 8"  # fixed budgets of 8 per site, what the engine did before learned limits
HAND_BUDGETS = [["wp.com", 32], ["googleusercontent.com", 16]]
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _web_config(args):
    """RealWebConfig from --shape, --ip, --images, --hosts and every --web-set key=value."""
    from dataclasses import fields

    from mmc4_devtools.real_web import OLD_SHAPE, RealWebConfig

    options: dict = dict(OLD_SHAPE) if args.shape == "old" else {}
    if args.ip:
        options["names"] = False
    if args.images:
        options["images"] = args.images
    if args.hosts:
        options["hosts"] = args.hosts
    kinds = {f.name: f.type for f in fields(RealWebConfig)}
    for key, value in _pairs(args.web_set).items():
        if key not in kinds:
            raise SystemExit(f"--web-set: RealWebConfig has no field {key!r}")
        options[key] = value
    # the web stops by itself even if this script is killed hard
    return RealWebConfig(**{"seed": args.seed, "max_runtime_s": 6 * 3600, **options})


def _pairs(items: list[str] | None) -> dict:
    """key=value pairs; values read as JSON when they parse (8, 0.5, true, null), else text."""
    out = {}
    for item in items or []:
        key, _, text = item.partition("=")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def img2dataset_trust(web_ca: Path, work: Path, which: str) -> Path:
    """The CA file img2dataset's urllib loads for every HTTPS request.

    ``system``: the system's bundle plus the web's CA, what it loads on the real web (~140
    certificates: ~20 ms of CPU per request); ``web``: the web's CA alone (~0.2 ms).
    """
    if which == "web" or not SYSTEM_CA.exists():
        return web_ca
    combined = work / "ca-system-plus-web.pem"
    combined.write_bytes(SYSTEM_CA.read_bytes() + b"\n" + web_ca.read_bytes())
    return combined


def _real_contenders(args, web, entries: list[dict], settings: dict, i2d_ca: Path) -> list:
    """(name, skip, realistic web, run, expected outcomes) for each contender on RealWeb."""
    threads = args.img2dataset_threads or 256
    cpus = os.cpu_count() or 1
    all_ok = [{**e, "expect": "ok"} for e in entries]
    per_run = {**settings, "ledger_url": None}
    fixed = {**settings, "adaptive": False, "per_site": 8}
    hand = {**fixed, "site_budgets": HAND_BUDGETS}
    return [
        (
            "ours",
            args.skip_ours,
            True,
            lambda d: run_ours(entries, d, web.ca_file, settings, args.runs),
            entries,
        ),
        (
            PER_RUN,
            not args.compare_budgets,
            True,
            lambda d: run_ours(entries, d, web.ca_file, per_run, args.runs),
            entries,
        ),
        (
            HAND,
            not args.compare_hand,
            True,
            lambda d: run_ours(entries, d, web.ca_file, hand, args.runs),
            entries,
        ),
        (
            FIXED,
            not args.compare_hand,
            True,
            lambda d: run_ours(entries, d, web.ca_file, fixed, args.runs),
            entries,
        ),
        (
            "img2dataset",
            args.skip_img2dataset,
            True,
            lambda d: run_img2dataset(entries, d, threads, cpus, i2d_ca),
            None,
        ),
        (
            FAST,
            args.skip_fast,
            False,
            lambda d: run_ours(entries, d, web.ca_file, settings, args.runs),
            all_ok,
        ),
    ]


def _run_on_real_web(web, name: str, realistic: bool, run, expected, entries, work: Path) -> dict:
    """One contender on RealWeb, the web's own counts of what it did added to its result."""
    if name == "img2dataset":
        _ensure_img2dataset()
    web.set_mode(latency=realistic, faults=realistic)
    web.reset()
    before = web.stats()
    print(f"running {name} on {len(entries)} URLs ...", flush=True)
    folder = work / name.replace(", ", "-").replace(" ", "-")
    folder.mkdir()
    result = run(folder)
    after = web.stats()
    result["web_cpu_s"] = after["cpu_s"] - before["cpu_s"]
    result["web_requests"] = after["requests"]
    result["web"] = {
        key: after[key]
        for key in (
            "max_in_flight_any_site",
            "max_in_flight_any_host",
            "disallowed_requests",
            "throttle",
            "peak_site_requests",  # the busiest sites' requests (age s, path) at peak
        )
    }
    result["web"]["robots_requests"] = sum(after["robots_requests"].values())
    result["web"]["busiest_sites"] = dict(Counter(after["max_in_flight_site"]).most_common(5))
    if "dns" in after:
        result["web"]["dns"] = after["dns"]
    if expected is not None:
        expectation_check(expected, result, name)
    closed = {e["url"] for e in entries if e["expect"] == "robots_disallowed"}
    if "ok_urls" in result:  # a peer that does not read robots.txt
        urls = result.pop("ok_urls")
        result["ok_robots_allowed"] = sum(url not in closed for url in urls)
        # Among the URLs a client obeying robots.txt (RFC 9309: a 5xx robots.txt closes
        # its origin for now) can get: the comparable count.
        can_get = {e["url"] for e in entries if e["expect"] == "ok"}
        result["ok_where_ours_can"] = sum(url in can_get for url in urls)
    return result


def bench_real_web(args, work: Path) -> dict[str, tuple[int, dict]]:
    """Ours and img2dataset on RealWeb, then ours on the same URLs without latency or faults."""
    from mmc4_devtools.real_web import RealWeb

    config = _web_config(args)
    web = RealWeb(config, processes=args.web_processes, pool_cache=BENCH / "realweb-pool")
    results: dict[str, tuple[int, dict]] = {}
    settings = _pairs(args.ours_setting)
    started = time.perf_counter()
    with web:
        entries = web.entries()
        summary = web.plan.summary()
        print(f"real web up in {time.perf_counter() - started:.1f} s: {summary}")
        print(f"work folder: {work}", flush=True)
        i2d_ca = img2dataset_trust(web.ca_file, work, args.img2dataset_ca)
        contenders = _real_contenders(args, web, entries, settings, i2d_ca)
        for name, skip, realistic, run, expected in contenders:
            if skip:
                continue
            result = _run_on_real_web(web, name, realistic, run, expected, entries, work)
            results[name] = (len(entries), result)
            print(f"  {name}: {result['wall_s']:.1f} s", flush=True)
    report_real(results, config, summary, settings)
    return results


def _report_politeness(results: dict[str, tuple[int, dict]]) -> None:
    """What the web saw of each run of ours on one site, and the ledger's cost."""
    for name in ("ours", PER_RUN, HAND, FIXED):
        if name not in results:
            continue
        r = results[name][1]
        engine = r.get("settings", {})
        budget = engine.get("per_site", engine.get("per_host"))
        if engine.get("adaptive"):
            budget = f"learned, from {budget} up to {engine.get('max_per_site')}"
        seen = r["web"]
        politeness = r.get("politeness", {})
        print(
            f"{name}: most requests in flight at once on one site "
            f"{seen['max_in_flight_any_site']}, on one host {seen['max_in_flight_any_host']} "
            f"(budget per site: {budget}, shared: {bool(engine.get('ledger_url'))}); busiest "
            f"sites {seen['busiest_sites']}; robots.txt requests {seen['robots_requests']}, "
            f"requests for disallowed images {sum(seen['disallowed_requests'].values())}; "
            f"site ledger: {politeness.get('ledger_transactions', 0):,} transactions, "
            f"{politeness.get('ledger_ms', 0) / 1000:.1f} s; the engine's own count of its "
            f"requests in flight on one site: {politeness.get('most_requests_per_site', 0)} "
            "(per run)"
        )


def report_real(results: dict[str, tuple[int, dict]], config, summary: dict, settings) -> None:
    """A markdown table, then the ratios the goals name and what the web saw."""
    print()
    print(
        f"{config.images:,} images on {summary['hosts']:,} hosts ({summary['sites']:,} sites, "
        f"{'names' if config.names else 'IP literals'}); latency median "
        f"{config.latency_median_ms:.0f} ms (sigma {config.latency_sigma}), "
        f"+{config.connect_ms:.0f} ms per new connection, "
        f"bodies at {config.bytes_per_second / 1e6:.0f} MB/s\n"
    )
    cpus = os.cpu_count() or 1
    print(
        "| | images/s | ok | outcome != expected | invalid files | peak RSS (tree) "
        "| CPU s | images per CPU s | CPU ms per URL | CPU ms per ok | web CPU s "
        "| web share of the cores | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (attempted, r) in results.items():
        r["images_per_s"] = attempted / r["wall_s"] if r["wall_s"] else 0.0
        per_cpu = attempted / r["cpu_s"] if r["cpu_s"] else 0.0
        r["cpu_ms_per_url"] = 1000 * r["cpu_s"] / attempted
        r["cpu_ms_per_ok"] = 1000 * r["cpu_s"] / r["ok"] if r["ok"] else 0.0
        r["web_share"] = r["web_cpu_s"] / (r["wall_s"] * cpus) if r["wall_s"] else 0.0
        mismatches = r.get("outcome_mismatches", "n/a")
        print(
            f"| {name} | {r['images_per_s']:.1f} | {r['ok']:,} | {mismatches} | {r['invalid']} "
            f"| {r['peak_tree_rss_mb']:,.0f} MB | {r['cpu_s']:.0f} | {per_cpu:.1f} "
            f"| {r['cpu_ms_per_url']:.1f} | {r['cpu_ms_per_ok']:.1f} "
            f"| {r['web_cpu_s']:.0f} | {r['web_share']:.0%} | {r['wall_s']:.0f} |"
        )
    print()
    for name, (_, r) in results.items():
        seconds = r.get("politeness", {}).get("request_seconds")
        if seconds and r["wall_s"]:
            limit = r.get("settings", {}).get("max_concurrency", 0)
            r["requests_in_flight_mean"] = seconds / r["wall_s"]
            print(
                f"{name}: requests in flight {r['requests_in_flight_mean']:.0f} on average "
                f"(max_concurrency {limit}), {seconds:,} request-seconds"
            )
    rate = {name: r["images_per_s"] for name, (_, r) in results.items()}
    ok = {name: r["ok"] for name, (_, r) in results.items()}
    if "ours" in rate and "img2dataset" in rate:
        i2d = results["img2dataset"][1]
        print(
            f"ours / img2dataset: {rate['ours'] / rate['img2dataset']:.2f}x images/s, "
            f"ok {ok['ours']:,} vs {ok['img2dataset']:,}, of which "
            f"{i2d.get('ok_robots_allowed', ok['img2dataset']):,} on URLs robots.txt leaves "
            "open to mmc4-assets (img2dataset does not read robots.txt) and "
            f"{i2d.get('ok_where_ours_can', ok['img2dataset']):,} where the web expects ok for "
            "a client that obeys it (a 5xx robots.txt closes its origin for now)"
        )
    if "ours" in rate and FAST in rate:
        print(f"ours / ours without latency: {rate['ours'] / rate[FAST]:.0%} (goal >= 85%)")
        for name in (HAND, FIXED):
            if name in rate:
                print(f"{name} / ours without latency: {rate[name] / rate[FAST]:.0%}")
    if "ours" in rate and HAND in rate:
        print(f"ours (learned limits) / {HAND}: {rate['ours'] / rate[HAND]:.0%} (goal >= 90%)")
    if "ours" in results:
        ours = results["ours"][1]
        print(f"ours peak RSS: {ours['peak_tree_rss_mb']:.0f} MB (goal < 500 MB)")
        print(
            f"ours: {ours['runs']} run(s) at once; the step's own process(es) "
            f"{ours.get('step_cpu_s', 0):.1f} CPU s of which start-up "
            f"{ours.get('startup_cpu_s', 0):.1f} s; settings passed: {settings or 'none'}"
        )
    if PER_RUN in rate and "ours" in rate:
        print(
            f"budgets shared by the {results['ours'][1]['runs']} runs / budgets per run: "
            f"{rate['ours'] / rate[PER_RUN]:.0%} of the images/s"
        )
    _report_politeness(results)
    for name, (_, r) in results.items():
        if r.get("invalid_kinds"):
            print(f"{name} invalid files: {r['invalid_kinds']}")


def in_namespace(args) -> int:
    """Run this very command again inside a network namespace of its own whose resolv.conf
    names the web's DNS server; remove the namespace when it ends, however it ends."""
    from mmc4_devtools.netns import NetworkNamespace, available

    why = available()
    if why:
        raise SystemExit(f"--web real with names needs a network namespace: {why} (or use --ip)")
    config = _web_config(args)
    if not args.skip_img2dataset:
        _ensure_img2dataset()  # the namespace has no network: install before
    with NetworkNamespace(nameserver=config.dns_address, prefix="mmc4bench") as ns:
        env = {**os.environ, "MMC4_BENCH_NETNS": ns.name}
        child = subprocess.Popen(ns.command([sys.executable, *sys.argv]), env=env)
        previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        try:
            while True:
                try:
                    return child.wait()
                except KeyboardInterrupt:  # the child got it too (same terminal): let it end
                    continue
        finally:
            signal.signal(signal.SIGTERM, previous)
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web", choices=["loopback", "real"], default="loopback")
    parser.add_argument("--images", type=int, help="default 25,000 (loopback) / 10,438 (real)")
    parser.add_argument(
        "--hosts", type=int, help="default 8 (loopback); real: images / 2.088 (--shape old: 1,900)"
    )
    parser.add_argument("--reference-images", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=30.0, help="loopback web only")
    parser.add_argument("--img2dataset-threads", type=int, help="default 64 / 256 (real)")
    parser.add_argument("--web-processes", type=int, default=1, help="real web server processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-img2dataset", action="store_true")
    parser.add_argument("--skip-fast", action="store_true", help="real web: no no-latency run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    real = parser.add_argument_group("real web")
    real.add_argument("--ip", action="store_true", help="URLs hold IP literals (no DNS, no root)")
    real.add_argument(
        "--shape", choices=["new", "old"], default="new", help="old: 1,900 hosts by IP, no robots"
    )
    real.add_argument(
        "--web-set", action="append", metavar="KEY=VALUE", help="any RealWebConfig field"
    )
    real.add_argument("--runs", type=int, default=1, help="ours: N shard runs at once")
    real.add_argument(
        "--compare-budgets",
        action="store_true",
        help="ours again with budgets per run (no shared site ledger), side by side; give "
        "--ours-setting ledger_url=shared for the shared one (a fresh SQLite ledger per contender)",
    )
    real.add_argument(
        "--compare-hand",
        action="store_true",
        help=f"ours again with fixed budgets, side by side: 8 per site with {HAND_BUDGETS} "
        "(the capacity plan's hand-set budgets), and 8 per site alone",
    )
    real.add_argument(
        "--ours-setting",
        action="append",
        metavar="KEY=VALUE",
        help="a DownloadSettings field for every run of ours (JSON value or text), repeatable",
    )
    real.add_argument(
        "--img2dataset-ca",
        choices=["system", "web"],
        default="system",
        help="the CA file img2dataset loads per HTTPS request: the system bundle plus the web's "
        "CA (as on the real web), or the web's CA alone",
    )
    parser.add_argument("--worker-ours", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_ours:
        worker_ours(*args.worker_ours)
        return
    if args.web == "real" and _web_config(args).names and not os.environ.get("MMC4_BENCH_NETNS"):
        sys.exit(in_namespace(args))

    BENCH.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=BENCH))
    if args.web == "real":
        results = bench_real_web(args, work)
    else:
        results = bench_loopback_web(args, work)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    record = {"args": vars(args), "results": {k: {"urls": n, **r} for k, (n, r) in results.items()}}
    target = out / f"bench_download_{args.web}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(record, indent=1, default=str))
    print(f"results: {target}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
