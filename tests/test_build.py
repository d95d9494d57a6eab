"""The compiled build (setup.py: the protocol's hot modules through mypyc) and its guard against stale code.

``headwater.protocol`` imports the compiled extension modules when they are as new as every source of the
package, and the ``.py`` sources (with a warning) when a development checkout's source was changed after the
build, or when ``HEADWATER_NO_COMPILE=1``. Each case runs in a child interpreter over a copy of ``src``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "src" / "headwater" / "protocol"
COMPILED_HERE = [p for p in PROTOCOL.iterdir() if p.name.endswith(tuple(EXTENSION_SUFFIXES))]

pytestmark = pytest.mark.skipif(not COMPILED_HERE, reason="this checkout is not compiled (HEADWATER_NO_COMPILE=1)")

# The modules setup.py compiles; each must be imported compiled, or all of them from their sources.
COMPILED_MODULES = ("sse", "stream", "accumulate", "wires")

PROBE = (
    "import importlib, warnings, sys\n"
    "warnings.simplefilter('always')\n"
    "import headwater.protocol as p, headwater.protocol.stream as t\n"
    f"sources = {{importlib.import_module('headwater.protocol.' + m).__file__.endswith('.py') for m in {COMPILED_MODULES!r}}}\n"
    "print(p.COMPILED, *sorted(sources))\n"
    "list(t.iter_events([b'event: response.output_text.delta\\ndata: {\"type\":\"response.output_text.delta\","
    "\"item_id\":\"m\",\"output_index\":0,\"content_index\":0,\"delta\":\"a\"}\\n\\n']))\n"
)


def _copy(tmp_path: Path, *, checkout: bool) -> Path:
    """This checkout's ``src``, as if just built: the compiled modules newer than every source (whatever the
    state of this checkout's own build); with a setup.py beside it or not."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    built = time.time() + 60
    for path in (tmp_path / "src" / "headwater" / "protocol").iterdir():
        if path.name.endswith(tuple(EXTENSION_SUFFIXES)):
            os.utime(path, (built, built))
    if checkout:
        shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    return tmp_path / "src"


def _probe(src: Path, **env: str) -> tuple[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "HEADWATER_NO_COMPILE"}
    environ.update(env, PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=src.parent, env=environ, capture_output=True, text=True, check=True
    )
    return done.stdout.strip(), done.stderr


def _edit_later(path: Path) -> None:
    later = time.time() + 120  # after the build (_copy)
    os.utime(path, (later, later))


def test_setup_compiles_the_modules_this_test_probes() -> None:
    setup = (ROOT / "setup.py").read_text()
    compiled = setup[setup.index("COMPILED = [") : setup.index("]", setup.index("COMPILED = ["))]
    assert sorted(compiled.split('"')[1::2]) == sorted(f"src/headwater/protocol/{m}.py" for m in COMPILED_MODULES)


def test_a_fresh_build_imports_the_compiled_modules(tmp_path: Path) -> None:
    out, err = _probe(_copy(tmp_path, checkout=True))
    assert out == "True False"
    assert "RuntimeWarning" not in err


def test_a_source_edited_after_the_build_runs_the_sources_and_says_so(tmp_path: Path) -> None:
    src = _copy(tmp_path, checkout=True)
    _edit_later(src / "headwater" / "protocol" / "codec.py")  # not compiled, but the compiled ones are typed on it
    out, err = _probe(src)
    assert out == "False True"  # every compiled module falls back at once: they call each other natively
    assert "running the pure-Python sources" in err and "scripts/install.sh" in err


def test_an_installed_package_trusts_its_compiled_modules(tmp_path: Path) -> None:
    # Outside a checkout (no setup.py above src), file times say nothing: an installer writes them in any order.
    src = _copy(tmp_path, checkout=False)
    _edit_later(src / "headwater" / "protocol" / "sse.py")
    out, err = _probe(src)
    assert out == "True False"
    assert "RuntimeWarning" not in err


def test_headwater_no_compile_imports_the_sources(tmp_path: Path) -> None:
    out, err = _probe(_copy(tmp_path, checkout=True), HEADWATER_NO_COMPILE="1")
    assert out == "False True"
    assert "RuntimeWarning" not in err
