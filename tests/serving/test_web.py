"""The web chat page in a real browser: Debian's Chromium driven by Playwright against `modelport serve`.

The server is a real subprocess on a free loopback port serving the real SmolLM2-135M-Instruct GGUF (one slot), the
browser is `/usr/bin/chromium` (never one a tool downloads), launched once for the module. What a user sees is read
from the page: the model's name, the answer growing as tokens stream in (recorded inside the page by a
MutationObserver, so the observations do not depend on how fast this process polls), the tokens/s line, Stop
ending an answer mid-stream and the server's slot coming free, a phone-sized window without horizontal scrolling,
the API-key prompt when the server wants one, and "server busy, retrying" on a 503 until the slot frees. Every
answer is bounded by max_tokens.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from modelport.samples import smollm2_gguf
from tests.serving.conftest import Served, start_server

CHROMIUM = "/usr/bin/chromium"
KEY = "web-test-key"
FRANCE = "What is the capital of France? Answer in one sentence."
pytestmark = pytest.mark.slow


def health(server: Served) -> dict:
    return httpx.get(server.url + "/health", timeout=5).json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(smollm2_gguf(), "--ctx", "2048", "--parallel", "1", log=tmp_path_factory.mktemp("web") / "serve.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page (own storage) whose console errors fail the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    context.set_default_timeout(300_000)           # a bound for a machine shared with other work, not a measurement
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The browser logs every 4xx/5xx response as an error: the 401 and 503 the page handles are expected.
    page.on("console", lambda msg: msg.type == "error" and not re.search(r"status of (401|503)", msg.text)
            and errors.append(msg.text))
    yield page
    context.close()
    assert not errors, errors


# A MutationObserver records the answer's text length at each change, inside the page.
WATCH = """() => {
  window.lengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.msg.assistant .text');
    const last = answers[answers.length - 1];
    if (last) window.lengths.push(last.textContent.length);
  }).observe(document.getElementById('conversation'), {subtree: true, characterData: true, childList: true});
}"""


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.getElementById('model-name').textContent !== 'loading…'")


def settings(page, temperature: float, max_tokens: int, system: str = "") -> None:
    if not page.is_visible("#max-tokens"):
        page.click("#settings summary")
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#system-prompt", system)


def ask(page, question: str) -> None:
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")


def last_answer(page) -> str:
    return page.locator(".msg.assistant .text").last.text_content()


def wait_answered(page, timeout_ms: int = 300_000) -> str:
    """The finish reason of the last answer, once the page has marked it done."""
    box = page.locator(".msg.assistant").last
    page.wait_for_function("() => { const a = document.querySelectorAll('.msg.assistant');"
                           " return a.length && a[a.length - 1].dataset.finish; }", timeout=timeout_ms)
    return box.get_attribute("data-finish")


def test_streamed_answer_with_model_name_and_speed(page, server, tmp_path):
    open_page(page, server.url + "/")
    assert page.text_content("#model-name") == smollm2_gguf().stem
    page.evaluate(WATCH)
    settings(page, temperature=0, max_tokens=48, system="You are a helpful assistant.")
    ask(page, FRANCE)
    assert page.locator(".msg.user .text").last.text_content() == FRANCE
    assert page.input_value("#prompt") == ""
    finish = wait_answered(page)
    answer = last_answer(page)
    assert finish in ("stop", "length") and answer.strip()
    assert "Paris" in answer
    grown = [n for n in page.evaluate("window.lengths") if n]
    assert len(set(grown)) >= 2 and grown == sorted(grown) and grown[-1] == len(answer), grown
    stats = page.locator(".msg.assistant .stats").last.text_content()
    match = re.match(r"(\d+) tokens · ([\d.]+) tok/s · first token (\d+) ms", stats)
    assert match and int(match[1]) >= 2 and float(match[2]) > 0, stats
    assert page.is_enabled("#send") and page.is_disabled("#stop")

    # The next question carries the conversation; "New chat" forgets it.
    ask(page, "And of Italy?")
    wait_answered(page)
    assert page.locator(".msg.assistant").count() == 2
    shot = tmp_path / "web-chat.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.is_visible("#empty-hint")


def test_stop_mid_stream_frees_the_slot(page, server):
    open_page(page, server.url + "/")
    settings(page, temperature=0, max_tokens=1500)
    ask(page, "Write a very long story about a dragon who learns to cook, with many chapters.")
    page.wait_for_function("() => { const a = document.querySelectorAll('.msg.assistant .text');"
                           " return a.length && a[a.length - 1].textContent.length > 40; }")
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    page.click("#stop")
    assert wait_answered(page, 10_000) == "stopped"
    assert page.text_content("#status") == "Stopped."
    stopped = last_answer(page)
    assert len(stopped) > 40
    assert re.search(r"\d+ tokens · .* · stopped$", page.locator(".msg.assistant .stats").last.text_content())

    # The server ended the generation: its slot comes free (bounded wait), and the page did not grow any more.
    for _ in range(100):
        load = health(server)
        if load["running"] == 0 and load["waiting"] == 0:
            break
        time.sleep(0.1)
    assert (load["running"], load["waiting"]) == (0, 0), load
    assert last_answer(page) == stopped
    # The access log's line for that request counts far fewer tokens than max_tokens.
    lines = [ln for ln in server.log_text().splitlines() if "POST /v1/chat/completions" in ln]
    tokens = int(re.search(r"(\d+) tokens", lines[-1])[1])
    assert 0 < tokens < 1500, lines[-1]

    # Escape stops too; then the next question is answered by the freed slot.
    ask(page, "Now write an even longer story about a cat who becomes a pilot.")
    page.wait_for_function("() => { const a = document.querySelectorAll('.msg.assistant .text');"
                           " return a.length === 2 && a[1].textContent.length > 20; }")
    page.keyboard.press("Escape")
    assert wait_answered(page, 10_000) == "stopped"
    settings(page, temperature=0, max_tokens=8)
    ask(page, "Say hello.")
    assert wait_answered(page) in ("stop", "length") and last_answer(page).strip()


def test_phone_window_has_no_horizontal_scroll(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2, color_scheme="dark")
    context.set_default_timeout(300_000)
    page = context.new_page()
    try:
        open_page(page, server.url + "/")
        settings(page, temperature=0, max_tokens=24)
        ask(page, "Repeat this word: " + "supercalifragilistic" * 6)
        wait_answered(page)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
                               " document.body.scrollWidth]")
        assert widths[0] <= widths[1] and widths[2] <= widths[1], widths
        for selector in ("#prompt", "#send", "#stop", "#new-chat"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
        shot = tmp_path / "web-chat-phone.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
    finally:
        context.close()


def test_api_key_prompt_and_busy_retry(page, tmp_path):
    """A server with an API key and no queue: the page asks for the key (again when refused), keeps it, sends it as
    Bearer; while another client holds the only slot, the page shows the 503 and retries after Retry-After."""
    s = start_server(smollm2_gguf(), "--ctx", "2048", "--api-key", KEY, "--parallel", "1", "--queue", "0",
                     log=tmp_path / "serve.log")
    name = smollm2_gguf().stem
    try:
        page.goto(s.url + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#api-key", "wrong")
        page.press("#api-key", "Enter")
        page.wait_for_function("document.getElementById('status').textContent.includes('refused')")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.wait_for_function(f"document.getElementById('model-name').textContent === {name!r}")
        assert page.evaluate("localStorage.getItem('modelport.apiKey')") == KEY
        settings(page, temperature=0, max_tokens=16)
        page.reload()                                           # remembered: no prompt this time
        page.wait_for_function(f"document.getElementById('model-name').textContent === {name!r}")
        assert page.is_hidden("#key-form")

        body = {"model": name, "messages": [{"role": "user", "content": "Write a very long story."}],
                "max_tokens": 1500, "temperature": 0, "stream": True}
        with httpx.Client(timeout=60) as client, client.stream(
                "POST", s.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as held:
            assert held.status_code == 200
            next(held.iter_lines())                             # admitted: the only slot is taken
            ask(page, "Say hello.")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('server busy, retrying in')")
        # The other client has gone: its slot frees and the page's retry is answered.
        assert wait_answered(page) in ("stop", "length") and last_answer(page).strip()
        assert page.text_content("#status") == ""
    finally:
        s.stop()
