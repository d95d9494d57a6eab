"""The cyclic collector's settings in real serving workers (two workers on PostgreSQL + Redis): every worker sets
``GC_THRESHOLDS`` once it serves (a worker that skipped ``tune_gc`` would collect at the interpreter's default
(700, 10, 10), about a quarter of the CPU per event at 1,000 streams: bench/README.md). Observed with
bench/bench_gc.py's tracer (the ``sitecustomize`` it puts on PYTHONPATH), as that bench does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from headwater.server.serving import GC_THRESHOLDS
from headwater.server.testing import ServeProcess
from services import frames_of, payload, script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_gc  # noqa: E402


def _marks(trace_dir: Path) -> dict[int, list[dict]]:
    """Each traced process's marks (fork, freeze, set_threshold), by pid."""
    marks: dict[int, list[dict]] = {}
    for path in trace_dir.glob("gc-*.jsonl"):
        pid = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            item = json.loads(line) if line.strip() else None
            if isinstance(item, dict) and "mark" in item:
                marks.setdefault(pid, []).append(item)
    return marks


def test_every_serving_worker_sets_the_thresholds(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    hook_dir, trace_dir = tmp_path / "hook", tmp_path / "traces"
    hook_dir.mkdir()
    trace_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(bench_gc.HOOK)
    path = script(tmp_path / "script.json", 5)
    server = ServeProcess(
        "--backend", "scripted", "--backend-option", f"script={path}", "--store", postgres_url,
        "--events", redis_url, "--workers", "2", log_path=str(tmp_path / "serve.log"),
        env={"HW_GC_TRACE": str(trace_dir), "PYTHONPATH": f"{hook_dir}:{ROOT / 'src'}"},
    )
    server.start()
    try:
        for _ in range(4):  # (both workers serve on one port; either may take each)
            with httpx.stream("POST", f"{server.url}/v1/responses", json={"input": "hi", "stream": True},
                              timeout=30) as response:
                assert payload(frames_of(response)[-1])["type"] == "response.completed"
    finally:
        server.stop()
    set_by = {pid: [tuple(m["threshold"]) for m in marks if m["mark"] == "set_threshold"]
              for pid, marks in _marks(trace_dir).items()}
    workers = {pid: thresholds for pid, thresholds in set_by.items() if thresholds}
    assert len(workers) == 2, set_by  # each worker, once it serves
    for thresholds in workers.values():
        assert thresholds[-1] == GC_THRESHOLDS
