"""The inspector page end to end, in a real headless browser: Debian's Chromium (scripts/install-browser.sh)
driven by Playwright, against a real server on loopback with the scripted backend.

What the page shows is checked against the protocol core itself: the timeline's rows against the decoder, the
findings against the checker, the rendered text against what ``Accumulator`` builds at that event.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.cli import read_events
from headwater.protocol.accumulate import Accumulator
from headwater.protocol.conformance import check, split_responses
from headwater.protocol.resources import Response
from headwater.protocol.stream import encode_sse
from headwater.protocol.writer import ResponseWriter
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, GenerationRequest, TextDelta, UsageStep
from headwater.server.backends.scripted import Pause, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: scripts/install.sh installs it (as root)")
    pytest.skip(f"{CHROMIUM} is missing (run scripts/install-browser.sh as root)", allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "openai"
PHASE = CAPTURES / "openai-phase.1.jsonl"  # SEQ-STEP at event 6, texts that differ from their deltas
TWO = CAPTURES / "openai-shell-tool.1.jsonl"  # two responses back to back
REASONING = CAPTURES / "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl"  # 1406 events
KEY = "sk-browser-test"
WORDS = [f"word{i} " for i in range(24)]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


class Gates:
    """Where a "hold" request's script waits until the test opens it (after words 3 and 12): a live stream the
    test can watch part by part, whatever the machine's speed."""

    def __init__(self) -> None:
        self.at = {3: threading.Event(), 12: threading.Event()}

    def script(self, request: GenerationRequest) -> Iterator[ScriptItem]:
        hold = "hold" in repr(request.messages)
        for k, word in enumerate(WORDS):
            while hold and k in self.at and not self.at[k].is_set():
                yield Pause(0.005)
            yield TextDelta(word)
        yield UsageStep(7, len(WORDS))
        yield Finish("stop")


@pytest.fixture
def gates() -> Iterator[Gates]:
    held = Gates()
    yield held
    for event in held.at.values():  # never leave a stream waiting
        event.set()


@pytest.fixture
def server(serve: Callable[[Any], Any], gates: Gates) -> str:
    backend = ScriptedBackend(gates.script, models=["scripted"])
    config = ServerConfig.with_keys([KEY], store="memory")
    return str(serve(create_app(config, backend=backend, store=MemoryStore())).url)


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh page (its own storage) that records every URL it requests. The page's CSP forbids eval, which
    Playwright's wait_for_function uses, so the test context sets it aside; what the page fetches is checked
    here instead (and the CSP itself in test_inspect.py)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True, bypass_csp=True)
    tab = context.new_page()
    requested: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: requested.append(r.url))
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert errors == []
    elsewhere = [u for u in requested if not u.startswith((server, "data:", "blob:"))]
    assert elsewhere == [], "the page fetched from beyond its server"


def open_page(page: Page, server: str, key: str | None = KEY) -> None:
    page.goto(f"{server}/inspect/" + (f"#key={key}" if key else ""))
    if key:
        page.wait_for_selector("body[data-ready]")


def load(page: Page, path: Path) -> None:
    before = page.evaluate("document.body.dataset.session || ''")
    page.set_input_files("#file-input", str(path))
    page.wait_for_function(f"(document.body.dataset.session || '') !== '{before}'")


def events_count(page: Page) -> str:
    return page.inner_text("#row-count")


def wait_snapshot(page: Page, index: int) -> None:
    """Until the response pane shows the snapshot at ``index`` of the stream now open."""
    session = page.evaluate("document.body.dataset.session")
    page.wait_for_selector(f"#response[data-index='{index}'][data-session='{session}']")


def rendered(page: Page, selector: str) -> str:
    return "".join(page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)"))


