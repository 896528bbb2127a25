"""The command line: ``python -m mmc4_devtools.real_web`` serves a real-shaped web until Ctrl-C
and writes its URLs and expected outcomes to a TSV; with ``--serve`` it is a server child
started by ``RealWeb``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from mmc4_devtools.real_web.child import run, serve
from mmc4_devtools.real_web.config import RealWebConfig
from mmc4_devtools.real_web.web import RealWeb


def main(argv: list[str] | None = None) -> None:
    """Serve a real-shaped web until Ctrl-C; write its URLs and expected outcomes to a TSV."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:  # a server child started by RealWeb
        config, workdir, port, share = argv[1:5]
        part, parts = (int(x) for x in share.split("/"))
        run(serve(RealWebConfig.from_json(config), Path(workdir), int(port), part, parts))
        return
    from mmc4_devtools import real_web  # its docstring describes the web

    parser = argparse.ArgumentParser(
        prog="python -m mmc4_devtools.real_web",  # not __main__.py
        description=real_web.__doc__.splitlines()[0],
    )
    numbers = {"int": int, "float": float}
    for f in fields(RealWebConfig):
        if f.type in numbers:
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(flag, type=numbers[f.type], default=f.default)
    parser.add_argument("--ip", action="store_true", help="URLs hold IP literals (no DNS)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--urls", default="realweb-urls.tsv", help="where to write url<TAB>expect")
    args = parser.parse_args(argv)
    options = {
        f.name: getattr(args, f.name) for f in fields(RealWebConfig) if hasattr(args, f.name)
    }
    config = RealWebConfig(
        **options, names=not args.ip, latency=not args.no_latency, faults=not args.no_faults
    )
    with RealWeb(config, processes=args.processes) as web:
        with open(args.urls, "w") as out:
            for entry in web.entries():
                expect = entry["expect"] if config.faults else "ok"
                out.write(f"{entry['url']}\t{expect}\n")
        print(json.dumps(web.plan.summary()), flush=True)
        print(f"urls: {args.urls}\nCA: {web.ca_file}", flush=True)
        if web.dns:
            print(f"DNS: {config.dns_address}:{web.dns_port} (resolve through it)", flush=True)
        print("Ctrl-C to stop", flush=True)
        try:
            while all(s.proc.poll() is None for s in web._servers):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
