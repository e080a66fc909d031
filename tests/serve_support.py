"""Helpers of the ``nodehost serve`` tests: a real server in a subprocess on a free loopback
port, a WebSocket client speaking the protocol, and leftovers counted by session id."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import websockets
from reliability.support import (
    DEATH_TIMEOUT_S,
    leaked_shm,
    node_records,
    poll_until_empty,
    service_records,
    shm_files,
    wait_no_session_processes,
)

from nodehost import serve_protocol as proto
from nodehost.data import RuntimeData

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
BANNER = re.compile(r"nodehost serve: \S+ on (http://\S+/)")
START_TIMEOUT_S = 60.0
SESSION_TIMEOUT_S = 240.0  # anti-hang only


def gain_config(path: Path, gain: float = 2.0) -> Path:
    """The lightest pipeline with a session input and output: one Gain node."""
    path.write_text(json.dumps({
        "name": "echo", "init_timeout_s": 120,
        "inputs": {"in": "gain.in"}, "outputs": {"out": "gain.out"},
        "nodes": [{"id": "gain", "type": "Gain", "params": {"gain": gain}}],
    }))
    return path


class ServeProcess:
    """``nodehost serve CONFIG --port 0 ARGS`` until ``stop()``; ``url`` is its page."""

    def __init__(self, config: Path, *args: str, log_dir: Path) -> None:
        self.shm_before = shm_files()
        self.stderr_path = log_dir / "serve.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodehost.cli", "serve", str(config), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.lines: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                match = BANNER.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()
            found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not found.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise AssertionError(f"nodehost serve did not start:\n{self.stderr()}")
        self.ws_url = "ws" + self.url[4:] + "ws"

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code. uvicorn re-raises the
        signal once it has shut down gracefully, so a clean stop is -SIGTERM."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(10)
        self._stderr.close()
        return code


@dataclass
class Outcome:
    """What one protocol client saw."""

    events: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, list[RuntimeData]] = field(default_factory=dict)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def session_ids(self) -> set[str]:
        return {e["session"] for e in self.events if e.get("session")}

    def first(self, kind: str) -> dict[str, Any]:
        return next(e for e in self.events if e["event"] == kind)

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]

    def audio(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(d.as_array()) for d in self.outputs.get(name, [])]
                              or [np.zeros(0, np.float32)])


async def talk(url: str, frames: Sequence[bytes | str] = (), *,
               headers: dict[str, str] | None = None,
               on_ready: Callable[[dict[str, Any]], object] | None = None,
               timeout: float = SESSION_TIMEOUT_S) -> Outcome:
    """Connect, wait for ``ready`` (then call ``on_ready``), send ``frames`` (binary or JSON
    text), then read everything until the server closes."""
    out = Outcome()

    async def run() -> None:
        async with websockets.connect(url, additional_headers=headers or {},
                                      max_size=None) as ws:
            sent = False
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        name, data = proto.decode(message)
                        if data is not None:
                            out.outputs.setdefault(name, []).append(data)
                        continue
                    event = json.loads(message)
                    out.events.append(event)
                    if event["event"] == proto.READY and not sent:
                        sent = True
                        if on_ready is not None:
                            on_ready(event)
                        for frame in frames:
                            await ws.send(frame)
            except websockets.ConnectionClosed:
                pass
            out.close_code, out.close_reason = ws.close_code, ws.close_reason or ""

    await asyncio.wait_for(run(), timeout)
    return out


def audio_frames(name: str, signal_: np.ndarray, chunk: int = 320, rate: int = 16000
                 ) -> list[bytes]:
    return [proto.encode(name, RuntimeData.audio(signal_[i:i + chunk], sample_rate=rate), n)
            for n, i in enumerate(range(0, len(signal_), chunk), 1)]


def close_input(name: str) -> str:
    return json.dumps({"control": proto.CLOSE, "input": name})


def run_client(url: str, *args: str, timeout: float = SESSION_TIMEOUT_S
               ) -> tuple[int, list[dict[str, Any]], str]:
    """``python -m nodehost.client URL ARGS``: exit code, its JSON lines, its stderr."""
    done = subprocess.run([sys.executable, "-m", "nodehost.client", url, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


def assert_nothing_left(session_ids: set[str]) -> None:
    """No process, iceoryx2 node or service record of these sessions remains."""
    assert session_ids, "no session id seen: nothing to check"
    ids = sorted(session_ids)
    assert not wait_no_session_processes(ids), f"processes of {ids} left behind"
    # a client that just left: its session is still being torn down (polled: no event)
    records = poll_until_empty(lambda: set(node_records(ids) + service_records(ids)),
                               DEATH_TIMEOUT_S, 0.1)
    assert not records, f"iceoryx2 records of {ids} left behind: {sorted(records)}"


def stop_cleanly(server: ServeProcess) -> None:
    """Stop the server; it must shut down gracefully and leave no shared memory behind."""
    code = server.stop()
    log = server.stderr()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in log, (code, log)
    assert_no_shm_leak(server)


def assert_no_shm_leak(server: ServeProcess) -> None:
    """After the server exited: no iceoryx2 shared-memory file of ours is left."""
    assert server.proc.poll() is not None
    assert not leaked_shm(server.shm_before), "shared memory left behind by nodehost serve"
