"""What a long-lived process keeps: tracemalloc snapshots after full collections (issue 25).

`bench_soak.py --tracemalloc` puts this folder first on the daemon's PYTHONPATH, so Python
imports this module at start-up (``site`` imports any ``sitecustomize``), and sets
MMC4_TRACEMALLOC_DIR in that process's environment only. Every MMC4_TRACEMALLOC_EVERY seconds
(default 240) a thread collects garbage, dumps a snapshot (``snap-<pid>-<n>.tm``) and appends
the traced and resident bytes to ``memory.log``; compare two snapshots with
``Snapshot.load(b).compare_to(Snapshot.load(a), "traceback")``. Tracing slows the process and
inflates its RSS: read the traced bytes, not the RSS, of a traced run.
"""

import os

if os.environ.get("MMC4_TRACEMALLOC_DIR"):
    import gc
    import itertools
    import threading
    import time
    import tracemalloc

    # This process only: the code servers and runs it starts inherit its environment.
    _FOLDER = os.environ.pop("MMC4_TRACEMALLOC_DIR")
    _EVERY = float(os.environ.get("MMC4_TRACEMALLOC_EVERY", "240"))
    tracemalloc.start(12)
    os.makedirs(_FOLDER, exist_ok=True)

    def _snapshots() -> None:
        import psutil  # at the first snapshot, not at the daemon's start-up

        started = time.monotonic()
        for n in itertools.count(1):
            time.sleep(_EVERY)
            unreachable = gc.collect()
            path = os.path.join(_FOLDER, f"snap-{os.getpid()}-{n:03d}.tm")
            tracemalloc.take_snapshot().dump(path)
            traced, peak = tracemalloc.get_traced_memory()
            with open(os.path.join(_FOLDER, "memory.log"), "a") as log:
                log.write(
                    f"{n} t={time.monotonic() - started:.0f}s traced={traced} peak={peak} "
                    f"rss={psutil.Process().memory_info().rss} unreachable={unreachable}\n"
                )

    threading.Thread(target=_snapshots, daemon=True, name="mmc4-tracemalloc").start()
