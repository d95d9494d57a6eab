"""Protocol core before/after: this checkout's decode and decode+accumulate against a git ref's, side by side.

Run from the repository root, in the project's venv:

    python bench/protocol_ab.py --ref REF            # against a git ref (main by default): alternating, gc off
    python bench/protocol_ab.py --ref HEAD~3 --runs 41 --streams azure,mcp
    python bench/protocol_ab.py --instructions       # instructions per event under callgrind (slow, exact)

The ref's ``src/headwater/protocol`` is extracted (``git archive``) into a temporary package ``hwbase`` and
imported beside this checkout's ``headwater.protocol``; both run in one process on the same bytes (the streams of
``bench_protocol.py``: ``text`` with 2,000 deltas, ``fcall``, the three captures, in ``--chunk`` byte chunks: 1 KiB
by default, issue 14's measure), taking turns, with
the limit proxy of ``bench_protocol.py`` (``bytes.find`` framing + one typed msgspec decode) run in the same turns
as the noise gauge. ``--instructions`` runs each (variant, peer, stream) in a child under ``valgrind --tool=callgrind``
with 1 and 6 repetitions and reports the difference per event: machine load does not change it.
The ref's sources always run as pure Python (an archive holds no compiled modules); this checkout's run as it is
installed: compiled by mypyc (setup.py) unless ``HEADWATER_NO_COMPILE=1``, so ``HEADWATER_NO_COMPILE=1 python
bench/protocol_ab.py`` compares pure with pure.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import msgspec  # noqa: E402

import _streams  # noqa: E402
from headwater.protocol.events import KnownEvent  # noqa: E402

STREAMS = ("text", "fcall", "azure", "compact", "mcp")


def extract(ref: str, into: Path) -> None:
    """``src/headwater/protocol`` at ``ref`` as the package ``hwbase.protocol`` under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", ref, "src/headwater/protocol"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "hwbase"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (into / "src" / "headwater" / "protocol").rename(package / "protocol")


def stream_named(short: str) -> _streams.Stream:
    if short == "text":
        return _streams.text_stream(2000)
    if short == "fcall":
        return _streams.function_call_stream(500)
    (name,) = [name for name, value in _streams.CAPTURE_SHORT.items() if value == short]
    return _streams.capture_stream(name)


def runners(variant: str, stream: _streams.Stream, chunk: int) -> dict[str, Callable[[], object]]:
    """The peers of one variant ("new": this checkout, "base": the ref) over one stream."""
    prefix = "headwater" if variant == "new" else "hwbase"
    iter_events = importlib.import_module(f"{prefix}.protocol.stream").iter_events
    accumulator = importlib.import_module(f"{prefix}.protocol.accumulate").Accumulator
    chunks = _streams.chunked(stream.data, chunk)

    def decode() -> None:
        for _ in iter_events(chunks):
            pass

    def accumulate() -> None:
        acc = accumulator()
        feed = acc.feed
        for event in iter_events(chunks):
            feed(event)
        acc.response  # noqa: B018 - read once, as a caller would

    return {"decode": decode, "accumulate": accumulate}


def limit_proxy(stream: _streams.Stream) -> Callable[[], object]:
    data = stream.data
    decode = msgspec.json.Decoder(KnownEvent).decode

    def run() -> None:
        find = data.find
        pos = 0
        while True:
            end = find(b"\n\n", pos)
            if end < 0:
                return
            start = find(b"data: ", pos, end) + 6
            decode(data[start:end])
            pos = end + 2

    return run


def wall(streams: list[str], runs: int, chunk: int) -> None:
    for short in streams:
        stream = stream_named(short)
        cases: dict[str, Callable[[], object]] = {"limit": limit_proxy(stream)}
        for variant in ("base", "new"):
            for peer, run in runners(variant, stream, chunk).items():
                cases[f"{variant} {peer}"] = run
        best = dict.fromkeys(cases, float("inf"))
        for run in cases.values():
            run()  # warm-up
        for _ in range(runs):
            for key, run in cases.items():  # taking turns: a busy moment hits every case alike
                gc.collect()
                gc.disable()
                start = time.perf_counter()
                run()
                best[key] = min(best[key], time.perf_counter() - start)
                gc.enable()
        us = {key: value / stream.events * 1e6 for key, value in best.items()}
        limit = us["limit"]
        cells = "  ".join(
            f"{key} {us[key]:.2f} ({limit / us[key]:.2f}x)" for key in cases if key != "limit"
        )
        print(f"{short:8} limit {limit:.2f} us/event | {cells}", flush=True)


def child(variant: str, peer: str, short: str, times: int, chunk: int) -> None:
    stream = stream_named(short)
    run = limit_proxy(stream) if peer == "limit" else runners(variant, stream, chunk)[peer]
    run()
    gc.disable()
    for _ in range(times):
        run()


def instructions(streams: list[str], ref_dir: str, chunk: int, *, base: bool = True) -> None:
    def collected(variant: str, peer: str, short: str, times: int) -> int:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
             "--child", variant, peer, short, str(times), "--ref-dir", ref_dir, "--chunk", str(chunk)],
            capture_output=True, text=True, check=True,
        ).stderr
        return int(re.search(r"Collected : (\d+)", out).group(1))  # type: ignore[union-attr]

    for short in streams:
        events = stream_named(short).events
        figures: dict[str, float] = {}
        for variant, peer in (("new", "limit"), ("base", "decode"), ("new", "decode"), ("base", "accumulate"),
                              ("new", "accumulate")):
            if variant == "base" and not base:
                continue
            per_event = (collected(variant, peer, short, 6) - collected(variant, peer, short, 1)) / 5 / events
            figures[peer if peer == "limit" else f"{variant} {peer}"] = per_event
        limit = figures["limit"]
        cells = "  ".join(f"{key} {value:,.0f} ({limit / value:.2f}x)" for key, value in figures.items()
                          if key != "limit")
        print(f"{short:8} limit {limit:,.0f} instructions/event | {cells}", flush=True)


def _build() -> str:
    """How this checkout's protocol is built: the ref's extracted sources are always pure Python."""
    import headwater.protocol

    return "compiled (mypyc)" if headwater.protocol.COMPILED else "pure Python"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the git ref to compare with (default main)")
    parser.add_argument("--runs", type=int, default=25, help="turns per case; the best counts (default 25)")
    parser.add_argument("--streams", default=",".join(STREAMS), help=f"comma-separated, of {','.join(STREAMS)}")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument("--new-only", action="store_true", help="with --instructions: skip the ref's figures")
    parser.add_argument("--chunk", type=int, default=1024, help="chunk size in bytes (default 1024, issue 14's)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--ref-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    streams = args.streams.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir = args.ref_dir or tmp
        if args.ref_dir is None:
            extract(args.ref, Path(tmp))
        sys.path.insert(0, ref_dir)
        if args.child:
            variant, peer, short, times = args.child
            child(variant, peer, short, int(times), args.chunk)
        elif args.instructions:
            print(f"instructions per event, {args.ref} (base, pure Python) vs this checkout (new, {_build()}), "
                  f"{args.chunk} B chunks; ratio: the limit proxy's / it")
            instructions(streams, ref_dir, args.chunk, base=not args.new_only)
        else:
            import os

            print(f"us/event, best of {args.runs} alternating turns, gc off, {args.chunk} B chunks, load {os.getloadavg()[0]:.2f}; "
                  f"base = {args.ref} (pure Python), new = this checkout ({_build()}); ratio: the limit proxy's time / it")
            wall(streams, args.runs, args.chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
