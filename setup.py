"""The build: pyproject.toml holds the metadata; this file only adds the protocol's compiled hot modules.

mypyc (the compiler inside mypy, pinned in pyproject.toml's build requirements) turns the SSE framer, the event
decoder, the accumulator and the walk that remembers the resources' wires (``wires``) into C extension modules: at
1 KiB chunks they spend most of their time in the interpreter's own per-call work, which compiled code does not
pay (bench/README.md, bench_protocol section, has the figures). The
``.py`` files stay the reference and are installed beside the extension modules; ``headwater.protocol`` imports
the sources when the build is stale or ``HEADWATER_NO_COMPILE=1`` (see its docstring).

``HEADWATER_NO_COMPILE=1 uv sync --all-extras`` (or ``bash scripts/install.sh``) installs without compiling.
"""

import os
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Compiled together as one group (one shared library, headwater_protocol__mypyc): they call each other natively.
COMPILED = [
    "src/headwater/protocol/sse.py",
    "src/headwater/protocol/stream.py",
    "src/headwater/protocol/accumulate.py",
    "src/headwater/protocol/wires.py",
]



class BuildInPlaceStamped(build_ext):
    """build_ext that, building in place (the editable install), stamps every compiled module it placed with
    the time the build ended. An unchanged module is not recompiled, and its copy keeps its old time; the
    check in ``headwater.protocol`` (a source newer than the oldest compiled module means a stale build) needs
    each to say when the last build was."""

    def run(self) -> None:
        super().run()
        if not (self.inplace or getattr(self, "editable_mode", False)):
            return
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for ext in self.extensions:
            *package, module = ext.name.split(".")
            path = os.path.join("src", *package, module + suffix)
            if os.path.exists(path):
                os.utime(path)


if os.environ.get("HEADWATER_NO_COMPILE") == "1":
    ext_modules = []
else:
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, group_name="headwater_protocol", opt_level="3")

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildInPlaceStamped})
