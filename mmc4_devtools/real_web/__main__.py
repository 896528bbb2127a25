"""``python -m mmc4_devtools.real_web``: the command line (``cli.main``), also how ``RealWeb``
starts its server children."""

from mmc4_devtools.real_web.cli import main

main()
