"""The cyclic garbage collector's pauses in every process of another bench: per generation, collections per
second, the pause (wall and CPU) p50/p99/max, a histogram of pauses, objects in the generation and collected.

Each collection stops the event loop of its process for as long as it takes: every stream of that process
waits it out. CPU shares hide that; this prints the pauses themselves.

    python bench/bench_gc.py run -- bench/bench_gateway.py --streams 512 --targets hw-responses-pg-x2
    python bench/bench_gc.py run -- bench/bench_gateway.py --streams 64 --baseline /work/base/src \\
        --targets hw-responses-memory@base,hw-responses-memory
    python bench/bench_gc.py run --sizes --types 5 -- bench/bench_scale.py --delay 0.04 --only sqlite
    python bench/bench_gc.py report DIR      # again, from the traces a run left (--keep DIR)

How: ``run`` puts a ``sitecustomize`` on PYTHONPATH (and behind ``--baseline SRC``: ``SRC:hook``, which both
benches pass on as the baseline's PYTHONPATH), so that every Python process the bench starts (servers, their
forked workers, the mock upstream, the load generators) loads ``install`` from this file when
``HW_GC_TRACE`` names a directory. It times each collection with ``gc.callbacks`` (``time.perf_counter`` and
``time.thread_time`` between the "start" and "stop" phases) and appends one line per collection to
``DIR/gc-<pid>.jsonl``. A process's figures count from its last ``gc.freeze``/``gc.set_threshold`` (a server's
``tune_gc``, once it serves), or from its start if it never calls them. ``--sizes``: also the number of objects
in the collected generations (``len(gc.get_objects(g))``, counted before the timed span, but a pause of its own:
leave it off for timings); ``--types N``: every Nth young collection, the commonest types in the young generation.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys
import time
import types

HOOK = f"""\
import os
if os.environ.get("HW_GC_TRACE"):
    import importlib.util
    _spec = importlib.util.spec_from_file_location("_hw_gc_trace", {os.path.abspath(__file__)!r})
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    _mod.install(os.environ["HW_GC_TRACE"])
"""


# --- the hook (in the traced processes; nothing but the standard library, imported at interpreter start) ----


def _name(obj: object) -> str:
    """An object's type, and for code-carrying objects (coroutines, generators, functions, bound methods) the
    code's qualified name: which part of the program allocated it."""
    kind = type(obj).__name__
    code = getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None) or getattr(obj, "gi_code", None)
    if code is None and kind in ("function", "method"):
        func = getattr(obj, "__func__", obj)
        code = getattr(func, "__code__", None)
    qualname = getattr(code, "co_qualname", None)
    if type(qualname) is str:
        return f"{kind} {qualname}"
    return kind


_CONTAINERS = frozenset({list, dict, tuple, set, types.CellType, collections.deque})


class _Trace:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.sizes = bool(os.environ.get("HW_GC_TRACE_SIZES"))
        self.types_every = int(os.environ.get("HW_GC_TRACE_TYPES") or 0)
        self.owners = bool(os.environ.get("HW_GC_TRACE_OWNERS"))
        self.garbage: dict[str, int] | None = {} if os.environ.get("HW_GC_TRACE_GARBAGE") else None
        if self.garbage is not None:
            gc.set_debug(gc.DEBUG_SAVEALL)
        self.young = 0
        self.file = None
        self.lines: list[str] = []
        self.last_flush = 0.0
        self.t0 = self.c0 = 0.0
        self.size = -1
        self.open()

    def open(self) -> None:
        self.pid = os.getpid()
        self.file = open(os.path.join(self.directory, f"gc-{self.pid}.jsonl"), "w")  # noqa: SIM115
        self.lines = [json.dumps({"pid": self.pid, "ppid": os.getppid(), "argv": sys.argv[:12],
                                  "pythonpath": os.environ.get("PYTHONPATH", ""), "start": time.monotonic(),
                                  "threshold": gc.get_threshold()})]
        self.flush()

    def after_fork(self) -> None:
        self.lines = []
        self.open()
        self.mark("fork")

    def mark(self, what: str, *args: object) -> None:
        self.lines.append(json.dumps({"mark": what, "t": time.monotonic(), "args": list(args),
                                      "threshold": gc.get_threshold()}))
        self.flush()

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generation = info["generation"]
            self.size = -1
            if self.sizes:
                self.size = sum(len(gc.get_objects(g)) for g in range(generation + 1))
            if self.types_every and generation == 0:
                self.young += 1
                if self.young % self.types_every == 0:
                    counts: dict[str, int] = {}
                    young = gc.get_objects(0)
                    owners: dict[int, str] = {}
                    if self.owners:  # a container is named by the young object that holds it
                        for obj in young:
                            if type(obj) in _CONTAINERS:
                                continue
                            owner = _name(obj)
                            for held in gc.get_referents(obj):
                                if type(held) in _CONTAINERS and id(held) not in owners:
                                    owners[id(held)] = owner
                                    if type(held) is dict:  # (an instance's __dict__: what it holds too)
                                        for inner in held.values():
                                            if type(inner) in _CONTAINERS and id(inner) not in owners:
                                                owners[id(inner)] = f"{owner}.__dict__"
                    for obj in young:
                        name = _name(obj)
                        owner = owners.get(id(obj))
                        if owner is not None:
                            name = f"{name} in {owner}"
                        counts[name] = counts.get(name, 0) + 1
                    del young, owners
                    top = sorted(counts.items(), key=lambda kv: -kv[1])[:60]
                    self.lines.append(json.dumps({"types": top, "n": sum(counts.values()), "t": time.monotonic()}))
            self.c0 = time.thread_time()
            self.t0 = time.perf_counter()
            return
        wall = time.perf_counter() - self.t0
        cpu = time.thread_time() - self.c0
        now = time.monotonic()
        if self.garbage is not None and gc.garbage:  # (DEBUG_SAVEALL: what was collected, by type, then let go)
            for obj in gc.garbage:
                name = _name(obj)
                self.garbage[name] = self.garbage.get(name, 0) + 1
            gc.garbage.clear()
            self.lines.append(json.dumps({"garbage": sorted(self.garbage.items(), key=lambda kv: -kv[1])[:60],
                                          "t": now}))
        self.lines.append(f"[{now:.6f},{info['generation']},{wall:.7f},{cpu:.7f},{info['collected']},"
                          f"{info['uncollectable']},{self.size}]")
        if now - self.last_flush > 0.5:
            self.last_flush = now
            self.flush()

    def flush(self) -> None:
        if self.file is not None and self.lines:
            self.file.write("\n".join(self.lines) + "\n")
            self.file.flush()
            self.lines = []

    def at_exit(self) -> None:
        self.mark("exit")


