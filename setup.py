"""The build: pyproject.toml holds the metadata; this file only adds the protocol's compiled hot modules.

mypyc (the compiler inside mypy, pinned in pyproject.toml's build requirements) turns the SSE framer and the
event decoder into C extension modules: at 1 KiB chunks they spend most of their time in the interpreter's own
per-call work, which compiled code does not pay (bench/README.md, bench_protocol section, has the figures). The
``.py`` files stay the reference and are installed beside the extension modules; ``headwater.protocol`` imports
the sources when the build is stale or ``HEADWATER_NO_COMPILE=1`` (see its docstring).

``HEADWATER_NO_COMPILE=1 uv sync --all-extras`` (or ``bash scripts/install.sh``) installs without compiling.
"""

import os

from setuptools import setup

# Compiled together as one group (one shared library, headwater_protocol__mypyc): they call each other natively.
COMPILED = [
    "src/headwater/protocol/sse.py",
    "src/headwater/protocol/stream.py",
]

if os.environ.get("HEADWATER_NO_COMPILE") == "1":
    ext_modules = []
else:
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, group_name="headwater_protocol", opt_level="3")

setup(ext_modules=ext_modules)
