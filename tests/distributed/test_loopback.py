"""Sessions spread over agents on loopback: delivery, failures, credentials, validation."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import probe_chain
from reliability.support import leftovers, shm_files

from nodehost.errors import ConfigError, MachineError, SessionError
from nodehost.session import Host

from .conftest import machines

SESSION_TIMEOUT_S = 180.0  # anti-hang only


def chain(out: Path, placed: list[tuple[str, str | None, dict[str, Any]]],
          machines_: dict[str, Any], count: int = 300, payload: int = 1024,
          interval_ms: float = 0.0, name: str = "dist") -> dict[str, Any]:
    """ProbeSource → (type, machine, params)... → ProbeSink, both ends on this machine."""
    middle = [{"id": f"n{index}", "type": node_type, "params": params,
               **({"machine": machine} if machine else {})}
              for index, (node_type, machine, params) in enumerate(placed)]
    config = probe_chain(out, count=count, payload=payload, name=name, middle=middle,
                         machines=machines_)
    config["nodes"][0]["params"]["interval_ms"] = interval_ms
    return config


def assert_clean(session_id: str, before: set[str], *agents: Any) -> None:
    """Nothing of the session left on any machine (the agents themselves stopped first: they
    are this test's own processes)."""
    for agent in agents:
        agent.stop()
    left = leftovers([session_id], before)
    assert left.total == 0, str(left)


def run(config: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], str]:
    with Host() as host:
        session = host.start_session(config)
        events = list(session.events(timeout=SESSION_TIMEOUT_S))
        return session.wait(SESSION_TIMEOUT_S), events, session.id


def test_pipeline_over_three_machines_delivers_everything_in_order(agents, token_env,
                                                                     tmp_path):
    gpu1, gpu2 = agents("gpu1"), agents("gpu2")
    entries, env = machines(gpu1, gpu2)
    token_env(env)
    out = tmp_path / "out.json"
    before = shm_files()
    result, events, sid = run(chain(out, [("Forward", "gpu1", {}), ("Forward", "gpu2", {})],
                                    entries, count=500, payload=4096))
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    assert summary["count"] == 500 and summary["in_order"] and summary["intact"]
    placed = {e["node"]: e["machine"] for e in events if e["event"] == "status"}
    assert placed["n0"] == "gpu1" and placed["n1"] == "gpu2" and placed["src"] == "local"
    assert events[-1]["event"] == "session_end" and events[-1]["ok"]
    assert_clean(sid, before, gpu1, gpu2)


def test_remote_crash_ends_the_session_naming_node_machine_and_cause(agents, token_env,
                                                                       tmp_path):
    gpu1 = agents("gpu1")
    entries, env = machines(gpu1)
    token_env(env)
    before = shm_files()
    result, events, sid = run(chain(tmp_path / "out.json",
                                    [("Faulty", "gpu1", {"mode": "sigkill", "after": 5})],
                                    entries, count=100000, interval_ms=1.0))
    assert not result.ok
    assert result.failed_node == "n0" and result.failed_machine == "gpu1"
    assert "node 'n0' (Faulty) on machine 'gpu1' was killed by SIGKILL" in result.reason
    assert events[-1]["failed_machine"] == "gpu1"
    assert_clean(sid, before, gpu1)


def test_killed_agent_ends_the_session_and_its_restart_cleans_up(agents, token_env,
                                                                  tmp_path):
    gpu1 = agents("gpu1")
    entries, env = machines(gpu1)
    token_env(env)
    before = shm_files()
    with Host() as host:
        session = host.start_session(chain(tmp_path / "out.json", [("Forward", "gpu1", {})],
                                           entries, count=100000, interval_ms=1.0))
        for event in session.events(timeout=SESSION_TIMEOUT_S):
            if event["event"] == "status" and event["node"] == "n0" and \
                    event["status"] == "Processing":
                break
        assert glob.glob(os.path.join(tempfile.gettempdir(), f"nodehost-{session.id}-n0-*"))
        killed = time.monotonic()
        gpu1.kill()
        result = session.wait(SESSION_TIMEOUT_S)
        detected = time.monotonic() - killed
    assert not result.ok and result.failed_machine == "gpu1"
    assert "machine 'gpu1' disappeared" in result.reason
    print(f"killed agent detected after {detected * 1000:.0f} ms")
    # The dead agent's nodes died with it (parent-death signal); a restarted agent removes
    # what they left (temp dirs, shared memory) before serving again.
    restarted = agents("gpu1", listen=gpu1.listen, token=gpu1.token)
    assert any(session.id in line for line in restarted.output), restarted.output
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"nodehost-{session.id}-*"))
    assert_clean(session.id, before, restarted)


def test_bad_credentials_are_refused(agents, token_env, tmp_path):
    gpu1 = agents("gpu1")
    entries, env = machines(gpu1)
    token_env({name: "not-the-token" for name in env})
    with Host() as host, pytest.raises(MachineError, match="bad signature"):
        host.start_session(chain(tmp_path / "out.json", [("Forward", "gpu1", {})], entries))
    assert any("refused a control request: bad signature" in line for line in gpu1.output)


def test_missing_token_variable_is_a_clear_error(agents, monkeypatch, tmp_path):
    gpu1 = agents("gpu1")
    entries, _env = machines(gpu1)
    monkeypatch.delenv(entries["gpu1"]["token_env"], raising=False)
    with Host() as host, pytest.raises(SessionError, match="token_env: the environment "
                                                           "variable NH_TEST_TOKEN_GPU1"):
        host.start_session(chain(tmp_path / "out.json", [("Forward", "gpu1", {})], entries))


def test_agent_applies_its_own_node_types_and_grant_limits(agents, token_env, tmp_path):
    gpu1 = agents("gpu1")
    entries, env = machines(gpu1)
    token_env(env)
    config = chain(tmp_path / "out.json", [("Forward", "gpu1", {})], entries)
    config["nodes"][1]["sandbox"] = {"fs_write": ["/etc"]}
    with Host() as host, pytest.raises(ConfigError) as info:
        host.start_session(config)
    assert "nodes[1].sandbox.fs_write[0]: on machine 'gpu1': /etc is outside what this " \
           "agent's operator allows (--allow-write)" in str(info.value)


def validate(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodehost.cli", "validate", str(path)],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=SESSION_TIMEOUT_S)


def test_validate_asks_the_agents(agents, tmp_path):
    gpu1 = agents("gpu1")
    entries, env = machines(gpu1)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(chain(tmp_path / "out.json", [("Forward", "gpu1", {})],
                                     entries)))
    done = validate(path, env)
    assert done.returncode == 0, done.stderr
    config = chain(tmp_path / "out.json", [("Forward", "gpu1", {}), ("Nope", "gpu1", {}),
                                           ("Forward", "gpu3", {})], entries)
    path.write_text(json.dumps(config))
    done = validate(path, env)
    assert done.returncode == 2
    assert "nodes[3].machine: unknown machine 'gpu3'" in done.stderr
    config = chain(tmp_path / "out.json", [("Forward", "gpu1", {}), ("Nope", "gpu1", {})],
                   entries)
    path.write_text(json.dumps(config))
    done = validate(path, env)
    assert done.returncode == 2
    assert "nodes[2].type: machine 'gpu1' has no node type 'Nope' installed" in done.stderr
    gpu1.stop()  # unreachable: placements checked, node types against this machine's
    path.write_text(json.dumps(chain(tmp_path / "out.json", [("Forward", "gpu1", {})],
                                     entries)))
    done = validate(path, env)
    assert done.returncode == 0, done.stderr
    assert "cannot reach" in done.stderr or "no agent named" in done.stderr
