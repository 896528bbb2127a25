"""Reassignment speed: the reference `compute_assignments.py` against our `reassign_shard`.

Both run single-process in their own subprocess on the same generated shard. Each reports the
time of its compute alone (imports excluded, reading + assigning + writing included); the
process wall time is measured too. The outputs must agree on every document, field for field.

The reference crashes on documents without images or sentences, so the shard handed to both
leaves those out. The reference rewrites its input in place, so it gets a copy.

    .venv/bin/python benchmarks/bench_reassign.py [--documents 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmc4_devtools.sample_shard import generate_documents  # noqa: E402

REFERENCE_DIR = Path("/work/shared/reference/mmc4_scripts")
REFERENCE_PYTHON = REPO / ".bench" / "reference" / "bin" / "python"
TIMING_MARK = "BENCH_COMPUTE_SECONDS "

REFERENCE_RUNNER = f"""
import sys, time
import compute_assignments
sys.argv = ["compute_assignments.py", sys.argv[1]]
start, cpu = time.perf_counter(), time.process_time()
compute_assignments.main()
timing = (time.perf_counter() - start, time.process_time() - cpu)
print("{TIMING_MARK}%r %r" % timing, file=sys.stderr)
"""

OUR_RUNNER = f"""
import sys, time
from mmc4_assets.corpus.assignment import reassign_shard
start, cpu = time.perf_counter(), time.process_time()
reassign_shard(sys.argv[1], sys.argv[2])
timing = (time.perf_counter() - start, time.process_time() - cpu)
print("{TIMING_MARK}%r %r" % timing, file=sys.stderr)
"""


def write_shard(path: Path, documents: int, seed: int, stale: bool) -> int:
    """Write the benchmark shard; return how many documents it holds.

    ``stale`` blanks every stored matched_text_index, so that no line can pass through as is.
    """
    kept = 0
    with open(path, "wb") as out:
        for doc in generate_documents(documents, seed):
            if stale:
                for image in doc["image_info"]:
                    image["matched_text_index"] = -1
            if doc["image_info"] and doc["text_list"]:
                out.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
                kept += 1
    return kept


def run_timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run a runner; return (process wall, compute wall, compute CPU) seconds."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    marks = [line for line in done.stderr.splitlines() if line.startswith(TIMING_MARK)]
    compute, cpu = marks[-1].removeprefix(TIMING_MARK).split()
    return wall, float(compute), float(cpu)


def read_documents(path: Path) -> list[dict]:
    """Documents of a JSONL file (the reference's has no final newline)."""
    with open(path, "rb") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def disagreements(reference: list[dict], ours: list[dict]) -> list[str]:
    """Documents that differ in any field (matched_text_index / matched_sim named first)."""
    if len(reference) != len(ours):
        return [f"reference wrote {len(reference)} documents, we wrote {len(ours)}"]
    found = []
    for line, (ref_doc, our_doc) in enumerate(zip(reference, ours, strict=True), start=1):
        ref_pairs = [(im["matched_text_index"], im["matched_sim"]) for im in ref_doc["image_info"]]
        our_pairs = [(im["matched_text_index"], im["matched_sim"]) for im in our_doc["image_info"]]
        if ref_pairs != our_pairs:
            found.append(f"line {line}: reference {ref_pairs} ours {our_pairs}")
        elif ref_doc != our_doc:
            found.append(f"line {line}: another field differs")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--stale",
        action="store_true",
        help="blank the stored assignments so every document must be rewritten (worst case)",
    )
    parser.add_argument("--reference-python", type=Path, default=REFERENCE_PYTHON)
    args = parser.parse_args()
    if not args.reference_python.exists():
        sys.exit(f"no reference environment at {args.reference_python}")

    with tempfile.TemporaryDirectory(prefix="bench_reassign_") as tmp:
        work = Path(tmp)
        shard, reference_out, our_out = (
            work / "shard.jsonl",
            work / "ref.jsonl",
            work / "ours.jsonl",
        )
        documents = write_shard(shard, args.documents, args.seed, args.stale)

        reference_env = {**os.environ, "PYTHONPATH": str(REFERENCE_DIR)}
        our_env = {**os.environ, "PYTHONPATH": str(REPO)}
        timings: dict[str, list[tuple[float, float, float]]] = {"reference": [], "ours": []}
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            shutil.copyfile(shard, reference_out)
            timings["reference"].append(
                run_timed(
                    [str(args.reference_python), "-c", REFERENCE_RUNNER, str(reference_out)],
                    reference_env,
                )
            )
            timings["ours"].append(
                run_timed([sys.executable, "-c", OUR_RUNNER, str(shard), str(our_out)], our_env)
            )
        problems = disagreements(read_documents(reference_out), read_documents(our_out))

    kind = "stale assignments" if args.stale else "stored assignments as generated"
    print(f"{documents} documents ({args.documents} generated, seed {args.seed}, {kind})")
    print(f"single process each, best of {args.repeats} alternating runs")
    header = ("compute s", "docs/s", "CPU s", "docs/CPU s", "process s", "docs/s")
    print(f"{'':10}" + "".join(f"{h:>12}" for h in header))
    best = {name: [min(run[k] for run in runs) for k in range(3)] for name, runs in timings.items()}
    for name, (wall, compute, cpu) in best.items():
        cells = (compute, documents / compute, cpu, documents / cpu, wall, documents / wall)
        print(f"{name:10}" + "".join(f"{c:12.3f}" if c < 100 else f"{c:12.0f}" for c in cells))
    (ref_wall, ref_compute, ref_cpu), (our_wall, our_compute, our_cpu) = best.values()
    print(
        f"{'speed-up':10}{ref_compute / our_compute:11.2f}x{'':12}{ref_cpu / our_cpu:11.2f}x"
        f"{'':12}{ref_wall / our_wall:11.2f}x"
    )
    if problems:
        print(f"OUTPUTS DISAGREE on {len(problems)} documents:", *problems[:10], sep="\n  ")
        sys.exit(1)
    print("outputs agree on every document (matched_text_index, matched_sim and all other fields)")


if __name__ == "__main__":
    main()
