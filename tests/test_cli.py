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
    code_joined, _, _ = run("check", str(path))
    code_split, out, _ = run("check", "--split", str(path))
    assert code_joined == 1
    assert code_split == 0, out


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
