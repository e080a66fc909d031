"""Machines as network namespaces: each agent in its own network stack, joined by veth pairs
to one bridge, and the coordinator (`nodehost run`) in a namespace of its own. Real TCP
between separate stacks; a cut link is a veth set down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from conftest import probe_chain
from reliability.support import leftovers, shm_files, wait_no_session_processes

from .conftest import AgentProcess, Network, machines

RUN_TIMEOUT_S = 300.0  # anti-hang only
PORT = 7447


class Coordinator:
    """`nodehost run CONFIG --events json` inside the coordinator's namespace."""

    def __init__(self, net: Network, config: dict[str, Any], env: dict[str, str],
                 tmp: Path) -> None:
        path = tmp / "pipeline.json"
        path.write_text(json.dumps(config))
        self.events: list[dict[str, Any]] = []
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", net.ns("coord"), sys.executable, "-m", "nodehost.cli",
             "run", str(path), "--events", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **env})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.seen = threading.Condition()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.seen:
                self.events.append(json.loads(line))
                self.seen.notify_all()

    def wait_for(self, node: str, status: str) -> None:
        def there() -> bool:
            return any(e["event"] == "status" and e["node"] == node and e["status"] == status
                       for e in self.events) or self.popen.poll() is not None
        with self.seen:
            self.seen.wait_for(there, RUN_TIMEOUT_S)

    def finish(self) -> tuple[int, str, dict[str, Any]]:
        code = self.popen.wait(RUN_TIMEOUT_S)
        self._reader.join(RUN_TIMEOUT_S)
        assert self.popen.stderr is not None
        stderr = self.popen.stderr.read()
        end = self.events[-1] if self.events else {}
        return code, stderr, end

    @property
    def session_id(self) -> str:
        return str(self.events[0]["session"])


def setup(net: Network, agents: Any, *names: str) -> list[AgentProcess]:
    net.add("coord")
    started = []
    for name in names:
        address = net.add(name)
        started.append(agents(name, listen=f"tcp/{address}:{PORT}", netns=net.ns(name)))
    return started


def placed_chain(out: Path, placement: list[tuple[str, str, dict[str, Any]]],
                 entries: dict[str, Any], **source: Any) -> dict[str, Any]:
    middle = [{"id": f"n{i}", "type": t, "machine": m, "params": p}
              for i, (t, m, p) in enumerate(placement)]
    config = probe_chain(out, middle=middle, machines=entries, name="netns")
    config["nodes"][0]["params"].update(source)
    return config


def assert_clean(session_id: str, before: set[str], *agents: AgentProcess) -> None:
    for agent in agents:
        agent.stop()
    left = leftovers([session_id], before)
    assert left.total == 0, str(left)


def test_pipeline_over_three_machines_delivers_everything_in_order(network, agents,
                                                                     tmp_path):
    m1, m2 = setup(network, agents, "m1", "m2")
    entries, env = machines(m1, m2)
    out = tmp_path / "out.json"
    before = shm_files()
    run = Coordinator(network, placed_chain(out, [("Forward", "m1", {}), ("Forward", "m2", {})],
                                            entries, count=400, payload_bytes=8192),
                      env, tmp_path)
    code, stderr, end = run.finish()
    assert code == 0, stderr
    assert end["event"] == "session_end" and end["ok"]
    summary = json.loads(out.read_text())
    assert summary["count"] == 400 and summary["in_order"] and summary["intact"]
    where = {e["node"]: e["machine"] for e in run.events if e["event"] == "status"}
    assert (where["src"], where["n0"], where["n1"], where["sink"]) == \
        ("local", "m1", "m2", "local")
    assert_clean(run.session_id, before, m1, m2)


def test_remote_crash_ends_the_session(network, agents, tmp_path):
    m1, m2 = setup(network, agents, "m1", "m2")
    entries, env = machines(m1, m2)
    before = shm_files()
    run = Coordinator(network, placed_chain(
        tmp_path / "out.json", [("Forward", "m1", {}),
                                ("Faulty", "m2", {"mode": "sigsegv", "after": 20})],
        entries, count=100000, interval_ms=1.0), env, tmp_path)
    code, _stderr, end = run.finish()
    assert code == 1
    assert end["failed_node"] == "n1" and end["failed_machine"] == "m2"
    assert "node 'n1' (Faulty) on machine 'm2' was killed by SIGSEGV" in end["reason"]
    assert_clean(run.session_id, before, m1, m2)


def _lost_after(run: Coordinator, machine: str, since: float) -> float:
    """Seconds from ``since`` to the coordinator's ``machine_lost`` event (and a line for
    the log: detection time is a figure, not a test threshold)."""
    lost = [e for e in run.events if e["event"] == "machine_lost"]
    assert [e["machine"] for e in lost] == [machine]
    after = float(lost[0]["ts"]) - since
    print(f"machine {machine} lost after {after * 1000:.0f} ms; session ended "
          f"{(float(run.events[-1]['ts']) - since) * 1000:.0f} ms after")
    return after


def test_killed_agent_ends_the_session_naming_its_machine(network, agents, tmp_path):
    m1, m2 = setup(network, agents, "m1", "m2")
    entries, env = machines(m1, m2)
    before = shm_files()
    run = Coordinator(network, placed_chain(
        tmp_path / "out.json", [("Forward", "m1", {}), ("Forward", "m2", {})], entries,
        count=100000, interval_ms=1.0), env, tmp_path)
    run.wait_for("n1", "Processing")
    killed = time.time()
    m2.kill()
    code, stderr, end = run.finish()
    assert code == 1 and end["failed_machine"] == "m2", stderr[-2000:]
    assert "machine 'm2' disappeared" in end["reason"]
    _lost_after(run, "m2", killed)
    assert_clean(run.session_id, before, m1)


def test_cut_link_ends_the_session_and_the_cut_off_machine_cleans_up(network, agents,
                                                                      tmp_path):
    m1, m2 = setup(network, agents, "m1", "m2")
    entries, env = machines(m1, m2)
    before = shm_files()
    run = Coordinator(network, placed_chain(
        tmp_path / "out.json", [("Forward", "m1", {}), ("Forward", "m2", {})], entries,
        count=100000, interval_ms=1.0), env, tmp_path)
    run.wait_for("n0", "Processing")
    cut = time.time()
    network.cut("m1")
    code, _stderr, end = run.finish()
    assert code == 1 and end["failed_machine"] == "m1"
    assert "machine 'm1' disappeared" in end["reason"]
    _lost_after(run, "m1", cut)
    # m1 lost its coordinator too: its agent stops its part on its own.
    assert not wait_no_session_processes([run.session_id], timeout=60.0)
    assert any("its coordinator is gone" in line for line in m1.output), m1.output[-5:]
    assert_clean(run.session_id, before, m1, m2)


def test_bad_credentials_are_refused(network, agents, tmp_path):
    (m1,) = setup(network, agents, "m1")
    entries, env = machines(m1)
    run = Coordinator(network, placed_chain(tmp_path / "out.json", [("Forward", "m1", {})],
                                            entries),
                      {name: "wrong" for name in env}, tmp_path)
    code, stderr, _end = run.finish()
    assert code == 2
    assert "machine 'm1' refused describe: refused: bad signature" in stderr
    assert any("refused a control request: bad signature" in line for line in m1.output)
