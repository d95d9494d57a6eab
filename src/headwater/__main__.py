"""``python -m headwater``: the same command line as ``headwater``."""

from headwater.cli import main

main()
