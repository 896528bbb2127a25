"""A pilot's site shares: which sites hold the most images, and the budget each needs.

Reads the `raw_docs` of the shards given, counts images per site (registrable domain, as the
site ledger counts them) and prints the 15 largest shares with the budget that would let each
finish its share of the corpus's 375M images in 3 days (budget ~650 x share; see
docs/many-machines.md, "Capacity plan"):

    .venv/bin/python deploy/pilot_site_shares.py data/raw_docs/*.jsonl
"""

import collections
import sys
import urllib.parse

import orjson

from mmc4_assets.downloader.politeness.sites import site_of

count = collections.Counter()
for path in sys.argv[1:]:
    for line in open(path, "rb"):
        for image in orjson.loads(line)["image_info"]:
            host = urllib.parse.urlsplit(image["raw_url"]).hostname
            count[site_of(host) if host else "(no host)"] += 1
total = sum(count.values())
for site, n in count.most_common(15):
    print(f"{site:40} {n / total:6.2%}  budget for 3 days: {max(1, round(650 * n / total))}")
