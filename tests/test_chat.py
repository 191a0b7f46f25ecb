"""deploy/chat.py: the chat page's pieces, and the page itself in a real headless Chromium.

The browser test starts `make chat` on the tiny model exactly as a user would, types a
Vietnamese question in Debian's Chromium (driven by selenium) and checks that the reply streams
in and renders as the model wrote it. `.ci/run` installs `chromium` and `chromium-driver`; on a
machine without them the test is skipped, except under CI where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unicodedata
import urllib.request
from pathlib import Path

import pytest

from deploy.chat import Sampling, answer_summary, build_messages, message_text
from tests.conftest import child_env

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Lan có 12 quả táo, Lan mua thêm 7 quả. Hỏi Lan có tất cả bao nhiêu quả táo?"


@pytest.mark.parametrize("content, text", [
    ("Xin chào", "Xin chào"),
    ([{"type": "text", "text": "Xin "}, {"type": "text", "text": "chào"}], "Xin chào"),
    ({"text": "chào"}, "chào"),
    ({"path": "image.png"}, ""),  # files are not text the model can read
])
def test_message_text(content, text):
    assert message_text(content) == text


@pytest.mark.parametrize("system, history, expected_roles", [
    ("Giải toán.", [], ["system", "user"]),
    ("", [], ["user"]),  # empty system prompt: none sent, as in a run trained with system_prompt: ""
    ("  ", [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"}]}],
     ["user", "assistant", "user"]),
    ("S", [{"role": "system", "content": "old"}, {"role": "user", "content": "a"}], ["system", "user", "user"]),
])
def test_build_messages(system, history, expected_roles):
    messages = build_messages(system, history, "câu hỏi")
    assert [m["role"] for m in messages] == expected_roles
    assert messages[-1] == {"role": "user", "content": "câu hỏi"}
    assert all(isinstance(m["content"], str) for m in messages)


@pytest.mark.parametrize("reply, shown", [
    ("12 + 7 = 19\n#### 19", "19   (dòng #### đúng định dạng"),
    ("Lan có 12 + 7 = 19 quả táo.", "19   (không có dòng ####"),
    ("Đáp số: 1.250.000 đồng", "1250000   (không có dòng ####"),
    ("Xin chào!", "— (không có số nào"),
])
def test_answer_summary_uses_the_training_checker(reply, shown):
    assert answer_summary(reply).startswith(shown)


# ------------------------------------------------------------------------------ the real page
def find_browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_chat(model: str, port: int, extra: str, log: Path) -> subprocess.Popen:
    env = child_env({"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    cmd = ["make", "--no-print-directory", "chat", f"MODEL={model}", f"ARGS=--port {port} {extra}"]
    # Its own process group, so that stopping it stops make's python child too.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_page(proc: subprocess.Popen, port: int, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"make chat exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the chat page did not come up in {timeout} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops it; the process group we started, by its id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("make chat did not stop within 30 s of Ctrl-C") from None
    return proc.returncode


def open_browser(paths: tuple[str, str]):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = paths[0]
    # As root, in a closed network: no sandbox, and none of Chromium's own calls home.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tempfile.mkdtemp(prefix='virl-chromium-')}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


# Records every text the newest bot message shows, as the page changes it.
OBSERVER = """
window.__replies = [];
new MutationObserver(() => {
  const bots = document.querySelectorAll("#chatbot [data-testid='bot']");
  if (bots.length) {
    const text = bots[bots.length - 1].innerText;
    const seen = window.__replies;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def chat_in_browser(paths, port: int, question: str, screenshot: Path, timeout: float = 240) -> dict:
    """Type `question`, wait for the reply to finish; returns what the page showed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = open_browser(paths)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        deadline = time.time() + 60
        while not driver.find_elements(By.CSS_SELECTOR, "#chat-input textarea"):
            assert time.time() < deadline, "the chat input never appeared"
            time.sleep(0.2)
        driver.execute_script(OBSERVER)
        box = driver.find_element(By.CSS_SELECTOR, "#chat-input textarea")
        box.send_keys(question)
        box.send_keys(Keys.ENTER)
        answer_box = driver.find_element(By.CSS_SELECTOR, "#extracted-answer textarea")
        deadline = time.time() + timeout
        while answer_box.get_attribute("value") in ("", "…"):
            assert time.time() < deadline, f"no finished reply within {timeout} s"
            time.sleep(0.1)
        time.sleep(0.5)  # the last chunk and the answer arrive together; let the page settle
        users = driver.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user']")
        bots = driver.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']")
        driver.save_screenshot(str(screenshot))
        return {
            "user": users[-1].text if users else "",
            "reply": bots[-1].text if bots else "",
            "snapshots": driver.execute_script("return window.__replies"),
            "answer": answer_box.get_attribute("value"),
        }
    finally:
        driver.quit()


def squash(text: str) -> str:
    """Compare texts as the page lays them out: NFC, runs of whitespace as one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def expected_reply(model_dir: Path, sampling: Sampling) -> str:
    """The reply the page must show: the same streaming code on the same model, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deploy.chat import stream_hf

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    *_, reply = stream_hf(model, tokenizer, build_messages("", [], QUESTION), sampling)
    return reply


def browser() -> tuple[str, str]:
    """Chromium and its driver; in CI (.ci/run installs them and sets CI) their absence fails the
    test, on a developer's machine it skips it with the command that installs them."""
    paths = find_browser()
    if paths is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run should have installed them")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    return paths


def test_chat_page_streams_a_vietnamese_reply(tiny_models, tmp_path):
    paths = browser()
    port, log = free_port(), tmp_path / "chat.log"
    # The tiny random model's greedy reply is blank lines; a seeded sample is Vietnamese syllables,
    # and the same seed gives the same reply here and in the server.
    sampling = Sampling(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=48, seed=0)
    extra = ("--backend hf --dtype float32 --system_prompt '' --do_sample true --temperature 1.0 "
             "--top_p 1.0 --max_new_tokens 48 --seed 0")
    proc = start_chat(str(tiny_models / "qwen2"), port, extra, log)
    try:
        wait_for_page(proc, port, log)
        shown = chat_in_browser(paths, port, QUESTION, tmp_path / "chat.png")
    finally:
        code = stop(proc)
    want = expected_reply(tiny_models / "qwen2", sampling)

    assert squash(shown["user"]) == squash(QUESTION)  # typed diacritics arrive and render intact
    assert squash(shown["reply"]) == squash(want)
    assert any(ch in squash(want) for ch in "ăâđêôơưáàảãạếềểễệốồổỗộớờởỡợ"), "no diacritics to check"
    # Streamed: the page showed growing prefixes of the reply before the whole of it.
    partial = [s for s in shown["snapshots"] if squash(s) and squash(s) != squash(want)]
    assert len(partial) >= 2 and all(squash(want).startswith(squash(s)) for s in partial), shown["snapshots"]
    assert shown["answer"] == answer_summary(want)
    assert (tmp_path / "chat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert code in (0, 2, 130, -signal.SIGINT), f"make chat ended with {code}:\n{log.read_text()[-2000:]}"


@pytest.mark.slow
def test_chat_page_embedded_model(tmp_path):
    """The README's screenshot: a real model (VIRL_CHAT_MODEL, default the embedded one) answering.

    VIRL_CHAT_SCREENSHOT=docs/img/chat.png keeps the picture.
    """
    paths = browser()
    model = os.environ.get("VIRL_CHAT_MODEL", "")
    port, log = free_port(), tmp_path / "chat.log"
    proc = start_chat(model, port, "--backend hf --max_new_tokens 96", log) if model else \
        subprocess.Popen(["make", "--no-print-directory", "chat", f"ARGS=--port {port} --backend hf --max_new_tokens 96"],
                         cwd=ROOT, env=child_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        wait_for_page(proc, port, log, timeout=600)
        shown = chat_in_browser(paths, port, QUESTION, tmp_path / "chat.png", timeout=600)
    finally:
        stop(proc)
    assert squash(shown["user"]) == squash(QUESTION)
    assert shown["reply"].strip() and len(shown["snapshots"]) >= 2
    target = os.environ.get("VIRL_CHAT_SCREENSHOT")
    if target:
        shutil.copy(tmp_path / "chat.png", ROOT / target)
