"""The page of ``nodehost serve`` in a real headless Chromium (Debian's ``chromium``, driven
by Playwright) whose microphone is a WAV file: it must show what was heard and play the
spoken reply it received."""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_support import (
    MANIFESTS,
    ServeProcess,
    assert_nothing_left,
    gain_config,
    stop_cleanly,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI installs both (.ci/run, tox.ini): there a missing one fails the test instead of skipping it
if not os.environ.get("CI"):
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="needs Debian's chromium (apt-get install chromium)")
from playwright import sync_api as playwright  # noqa: E402

PAGE_TIMEOUT_MS = 240_000  # anti-hang only: models load, then one utterance is answered


def launch(pw: Any, profile: Path, *extra: str) -> Any:
    """Headless Chromium with a fake microphone (a WAV with --use-file-for-fake-audio-capture
    in ``extra``, else Chromium's beep) and a new empty profile; no background networking."""
    return pw.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", *extra])


def fake_microphone(path: Path, rate: int = 48000) -> Path:
    """The sample utterance, then 6 s of silence (Chromium loops the file), at 48 kHz."""
    import soxr

    with wave.open(str(MANIFESTS / "data" / "hello.wav")) as wav:
        speech = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32)
        speech = soxr.resample(speech / 32768, wav.getframerate(), rate)
    audio = np.concatenate([np.zeros(rate // 2, np.float32), speech,
                            np.zeros(rate * 6, np.float32)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_page_hears_the_microphone_and_plays_the_reply(tmp_path: Path) -> None:
    mic = fake_microphone(tmp_path / "mic.wav")
    server = ServeProcess(MANIFESTS / "voice_chat.yaml", log_dir=tmp_path)
    errors: list[str] = []
    try:
        with playwright.sync_playwright() as pw:
            context = launch(pw, tmp_path / "profile",
                             f"--use-file-for-fake-audio-capture={mic}",
                             "--autoplay-policy=no-user-gesture-required")
            try:
                page = context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url + "?autostart=1")
                page.wait_for_function(
                    """() => {
                        const heard = document.getElementById("out-transcript");
                        // a whole utterance: the first loop of the file may have begun
                        // before the session was Ready (the page sends nothing until then)
                        return heard && /quick brown fox/i.test(heard.textContent)
                            && window.nodehost.counters.audioSeconds > 1.5;
                    }""", timeout=PAGE_TIMEOUT_MS)
                heard = page.inner_text("#out-transcript").lower()
                said = page.inner_text("#out-reply_text")
                chunks = int(page.inner_text("#audio-chunks"))
                seconds = float(page.inner_text("#audio-seconds"))
                sent = page.evaluate("window.nodehost.counters.sentSeconds")
                session = page.evaluate("window.nodehost.session")
                nodes = page.eval_on_selector_all(
                    "#nodes tbody tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                       "r.cells[2].textContent])")
            finally:
                context.close()
        assert not errors, errors
        assert {"quick", "brown", "fox"} <= set(heard.replace(".", " ").split()), heard
        assert said.startswith("You said:"), said
        assert chunks >= 2 and seconds > 1.5, (chunks, seconds)  # "You said: ..." in full
        assert sent > 3.0  # the microphone streamed at least the utterance
        assert {node for node, _ in nodes} == {"resample", "vad", "utterances", "asr",
                                               "reply", "tts"}, nodes
        assert all(state in ("Ready", "Processing") for _, state in nodes), nodes
        assert_nothing_left({session})  # the browser left: its session is torn down
    finally:
        stop_cleanly(server)


def test_autostart_without_autoplay_permission_asks_for_a_click(tmp_path: Path) -> None:
    """A browser that plays and records audio only after a user gesture (Chromium's default
    autoplay policy) never settles AudioContext.resume(): the page must say what to do and
    offer Start, not hang on "Starting the microphone…"."""
    server = ServeProcess(gain_config(tmp_path / "echo.json"), log_dir=tmp_path)
    try:
        with playwright.sync_playwright() as pw:
            context = launch(pw, tmp_path / "profile")
            try:
                page = context.new_page()
                page.goto(server.url + "?autostart=1")
                page.wait_for_function("() => document.body.dataset.state === 'idle'"
                                       " && /click/.test(document.getElementById('state')"
                                       ".textContent)", timeout=60_000)
                start_enabled = page.is_enabled("#start")
            finally:
                context.close()
        assert start_enabled
    finally:
        stop_cleanly(server)
