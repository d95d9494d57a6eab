"""A Responses relay's per-event CPU, base and tree in one run: what relaying bench_gateway's mock stream costs
in process (no HTTP), event by event, the four closing events (issue 14's terminal) in particular.

Each round makes a ``ResponseRelay`` (as the responses backend does: ``from_writer`` of a fresh writer), decodes
the mock's events (``codec.decode_event``, not timed: each round decodes afresh, the events keep state), then
times, with ``time.perf_counter_ns`` and the cyclic collector off: the relay's ``feed`` of the upstream head (4
events), of the 64 deltas, of each of the four closing events, and the ``encode_event`` of everything those
four gave out. Each variant runs in its own child process (``--baseline SRC`` is put first on ``PYTHONPATH``,
the tree runs as installed: compiled unless ``HEADWATER_NO_COMPILE=1``), the children taking turns; reported:
the median over all rounds, µs, base -> tree and the ratio.

    python bench/bench_terminal.py --baseline /work/base/src [--rounds 300] [--turns 4]
    python bench/bench_terminal.py            # the tree alone
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DELTAS = 64
PHASES = ("head", "deltas", "text.done", "part.done", "item.done", "completed", "encode closing")


def _mock_payloads(n: int) -> list[bytes]:
    """bench_gateway's ``_ResponsesStream`` n: its events' JSON payloads (compact, as the mock sends them)."""
    rid, msg = f"resp_mock{n}", f"msg_mock{n}"
    seq = 0
    out: list[bytes] = []

    def event(obj: dict[str, Any]) -> None:
        nonlocal seq
        obj = {"type": obj["type"], "sequence_number": seq, **obj}
        seq += 1
        out.append(json.dumps(obj, separators=(",", ":")).encode())

    def response(status: str, output: list[Any]) -> dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": 1, "status": status, "model": "mock",
                "output": output, "usage": None if status != "completed" else
                {"input_tokens": 5, "output_tokens": DELTAS, "total_tokens": 5 + DELTAS,
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}

    item = {"id": msg, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    event({"type": "response.created", "response": response("in_progress", [])})
    event({"type": "response.in_progress", "response": response("in_progress", [])})
    event({"type": "response.output_item.added", "output_index": 0, "item": item})
    event({"type": "response.content_part.added", "item_id": msg, "output_index": 0, "content_index": 0,
           "part": {"type": "output_text", "text": "", "annotations": []}})
    texts = [f"~t{1_000_000_000 + 20_000_000 * i}~ " for i in range(DELTAS)]
    for text in texts:
        event({"type": "response.output_text.delta", "item_id": msg, "output_index": 0, "content_index": 0,
               "delta": text, "logprobs": []})
    text = "".join(texts)
    part = {"type": "output_text", "text": text, "annotations": []}
    done = {"id": msg, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    event({"type": "response.output_text.done", "item_id": msg, "output_index": 0, "content_index": 0,
           "text": text, "logprobs": []})
    event({"type": "response.content_part.done", "item_id": msg, "output_index": 0, "content_index": 0,
           "part": part})
    event({"type": "response.output_item.done", "output_index": 0, "item": done})
    event({"type": "response.completed", "response": response("completed", [done])})
    return out


def child(rounds: int) -> None:
    import headwater.protocol as protocol
    from headwater.protocol.codec import decode_event, encode_event
    from headwater.protocol.relay import ResponseRelay
    from headwater.protocol.resources import Response
    from headwater.protocol.writer import ResponseWriter

    payloads = _mock_payloads(7)
    template = Response(model="mock", store=True)
    clock = time.perf_counter_ns
    times: dict[str, list[int]] = {name: [] for name in PHASES}
    digest = None
    gc.disable()
    for i in range(rounds + 20):  # the first 20: warm-up, not counted
        events = [decode_event(p) for p in payloads]
        relay = ResponseRelay.from_writer(ResponseWriter(template), upstream="mock")
        start = clock()
        for event in events[:4]:
            relay.feed(event)
        head = clock()
        for event in events[4 : 4 + DELTAS]:
            relay.feed(event)
        deltas = clock()
        closing: list[Any] = []
        marks = []
        for event in events[4 + DELTAS :]:
            closing.extend(relay.feed(event))
            marks.append(clock())
        encoded = [encode_event(e) for e in closing]
        end = clock()
        if i == 0:  # what the tree and base give out must agree (the ids and times differ: not compared)
            final = json.loads(encoded[-1])["response"]
            digest = [json.loads(e)["type"] for e in encoded], final["output"], final["usage"]
        if i < 20:
            continue
        times["head"].append(head - start)
        times["deltas"].append(deltas - head)
        before = deltas
        for name, at in zip(("text.done", "part.done", "item.done", "completed"), marks, strict=True):
            times[name].append(at - before)
            before = at
        times["encode closing"].append(end - before)
        if i % 50 == 0:
            gc.enable()
            gc.collect()
            gc.disable()
    gc.enable()
    print(json.dumps({"compiled": protocol.COMPILED, "times": times, "digest": digest}))


def run_child(rounds: int, src: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src  # imported before the installed (editable) headwater
    out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(rounds)], env=env, check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a headwater source tree (its src/ directory) to compare with")
    parser.add_argument("--rounds", type=int, default=300, help="streams relayed per child (default 300)")
    parser.add_argument("--turns", type=int, default=4, help="children per variant, taking turns (default 4)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.rounds)
        return
    variants = [("base", args.baseline), ("tree", None)] if args.baseline else [("tree", None)]
    load = os.getloadavg()
    print(f"bench_terminal: {args.turns} turns x {args.rounds} rounds a variant; load {load[0]:.2f} {load[1]:.2f}")
    times: dict[str, dict[str, list[int]]] = {name: {phase: [] for phase in PHASES} for name, _ in variants}
    info: dict[str, Any] = {}
    for _ in range(args.turns):
        for name, src in variants:
            result = run_child(args.rounds, src)
            info[name] = (result["compiled"], result["digest"])
            for phase in PHASES:
                times[name][phase].extend(result["times"][phase])
    for name, (compiled, _) in info.items():
        print(f"  {name}: {'compiled' if compiled else 'pure Python'}"
              + (f" ({args.baseline})" if name == "base" else f" ({Path(__file__).resolve().parent.parent})"))
    if args.baseline and info["base"][1] != info["tree"][1]:
        print("  WARNING: base and tree gave out different closing events / final output:")
        print("   base", info["base"][1])
        print("   tree", info["tree"][1])
    print(f"load after {os.getloadavg()[0]:.2f}")
    head = f"{'phase (us a stream, median)':<30}" + "".join(f"{name:>10}" for name, _ in variants)
    print(head + (f"{'tree/base':>11}" if args.baseline else ""))
    for phase in PHASES:
        medians = [statistics.median(times[name][phase]) / 1000 for name, _ in variants]
        row = f"{phase:<30}" + "".join(f"{m:>10.1f}" for m in medians)
        if args.baseline:
            row += f"{medians[1] / medians[0]:>10.2f}x"
        print(row)


if __name__ == "__main__":
    main()
