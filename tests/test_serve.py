"""``nodehost serve`` with real clients: the reference client against the offline voice
pipeline, the warm pool, and the security rules (loopback by default, tokens, the page's
files only)."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import websockets
from serve_support import (
    MANIFESTS,
    ServeProcess,
    assert_nothing_left,
    audio_frames,
    close_input,
    gain_config,
    run_client,
    stop_cleanly,
    talk,
)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(gain_config(tmp_path / "echo.json"), "--token", "s3cret",
                          log_dir=tmp_path)
    yield server
    stop_cleanly(server)


def health(server: ServeProcess) -> dict[str, int]:
    with urllib.request.urlopen(server.url + "health", timeout=30) as response:
        data: dict[str, int] = json.load(response)
    return data


def wait_warm(server: ServeProcess, timeout: float = 120.0) -> None:
    """Until the pool holds a Ready idle session (the server's state: polled, no event)."""
    deadline = time.monotonic() + timeout
    while health(server)["idle_ready"] < 1:
        assert time.monotonic() < deadline, f"no warm session after {timeout} s"
        time.sleep(0.1)


# ------------------------------------------------------------------------------ the voice pipeline

def test_reference_client_gets_the_spoken_reply(tmp_path: Path) -> None:
    server = ServeProcess(MANIFESTS / "voice_chat.yaml", log_dir=tmp_path)
    try:
        out = tmp_path / "reply.wav"
        code, lines, stderr = run_client(server.ws_url, "--wav",
                                         str(MANIFESTS / "data" / "hello.wav"), "--out", str(out))
        assert code == 0, stderr + server.stderr()
        heard = " ".join(line["text"] for line in lines
                         if line["event"] == "output" and line["output"] == "transcript").lower()
        assert {"quick", "brown", "fox", "library"} <= set(heard.replace(".", "").split()), heard
        said = [line["text"] for line in lines
                if line["event"] == "output" and line["output"] == "reply_text"]
        assert said and said[0].startswith("You said:"), said
        reply = [line for line in lines if line["event"] == "output" and line["output"] == "reply"]
        assert reply and all(line["sample_rate"] == 22050 for line in reply)
        with wave.open(str(out)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        assert seconds == pytest.approx(sum(line["frames"] for line in reply) / 22050)
        assert seconds > 1.0  # "You said: the quick brown fox ..." is seconds of speech
        end = lines[-2] if lines[-1]["event"] == "wrote" else lines[-1]
        assert end["event"] == "session_end" and end["ok"], end
        sessions = {line["session"] for line in lines if line.get("session")}
        assert len(sessions) == 1
        assert_nothing_left(sessions)
    finally:
        stop_cleanly(server)


# ------------------------------------------------------------------------------ warm pool

def node_processes(pid: int) -> list[psutil.Process]:
    """The node processes of a host process: exec'd ones are its children, forked ones the
    children of its zygote (``python -m nodehost.zygote``)."""
    out = []
    for child in psutil.Process(pid).children():
        zygote = "nodehost.zygote" in child.cmdline()
        out += child.children() if zygote else [child]
    return out


def test_warm_pool_hands_out_a_ready_session_and_refills(tmp_path: Path) -> None:
    server = ServeProcess(gain_config(tmp_path / "echo.json"), "--warm", "1",
                          "--max-sessions", "3", log_dir=tmp_path)
    try:
        wait_warm(server)  # the pool fills at start
        # an idle warm session loads and waits at a lower CPU priority
        idle = node_processes(server.proc.pid)
        assert idle and all(p.nice() == 10 for p in idle), [(p.pid, p.nice()) for p in idle]
        signal_ = np.arange(3200, dtype=np.float32) / 3200
        lent_nice: list[int] = []
        first = asyncio.run(talk(
            server.ws_url, [*audio_frames("in", signal_), close_input("in")],
            on_ready=lambda _: lent_nice.extend(p.nice() for p in idle)))
        assert lent_nice == [0] * len(idle)  # once lent, back to normal priority
        ready = first.first("ready")
        assert ready["warm"] is True
        # the warm session's nodes were Ready before the client came: it saw no start-up
        statuses = [e["status"] for e in first.events if e["event"] == "status"]
        assert "Initializing" not in statuses and "Idle" not in statuses, statuses
        assert np.array_equal(first.audio("out"), signal_ * 2)
        assert first.kinds()[-1] == "session_end" and first.events[-1]["ok"]
        # the pool refilled in the background, with a new session
        wait_warm(server)
        second = asyncio.run(talk(server.ws_url, [close_input("in")]))
        assert second.first("ready")["warm"] is True
        assert second.session_ids.isdisjoint(first.session_ids)
        assert_nothing_left(first.session_ids | second.session_ids)
    finally:
        stop_cleanly(server)


# ------------------------------------------------------------------------------ security

def test_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    config = gain_config(tmp_path / "echo.json")
    done = subprocess.run([sys.executable, "-m", "nodehost.cli", "serve", str(config),
                           "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--token" in done.stderr and "0.0.0.0" in done.stderr, done.stderr


def test_binds_loopback_by_default_and_checks_the_token(echo: ServeProcess) -> None:
    listening = {c.laddr.ip for c in psutil.Process(echo.proc.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(talk(echo.ws_url, headers=headers))
        assert refused.value.response.status_code == 401
    code, _lines, stderr = run_client(echo.ws_url + "?token=nope", "--wav",
                                      str(MANIFESTS / "data" / "hello.wav"))
    assert code == 3 and "401" in stderr and "token" in stderr, stderr
    assert get(echo, "/health")[0] == 401  # what runs here is behind the token too
    assert get(echo, "/health?token=s3cret")[0] == 200

    signal_ = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    frames = [*audio_frames("in", signal_), close_input("in")]
    by_header = asyncio.run(talk(echo.ws_url, frames,
                                 headers={"Authorization": "Bearer s3cret"}))
    by_query = asyncio.run(talk(echo.ws_url + "?token=s3cret", frames))
    for outcome in (by_header, by_query):
        assert np.array_equal(outcome.audio("out"), signal_ * 2)
        assert outcome.events[-1]["event"] == "session_end" and outcome.events[-1]["ok"]
    assert_nothing_left(by_header.session_ids | by_query.session_ids)


def get(server: ServeProcess, raw_path: str) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serves_the_page_and_only_its_own_files(echo: ServeProcess) -> None:
    status, body = get(echo, "/")
    assert status == 200 and b'src="/static/app.js"' in body
    for name in ("app.js", "wire.js", "capture-worklet.js", "style.css"):
        assert get(echo, f"/static/{name}")[0] == 200
    for path in ("/static/../serve.py", "/static/%2e%2e/serve.py", "/static/..%2fserve.py",
                 "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "/static//etc/passwd",
                 "/../../etc/passwd", "/static/web/../../cli.py"):
        status, body = get(echo, path)
        assert status in (400, 404), (path, status)
        assert b"import" not in body and b"root:" not in body
