"""Agents for the distributed tests: real `nodehost agent` processes, on loopback or each in
its own network namespace (real TCP between separate network stacks).

The namespaces are made here and only here: a hub namespace holding a Linux bridge, and one
namespace per "machine" joined to it by a veth pair. Every address lives inside those
namespaces; tearing them down removes the veths with them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zenoh", reason="eclipse-zenoh (nodehost[distributed]) not installed")

START_TIMEOUT_S = 60.0  # anti-hang only: an agent is up in about a second


@dataclass
class AgentProcess:
    name: str
    listen: str
    token: str
    netns: str | None
    state_dir: Path
    popen: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def connect(self) -> str:
        return self.listen

    def start(self) -> AgentProcess:
        command = [sys.executable, "-m", "nodehost.agent", "--listen", self.listen,
                   "--name", self.name, "--state-dir", str(self.state_dir)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        env = {**os.environ, "NODEHOST_AGENT_TOKEN": self.token}
        self.popen = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.popen is not None and self.popen.stdout is not None
            for line in self.popen.stdout:
                self.output.append(line.rstrip())
                if "listening on" in line:
                    ready.set()
            ready.set()
        threading.Thread(target=pump, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        if self.popen.poll() is not None or not any("listening on" in o for o in self.output):
            raise RuntimeError(f"agent {self.name} did not start: {self.output[-5:]}")
        return self

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Any]:
    """``agents(name, listen=None, netns=None)`` starts an agent; all are stopped after."""
    started: list[AgentProcess] = []

    def start(name: str, listen: str | None = None, netns: str | None = None,
              token: str | None = None) -> AgentProcess:
        agent = AgentProcess(name, listen or f"tcp/127.0.0.1:{free_port()}",
                             token or secrets.token_hex(16), netns,
                             tmp_path / f"state-{name}")
        started.append(agent)
        return agent.start()

    yield start
    for agent in started:
        agent.stop()


def machines(*agents: AgentProcess) -> tuple[dict[str, Any], dict[str, str]]:
    """The config's ``machines:`` for these agents, and the environment with their tokens."""
    entries, env = {}, {}
    for agent in agents:
        var = f"NH_TEST_TOKEN_{agent.name.upper().replace('-', '_')}"
        entries[agent.name] = {"connect": agent.connect, "token_env": var}
        env[var] = agent.token
    return entries, env


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    def put(env: dict[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return put


# ------------------------------------------------------------------------- namespaces

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    """Namespaces ``<prefix>-<machine>`` on one bridged subnet."""

    prefix: str
    subnet: str  # "10.213.17"
    machines: dict[str, str] = field(default_factory=dict)  # machine → address

    def ns(self, machine: str) -> str:
        return f"{self.prefix}-{machine}"

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def add(self, machine: str) -> str:
        address = f"{self.subnet}.{len(self.machines) + 1}"
        ns, inside, outside = self.ns(machine), "eth0", f"v{len(self.machines)}"
        _ip("netns", "add", ns)
        _ip("-n", self.hub, "link", "add", outside, "type", "veth", "peer", "name", inside,
            "netns", ns)
        _ip("-n", self.hub, "link", "set", outside, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.machines[machine] = address
        return address

    def cut(self, machine: str) -> None:
        _ip("-n", self.ns(machine), "link", "set", "eth0", "down")

    def teardown(self) -> None:
        for ns in [*(self.ns(m) for m in self.machines), self.hub]:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "delete", ns)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"nhprobe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "delete", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot make network namespaces here: {exc}"
    return None


@pytest.fixture
def network() -> Iterator[Network]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    net = Network(f"nhz{tag}", f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}")
    try:
        _ip("netns", "add", net.hub)
        _ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", net.hub, "link", "set", "br0", "up")
        yield net
    finally:
        net.teardown()
