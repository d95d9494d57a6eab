"""``headwater check`` and ``headwater replay`` on recorded streams: output format and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from headwater.cli import main
from headwater.protocol.stream import encode_sse, iter_events

CAPTURES = Path(__file__).parent / "fixtures/captures/openai"
TEXT = CAPTURES / "openai-issue-11239.2.jsonl"
TOOL = CAPTURES / "openai-issue-11239.1.jsonl"
FINDING = re.compile(r"^(?P<path>.+):(?P<index>\d+): (?P<rule>\S+) \[(?P<severity>error|warning)\] .+$")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_clean_recording_exits_0() -> None:
    code, out, err = run("check", str(TEXT))
    assert code == 0, out
    assert not [line for line in out.splitlines() if "[error]" in line]
    assert "0 error(s)" in err


def test_check_sse_transcript_is_auto_detected(tmp_path: Path) -> None:
    sse = tmp_path / "stream.sse"
    sse.write_bytes(b"".join(encode_sse(e) for e in iter_events([TEXT.read_bytes()])) + b"data: [DONE]\n\n")
    code, out, _ = run("check", str(sse))
    assert code == 0, out


def test_check_broken_stream_prints_path_index_rule_and_exits_1(tmp_path: Path) -> None:
    lines = [line for line in TEXT.read_bytes().splitlines() if line.strip()]
    broken = tmp_path / "broken.jsonl"
    # Drop one delta from the middle (a sequence gap) and the terminal event.
    del lines[-1]
    del lines[len(lines) // 2]
    broken.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = run("check", str(broken))
    assert code == 1
    findings = [FINDING.match(line) for line in out.splitlines()]
    assert findings and all(findings), out
    assert all(m["path"] == str(broken) for m in findings if m)
    assert any(m["severity"] == "error" for m in findings if m)
    assert "error(s)" in err


def test_check_unreadable_input_exits_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b'{"type": "response.created", \n')
    assert run("check", str(garbage))[0] == 2
    assert run("check", str(tmp_path / "missing.jsonl"))[0] == 2


def test_replay_of_a_file_without_events_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sse"
    empty.write_bytes(b": keep-alive\n\ndata: [DONE]\n\n")
    code, _, err = run("replay", str(empty))
    assert code == 2 and "no events" in err


def test_check_split_treats_concatenated_responses_separately() -> None:
    path = CAPTURES / "openai-reasoning-encrypted-content.1.jsonl"  # 4 responses back to back
    code_joined, _, _ = run("check", "--no-split", str(path))
    code_split, out, _ = run("check", "--split", str(path))
    assert code_joined == 1
    assert code_split == 0, out


def test_check_says_when_a_recording_holds_several_responses_and_takes_each_on_its_own() -> None:
    path = CAPTURES / "openai-reasoning-encrypted-content.1.jsonl"  # 4 responses back to back
    code, out, err = run("check", str(path))
    assert code == 0, out
    assert "4 responses back to back" in err and "--no-split" in err


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def test_check_of_a_recording_cut_mid_line_reports_the_line_and_checks_what_came_before(tmp_path: Path) -> None:
    lines = _lines(TEXT)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"\n".join(lines[:5]) + b"\n" + lines[5][: len(lines[5]) // 2])
    code, out, err = run("check", str(cut))
    assert code == 1
    offset = len(b"\n".join(lines[:5])) + 1
    assert f"{cut}: line 6 (byte {offset}): event 5: payload is not valid JSON" in err
    assert "cut here" in err
    # The five whole events were checked: the stream ends without its terminal event after them.
    assert f"{cut}:5: END-TERMINAL [error]" in out
    assert "1 error(s)" not in err  # the cut payload and END-TERMINAL: two errors
    assert "2 error(s)" in err


def test_check_of_an_sse_transcript_cut_inside_an_event_reports_it_and_checks_the_rest(tmp_path: Path) -> None:
    events = list(iter_events([TEXT.read_bytes()]))
    whole = b"".join(encode_sse(e) for e in events[:6])
    cut = tmp_path / "cut.sse"
    last = encode_sse(events[6])
    cut.write_bytes(whole + last[: len(last) // 2])
    code, out, err = run("check", str(cut))
    assert code == 1
    line = whole.count(b"\n") + 1
    assert f"line {line} (byte {len(whole)}): the recording ends inside an event" in err
    assert f"{cut}:6: END-TERMINAL [error]" in out


def test_an_sse_transcript_that_lost_only_its_final_blank_line_keeps_its_last_event(tmp_path: Path) -> None:
    sse = b"".join(encode_sse(e) for e in iter_events([TEXT.read_bytes()]))
    path = tmp_path / "no-final-newline.sse"
    path.write_bytes(sse.rstrip(b"\n"))
    code, out, err = run("check", str(path))
    assert code == 0, out  # a warning only: the terminal event was read
    assert "no blank line after it" in err
    assert "0 error(s), 1 warning(s)" in err


def test_check_groups_a_finding_that_recurs_and_prints_each_with_all(tmp_path: Path) -> None:
    lines = _lines(TEXT)
    unknown = [json.dumps({"type": "x.custom", "sequence_number": n}).encode() for n in range(64)]
    # 64 unknown events between created and the rest, renumbered so that only TYPE-UNKNOWN recurs.
    body = [lines[0], *unknown, *lines[1:]]
    renumbered = []
    for n, line in enumerate(body):
        obj = json.loads(line)
        obj["sequence_number"] = n
        renumbered.append(json.dumps(obj).encode())
    path = tmp_path / "repeats.jsonl"
    path.write_bytes(b"\n".join(renumbered) + b"\n")
    code, out, err = run("check", str(path))
    assert code == 0  # TYPE-UNKNOWN is a warning: an unknown type is allowed, and skipped
    unknown_lines = [line for line in out.splitlines() if "TYPE-UNKNOWN" in line]
    assert len(unknown_lines) == 2, out
    assert FINDING.match(unknown_lines[0])
    assert unknown_lines[1] == f"{path}:1: TYPE-UNKNOWN: 63 more like it, at events 2, 3, 4, 5, 6, 7, 8, 9, ..."
    assert "0 error(s), 64 warning(s)" in err  # the summary counts every one
    _, out_all, _ = run("check", "--all", str(path))
    assert len([line for line in out_all.splitlines() if "TYPE-UNKNOWN" in line]) == 64


def test_check_after_n_takes_a_resumed_stream_as_it_is(tmp_path: Path) -> None:
    lines = _lines(TEXT)
    start = len(lines) // 2
    after = json.loads(lines[start - 1])["sequence_number"]
    tail = tmp_path / "resumed.jsonl"
    tail.write_bytes(b"\n".join(lines[start:]) + b"\n")
    code, out, _ = run("check", str(tail))
    assert code == 1 and "START-CREATED" in out and "SEQ-START" in out
    code, out, _ = run("check", "--after", str(after), str(tail))
    assert code == 0, out
    # A resumed stream must still begin right after N.
    code, out, _ = run("check", "--after", str(after - 1), str(tail))
    assert code == 1 and f"not {after} (the stream resumes after {after - 1})" in out


def test_replay_exits_1_for_a_stream_with_no_terminal_event_or_no_responses_stream(tmp_path: Path) -> None:
    hello = tmp_path / "hello.jsonl"
    hello.write_bytes(b'{"hello": "world"}\n')
    code, out, _ = run("replay", str(hello))
    assert code == 1 and "no terminal event" in out
    lines = _lines(TEXT)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    code, out, _ = run("replay", str(cut))
    assert code == 1 and "no terminal event" in out


def test_replay_split_renders_and_summarises_each_response() -> None:
    path = CAPTURES / "openai-reasoning-encrypted-content.1.jsonl"  # 4 responses back to back
    code, out, _ = run("replay", str(path))
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("== response")]
    assert [re.sub(r": resp_\w+ ==$", "", line) for line in headers] == [f"== response {n} of 4" for n in (1, 2, 3, 4)]
    assert len([line for line in out.splitlines() if line.startswith("-- completed")]) == 4
    code, out, _ = run("replay", "--json", str(path))
    responses = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(responses) == 4 and {r["status"] for r in responses} == {"completed"}
    code, out, _ = run("replay", "--no-split", "--json", str(path))
    assert len(out.splitlines()) == 1


def test_replay_groups_the_accumulators_problems(tmp_path: Path) -> None:
    lines = _lines(TEXT)
    path = tmp_path / "duplicates.jsonl"
    path.write_bytes(b"\n".join([*lines[:3], *[lines[2]] * 40, *lines[3:]]) + b"\n")
    code, _, err = run("replay", str(path))
    assert code == 0
    problems = [line for line in err.splitlines() if "problem:" in line]
    assert len(problems) == 1 and "(and 39 more duplicate-event)" in problems[0], err


def test_replay_puts_each_reasoning_summary_part_in_a_paragraph_of_its_own() -> None:
    path = CAPTURES / "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl"
    code, out, _ = run("replay", str(path))
    assert code == 0
    assert "purposes.\n\n**Anonymized summary 1**" in out
    assert "purposes.**Anonymized" not in out


def test_replay_json_prints_the_accumulated_response() -> None:
    code, out, _ = run("replay", "--json", str(TOOL))
    assert code == 0
    response = json.loads(out)
    last = json.loads(TOOL.read_bytes().splitlines()[-1])
    assert response["status"] == last["response"]["status"]
    assert [i["type"] for i in response["output"]] == [i["type"] for i in last["response"]["output"]]
    calls = [i for i in response["output"] if i["type"] == "function_call"]
    expected = [i for i in last["response"]["output"] if i["type"] == "function_call"]
    assert [c["arguments"] for c in calls] == [c["arguments"] for c in expected]


def test_replay_renders_text_and_a_closing_status_line() -> None:
    code, out, _ = run("replay", str(TEXT))
    assert code == 0
    deltas = [
        json.loads(line)["delta"]
        for line in TEXT.read_bytes().splitlines()
        if b'"response.output_text.delta"' in line
    ]
    assert "".join(deltas) in out
    assert out.rstrip().splitlines()[-1].startswith("-- completed")


def test_installed_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "headwater", "check", "-q", str(TEXT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