def _start_ticks(young: float, middle_every: float, full: float) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    state = {"n": 0, "last_full": time.monotonic()}

    def collect() -> None:
        state["n"] += 1
        now = time.monotonic()
        if full and now - state["last_full"] >= full:
            state["last_full"] = now
            gc.collect(2)
        elif state["n"] % int(middle_every) == 0:
            gc.collect(1)
        else:
            gc.collect(0)
        loop.call_later(young, collect)

    loop.call_later(young, collect)


def install(directory: str) -> None:
    """Trace this process's collections into ``directory`` (from ``sitecustomize``; see the module's notes)."""
    import atexit

    trace = _Trace(directory)
    gc.callbacks.append(trace.callback)
    os.register_at_fork(after_in_child=trace.after_fork)
    atexit.register(trace.at_exit)
    # A ``--workers`` server's worker ends with ``os._exit`` (no atexit): without this, the collections of its
    # last half second (buffered until the next flush) were lost, and a trace seemed to end early.
    exit_now = os._exit

    def traced_exit(code: int) -> None:
        trace.at_exit()
        exit_now(code)

    os._exit = traced_exit  # type: ignore[assignment]
    freeze, set_threshold = gc.freeze, gc.set_threshold

    tick = os.environ.get("HW_GC_TICK")  # (an experiment: "young_s,middle_every,full_s", collections by time)

    def traced_freeze() -> None:
        freeze()
        trace.mark("freeze")
        if tick:
            _start_ticks(*(float(x) for x in tick.split(",")))

    override = os.environ.get("HW_GC_THRESHOLDS")  # (an experiment: these instead of what the process sets)

    def traced_set_threshold(*args: int) -> None:
        if override:
            args = tuple(int(x) for x in override.split(","))
        set_threshold(*args)
        trace.mark("set_threshold", *args)

    gc.freeze, gc.set_threshold = traced_freeze, traced_set_threshold  # type: ignore[assignment]


# --- the report --------------------------------------------------------------------------------------------

BUCKETS_MS = (0.1, 0.3, 1, 3, 10, 30, 100, 300)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _label(head: dict, pythonpath: str) -> str:
    argv = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(head["argv"]))
    code = "base" if "/work/base" in pythonpath or "base/src" in pythonpath else "tree"
    if "serve" in head["argv"] or "headwater" in argv:
        return f"{code} server {argv[:90]}"
    return f"{code} {argv[:100]}"


def load(directory: str) -> list[dict]:
    """Each traced process: its header, marks and collections (from the last freeze/set_threshold on)."""
    processes = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith("gc-"):
            continue
        head: dict | None = None
        records: list[list[float]] = []
        types: list[dict] = []
        garbage: dict | None = None
        since = None
        end = None
        with open(os.path.join(directory, name)) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                item = json.loads(line)
                if isinstance(item, list):
                    records.append(item)
                elif "pid" in item:
                    head = item
                    since = item["start"]
                elif "types" in item:
                    types.append(item)
                elif "garbage" in item:
                    garbage = item
                elif item.get("mark") in ("freeze", "set_threshold"):
                    since = item["t"]
                    records = [r for r in records if r[0] >= since]
                    types = []
                    head = {**(head or {}), "threshold": item["threshold"]}
                elif item.get("mark") == "exit":
                    end = item["t"]
                elif item.get("mark") == "fork" and head is not None:
                    since = item["t"]
        if head is None:
            continue
        records = [r for r in records if (since is None or r[0] >= since) and (end is None or r[0] <= end)]
        if end is None:
            end = records[-1][0] if records else since
        processes.append({"head": head, "records": records, "types": types, "since": since, "end": end,
                          "garbage": garbage})
    return processes