def fold(events: list[Any]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


def summaries(response: Response) -> str:
    return "".join(part.text for item in response.output if item.type == "reasoning"
                   for part in getattr(item, "summary", []))


def test_a_capture_rows_findings_text_and_scrubber(page: Page, server: str, tmp_path: Path) -> None:
    events = read_events(str(PHASE))
    open_page(page, server)
    load(page, PHASE)
    assert events_count(page) == f"{len(events)} events"
    assert page.locator("#tl-body .row").count() == len(events)  # all fit in view
    # The findings sit on the rows the checker names.
    found = check(events)
    first = found[0]
    assert (first.index, first.rule_id) == (6, "SEQ-STEP")
    assert "error" in (page.get_attribute("#row-6", "class") or "")
    assert "error" not in (page.get_attribute("#row-5", "class") or "")
    page.click("#row-6")
    finding = page.locator("#event-findings li[data-rule='SEQ-STEP']")
    assert "sequence_number 41 follows 5" in finding.inner_text()
    assert "spec:" in finding.inner_text()  # the spec reference
    assert page.locator("#findings li[data-rule]").count() == len(found)
    # The response as the Accumulator builds it, at the end and at a middle event.
    page.keyboard.press("End")
    wait_snapshot(page, len(events) - 1)
    assert rendered(page, "#response .part-output_text") == fold(events).output_text
    middle = len(events) // 2
    page.eval_on_selector("#scrub", f"s => {{ s.value = {middle}; s.dispatchEvent(new Event('input')); }}")
    wait_snapshot(page, middle)
    partial = fold(events[: middle + 1]).output_text
    assert partial and partial != fold(events).output_text
    assert rendered(page, "#response .part-output_text") == partial
    assert "selected" in (page.get_attribute(f"#row-{middle}", "class") or "")
    assert json.loads(page.inner_text("#event-json"))["sequence_number"] == events[middle].sequence_number
    # The findings export is what `headwater check` prints.
    with page.expect_download() as download:
        page.click("#export-check")
    text = Path(download.value.path()).read_text()
    assert text.splitlines()[0] == f"{PHASE.name}:6: SEQ-STEP [error] {first.message}"
    assert text.splitlines()[-1] == f"1 file(s): {sum(v.severity == 'error' for v in found)} error(s), 0 warning(s)"
    page.screenshot(path=str(tmp_path / "inspector.png"))


def test_reasoning_capture_several_responses_and_a_cut(page: Page, server: str, tmp_path: Path) -> None:
    events = read_events(str(REASONING))
    open_page(page, server)
    load(page, REASONING)
    assert events_count(page) == f"{len(events)} events"
    middle = len(events) // 2
    page.eval_on_selector("#scrub", f"s => {{ s.value = {middle}; s.dispatchEvent(new Event('input')); }}")
    wait_snapshot(page, middle)
    partial = fold(events[: middle + 1]).response
    assert summaries(partial) and rendered(page, "#response .summary-text") == summaries(partial)
    load(page, TWO)
    groups = split_responses(read_events(str(TWO)))
    tabs = page.locator("#responses button")
    assert tabs.count() == 2
    assert events_count(page) == f"{len(groups[0])} events"
    page.keyboard.press("]")
    page.wait_for_function(f"document.querySelector('#row-count').textContent === '{len(groups[1])} events'")
    wait_snapshot(page, len(groups[1]) - 1)
    assert page.locator("#response .item").count() == len(fold(groups[1]).response.output)
    # A recording cut mid-event: the cut is shown where it stands, the events around it are kept.
    cut = tmp_path / "cut.jsonl"
    lines = PHASE.read_bytes().splitlines(keepends=True)
    cut.write_bytes(b"".join(lines[:5]) + lines[5][:40] + b"\n" + b"".join(lines[6:]))
    load(page, cut)
    assert events_count(page) == f"{len(lines) - 1} events"
    assert "line 6" in page.inner_text("#findings li.problem")


def ten_thousand(tmp_path: Path) -> Path:
    """A conformant SSE recording of one message written in 9,992 deltas (10,000 events in all)."""
    writer = ResponseWriter(Response(id="resp_big", model="big"))
    events = writer.start()
    message = writer.message()
    text = message.text()
    events += message.events + text.events
    for i in range(9_992):
        events += text.delta(f"t{i} ")
    events += text.done() + message.done() + writer.complete()
    path = tmp_path / "big.sse"
    path.write_bytes(b"".join(encode_sse(e) for e in events))
    return path


def test_ten_thousand_events_stay_fast_and_virtualised(page: Page, server: str, tmp_path: Path) -> None:
    path = ten_thousand(tmp_path)
    events = read_events(str(path))
    assert len(events) == 10_000
    open_page(page, server)
    load(page, path)
    assert events_count(page) == f"{len(events)} events"
    assert page.locator("#tl-body .row").count() < 120  # only the rows in view are in the DOM
    wait_snapshot(page, len(events) - 1)
    assert rendered(page, "#response .part-output_text") == fold(events).output_text
    page.focus("#tl-body")
    page.keyboard.press("Home")
    assert "selected" in (page.get_attribute("#row-0", "class") or "")
    for _ in range(3):
        page.keyboard.press("PageDown")
    page.keyboard.press("j")
    selected = int(page.get_attribute("#tl-body .row.selected", "data-i") or -1)
    assert 30 < selected < 200
    middle = 5_000
    page.eval_on_selector("#scrub", f"s => {{ s.value = {middle}; s.dispatchEvent(new Event('input')); }}")
    wait_snapshot(page, middle)
    assert rendered(page, "#response .part-output_text") == fold(events[: middle + 1]).output_text
    assert page.locator(f"#row-{middle}.selected").count() == 1  # scrolled to it, among a few drawn rows
    assert page.locator("#tl-body .row").count() < 120


def shown_count(page: Page) -> int:
    return int(events_count(page).split()[0])


def test_live_request_rows_arrive(page: Page, server: str, gates: Gates) -> None:
    open_page(page, server)
    page.keyboard.press("2")
    page.fill("#live-input", "hold between the words")
    page.click("#live-send")
    # The stream holds after 3 words: the rows so far are on the page while it is still going.
    page.wait_for_function("() => document.querySelector('#response .part-output_text')?.textContent"
                           f" === {json.dumps(''.join(WORDS[:3]))}")
    first = shown_count(page)
    assert not page.is_disabled("#live-stop")
    gates.at[3].set()
    page.wait_for_function("() => document.querySelector('#response .part-output_text')?.textContent"
                           f" === {json.dumps(''.join(WORDS[:12]))}")
    second = shown_count(page)
    assert first + 9 == second  # one row per word that came
    assert not page.is_disabled("#live-stop")
    gates.at[12].set()
    page.wait_for_function("() => document.querySelector('#live-stop').disabled")
    session_id = page.evaluate("document.body.dataset.session")
    headers = {"authorization": f"Bearer {KEY}"}
    detail = httpx.get(f"{server}/inspect/api/sessions/{session_id}", headers=headers).json()
    response_id = detail["responses"][0]["id"]
    served = httpx.get(f"{server}/v1/responses/{response_id}", params={"stream": "true"}, headers=headers)
    events = list(read_events_bytes(served.content))
    page.wait_for_function(f"document.querySelector('#row-count').textContent === '{len(events)} events'")
    assert second < len(events)
    wait_snapshot(page, len(events) - 1)
    assert rendered(page, "#response .part-output_text") == "".join(WORDS) == fold(events).output_text
    assert "completed" in page.inner_text("#response .status")
    assert page.locator("#tl-body .row .c-dt").nth(3).inner_text() != "\u2013"  # a live stream has times


def read_events_bytes(data: bytes) -> list[Any]:
    from headwater.protocol.stream import iter_events

    return list(iter_events([data], lenient=True))


def test_stored_response_by_id(page: Page, server: str) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    created = httpx.post(f"{server}/v1/responses", headers=headers, timeout=20,
                         json={"model": "scripted", "input": "hello", "store": True}).json()
    served = httpx.get(f"{server}/v1/responses/{created['id']}", params={"stream": "true"}, headers=headers)
    events = read_events_bytes(served.content)
    open_page(page, server)
    page.keyboard.press("3")
    page.fill("#stored-id", created["id"])
    page.press("#stored-id", "Enter")
    page.wait_for_function(f"document.querySelector('#row-count').textContent === '{len(events)} events'")
    page.wait_for_function("() => document.querySelector('#live-stop').disabled")
    wait_snapshot(page, len(events) - 1)
    assert rendered(page, "#response .part-output_text") == fold(events).output_text == "".join(WORDS)
    assert created["id"] in page.inner_text("#response .head")
    page.fill("#stored-id", "resp_nobody")
    page.press("#stored-id", "Enter")
    page.wait_for_function("document.querySelector('#message').textContent.includes('404')")


def test_without_the_api_key_the_page_gets_no_data(page: Page, server: str) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    httpx.post(f"{server}/inspect/api/sessions", params={"name": PHASE.name}, content=PHASE.read_bytes(),
               headers=headers)
    open_page(page, server, key=None)
    page.wait_for_function("document.querySelector('#message').textContent.includes('API key')")
    assert page.locator("#session option").count() == 0
    assert page.locator("#tl-body .row").count() == 0
    statuses = page.evaluate("""async () => Promise.all(
        ['api/info', 'api/sessions/s1/snapshot?index=0'].map(async u => (await fetch(u)).status))""")
    assert statuses == [401, 401]
    page.fill("#api-key", "sk-wrong")
    page.press("#api-key", "Enter")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelector('#message').textContent.includes('invalid API key')")
    assert page.locator("#session option").count() == 0
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function(f"document.querySelector('#row-count').textContent === '{len(read_events(str(PHASE)))} events'")


def test_keyboard_filters_and_finding_steps(page: Page, server: str) -> None:
    events = read_events(str(PHASE))
    rows_with_findings = sorted({min(v.index, len(events) - 1) for v in check(events)})
    open_page(page, server)
    load(page, PHASE)
    page.keyboard.press("t")
    page.keyboard.press("Home")
    assert page.get_attribute("#tl-body .row.selected", "data-i") == "0"
    page.keyboard.press("j")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("k")
    assert page.get_attribute("#tl-body .row.selected", "data-i") == "1"
    page.keyboard.press("n")
    assert page.get_attribute("#tl-body .row.selected", "data-i") == str(rows_with_findings[0])
    page.keyboard.press("n")
    assert page.get_attribute("#tl-body .row.selected", "data-i") == str(rows_with_findings[1])
    page.keyboard.press("N")
    assert page.get_attribute("#tl-body .row.selected", "data-i") == str(rows_with_findings[0])
    page.keyboard.press("f")
    assert events_count(page) == f"{len(rows_with_findings)} of {len(events)} events"
    page.keyboard.press("Escape")
    assert events_count(page) == f"{len(events)} events"
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "filter-type"
    page.select_option("#filter-type", "response.output_text.delta")
    deltas = sum(e.type == "response.output_text.delta" for e in events)
    assert events_count(page) == f"{deltas} of {len(events)} events"
    page.keyboard.press("Escape")  # leaves the select
    page.keyboard.press("Escape")  # clears the filters
    assert events_count(page) == f"{len(events)} events"
    page.keyboard.press("?")
    assert page.is_visible("#help")
    assert re.search(r"next / previous event with a finding", page.inner_text("#help"))
