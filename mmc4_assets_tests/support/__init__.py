"""What the tests import besides the product: helpers, never fixtures (those live in conftest.py).

shards.py: sample shards written for a test; materialize.py: the project's assets run in process;
instance_files.py: the project's dagster.yaml as the tests use it; local_server.py: HTTP(S)
servers on 127.0.0.x; servers/: PostgreSQL and SeaweedFS; openflamingo_reader.py: training tars
read as OpenFlamingo reads them; shard_runner.py and dns_probe.py: download_shard in a process of
its own (`python -m mmc4_assets_tests.support.shard_runner`).
"""