def report(directory: str, *, all_processes: bool = False) -> None:
    for proc in load(directory):
        head, records = proc["head"], proc["records"]
        label = _label(head, head.get("pythonpath", ""))
        if not all_processes and "server" not in label and len(records) < 3:
            continue
        seconds = max(1e-9, (proc["end"] or 0) - (proc["since"] or 0))
        print(f"pid {head['pid']} ({label}); thresholds {tuple(head['threshold'])}; {seconds:.1f} s traced")
        print("  gen     n     /s   wall p50    p99    max ms   cpu p50    p99 ms/s   objects mean/max   collected"
              "   pauses by wall ms: " + " ".join(f"<{b:g}" for b in BUCKETS_MS) + f" >={BUCKETS_MS[-1]:g}")
        for generation in range(3):
            rows = [r for r in records if r[1] == generation]
            if not rows:
                continue
            walls = [r[2] * 1e3 for r in rows]
            cpus = [r[3] * 1e3 for r in rows]
            cpu = sum(cpus)
            sizes = [r[6] for r in rows if r[6] >= 0]
            collected = sum(r[4] for r in rows)
            counts = [0] * (len(BUCKETS_MS) + 1)
            for w in walls:
                counts[next((i for i, b in enumerate(BUCKETS_MS) if w < b), len(BUCKETS_MS))] += 1
            size = f"{sum(sizes) / len(sizes):8.0f} /{max(sizes):7d}" if sizes else " " * 17
            print(f"  {generation} {len(rows):7d} {len(rows) / seconds:6.2f} {_pct(walls, 0.5):9.2f} "
                  f"{_pct(walls, 0.99):6.2f} {max(walls):8.2f} {_pct(cpus, 0.5):7.2f} {_pct(cpus, 0.99):6.2f} "
                  f"{cpu / seconds:5.2f}   {size}   {collected:9d}"
                  f"   {' '.join(str(c) for c in counts)}")
        allw = [r[2] * 1e3 for r in records]
        if allw:
            stopped = sum(allw) / 1e3 / seconds
            print(f"  all: {len(allw) / seconds:.2f}/s, loop stopped {100 * stopped:.2f} % of the time, "
                  f"pause p99 {_pct(allw, 0.99):.2f} ms, max {max(allw):.2f} ms")
        if proc["garbage"] is not None:
            print("  collected garbage, since the start (DEBUG_SAVEALL): "
                  + ", ".join(f"{name} {count}" for name, count in proc["garbage"]["garbage"][:30]))
        for item in proc["types"][-3:]:
            print(f"  young generation ({item['n']} objects): "
                  + ", ".join(f"{name} {count}" for name, count in item["types"][:int(os.environ.get("HW_GC_REPORT_TYPES", "16"))]))


def run(argv: list[str], *, sizes: bool, types: int, keep: str | None, all_processes: bool) -> int:
    import subprocess
    import tempfile

    work = tempfile.mkdtemp(prefix="hw-gc-")
    hook_dir = os.path.join(work, "hook")
    trace_dir = keep or os.path.join(work, "trace")
    os.makedirs(hook_dir)
    os.makedirs(trace_dir, exist_ok=True)
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
        f.write(HOOK)
    command = list(argv)
    for i, arg in enumerate(command[:-1]):
        if arg == "--baseline":
            command[i + 1] = f"{os.path.abspath(command[i + 1])}:{hook_dir}"
    if command and command[0].endswith(".py"):
        command = [sys.executable, *command]
    env = {**os.environ, "HW_GC_TRACE": trace_dir,
           "PYTHONPATH": os.pathsep.join(p for p in (hook_dir, os.environ.get("PYTHONPATH")) if p)}
    if sizes:
        env["HW_GC_TRACE_SIZES"] = "1"
    if types:
        env["HW_GC_TRACE_TYPES"] = str(types)
    code = subprocess.call(command, env=env)
    print(f"\n--- garbage collections ({time.strftime('%H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()}; "
          f"traces in {trace_dir})")
    report(trace_dir, all_processes=all_processes)
    return code


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a bench with every process traced, then report")
    p_run.add_argument("--sizes", action="store_true", help="count the objects of each collected generation")
    p_run.add_argument("--types", type=int, default=0, metavar="N",
                       help="every Nth young collection, its commonest types")
    p_run.add_argument("--keep", metavar="DIR", help="write the traces here (default: a temporary directory)")
    p_run.add_argument("--all", action="store_true", help="report every process, not just servers and busy ones")
    p_run.add_argument("bench", nargs=argparse.REMAINDER, help="-- the bench's command line")
    p_report = sub.add_parser("report", help="report the traces in DIR")
    p_report.add_argument("dir")
    p_report.add_argument("--all", action="store_true")
    args = parser.parse_args()
    if args.command == "report":
        report(args.dir, all_processes=args.all)
        return
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    raise SystemExit(run(bench, sizes=args.sizes, types=args.types, keep=args.keep, all_processes=args.all))


if __name__ == "__main__":
    main()
