"""Headwater's sans-I/O protocol core: typed events and resources, SSE codec, accumulator, checker, writer.

Nothing here imports an HTTP library, an event loop or a database driver.

The hot modules (``sse``, ``stream``, ``accumulate``, ``wires``: see ``setup.py``) are compiled with mypyc when
the package is built, and the extension modules sit beside their sources. In a development checkout, where they
are built in place, a source edited (or changed by git) after the last build would silently run the old compiled
code; so when any ``.py`` file of this package is newer than the oldest compiled module, the sources are imported
instead, with a warning that says how to rebuild. ``HEADWATER_NO_COMPILE=1`` in the environment imports the
sources too (the pure-Python path that builds without a compiler), and also builds the package without
compiling. ``COMPILED`` says which is in use.
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from types import ModuleType

_HERE = os.path.dirname(os.path.abspath(__file__))
# A development checkout: this package lives at src/headwater/protocol, setup.py at the root.
_CHECKOUT = os.path.isfile(os.path.join(_HERE, "..", "..", "..", "setup.py"))


def _compiled_names() -> dict[str, str]:
    """The modules of this package that have a compiled extension module beside them: name -> its file."""
    found: dict[str, str] = {}
    for entry in os.listdir(_HERE):
        for suffix in EXTENSION_SUFFIXES:
            if entry.endswith(suffix):
                found[entry[: -len(suffix)]] = os.path.join(_HERE, entry)
                break
    return found


def _stale(compiled: dict[str, str]) -> bool:
    """Whether a source of this package was changed after the oldest compiled module was built."""
    built = min(os.path.getmtime(path) for path in compiled.values())
    return any(
        os.path.getmtime(os.path.join(_HERE, entry)) > built for entry in os.listdir(_HERE) if entry.endswith(".py")
    )


class _SourceFinder:
    """Finds the ``.py`` source of each named module of this package, ahead of its compiled extension module."""

    def __init__(self, names: list[str]) -> None:
        self._sources = {f"{__name__}.{name}": os.path.join(_HERE, f"{name}.py") for name in names}

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        source = self._sources.get(fullname)
        return None if source is None else spec_from_file_location(fullname, source)


def _choose() -> bool:
    compiled = _compiled_names()
    if not compiled:
        return False
    if os.environ.get("HEADWATER_NO_COMPILE") != "1":
        if not (_CHECKOUT and _stale(compiled)):
            return True
        warnings.warn(
            "headwater.protocol: a source was edited after the compiled modules were built; running the pure-Python "
            "sources. Rebuild with `bash scripts/install.sh` (or `uv sync --all-extras`).",
            RuntimeWarning,
            stacklevel=2,
        )
    # Every compiled module at once: compiled modules call each other natively, so they cannot mix with sources.
    sys.meta_path.insert(0, _SourceFinder(sorted(compiled)))
    return False


COMPILED: bool = _choose()
"""True if the mypyc-compiled modules are the ones imported, False if the pure-Python sources are."""
