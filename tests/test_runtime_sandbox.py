"""Sandbox denials seen through the runtime: hostile nodes in real sessions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodehost.testing import host_fixture


def hostile(host: Any, tmp_out: Path, attempt: str, target: str = "",
            grant: dict[str, Any] | None = None) -> str:
    out = tmp_out / "outcome.txt"
    node: dict[str, Any] = {"id": "evil", "type": "Hostile",
                            "params": {"attempt": attempt, "target": target}}
    if grant:
        node["sandbox"] = grant
    config = {
        "name": f"hostile-{attempt}",
        "nodes": [node, {"id": "log", "type": "TextSink", "params": {"path": str(out)},
                         "sandbox": {"fs_write": [str(out)]}}],
        "connections": [{"from": "evil", "to": "log"}],
    }
    result = host.start_session(config).wait(60)
    assert result.ok, result.reason
    return out.read_text().strip()


def test_network_denied(host: Any, tmp_out: Path, listener: str) -> None:
    assert hostile(host, tmp_out, "network", listener).startswith("denied:")


def test_network_allowed_when_granted(host: Any, tmp_out: Path, listener: str) -> None:
    outcome = hostile(host, tmp_out, "network", listener, grant={"network": True})
    assert outcome == "allowed: connected"


def test_write_outside_granted_paths_denied(host: Any, tmp_out: Path) -> None:
    target = tmp_out / "not-granted.txt"
    assert hostile(host, tmp_out, "write_outside", str(target)).startswith("denied:")
    assert not target.exists()


def test_write_to_granted_path_allowed(host: Any, tmp_out: Path) -> None:
    target = tmp_out / "granted.txt"
    outcome = hostile(host, tmp_out, "write_granted", str(target),
                      grant={"fs_write": [str(target)]})
    assert outcome.startswith("allowed:")
    assert target.read_text() == "written by a node\n"


def test_read_outside_allowed_paths_denied(host: Any, tmp_out: Path) -> None:
    secret = tmp_out / "secret.txt"
    secret.write_text("host secret")
    assert hostile(host, tmp_out, "read_outside", str(secret)).startswith("denied:")


def test_read_granted_path_allowed(host: Any, tmp_out: Path) -> None:
    data = tmp_out / "data.txt"
    data.write_text("shared with the node")
    outcome = hostile(host, tmp_out, "read_outside", str(data), grant={"fs_read": [str(data)]})
    assert outcome == f"allowed: read 20 chars of {data}"


@pytest.fixture(params=["zygote", "exec"])
def host(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every denial holds for a node forked by the host's zygote and for an exec'd one."""
    yield from host_fixture(zygote=request.param == "zygote")


# "": the node's parent (the zygote, or the host for an exec'd node); a pid: the host itself
HOSTS = ("", str(os.getpid()))


@pytest.mark.parametrize("who", HOSTS)
def test_host_environment_hidden(host: Any, tmp_out: Path,
                                 monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    monkeypatch.setenv("NODEHOST_TEST_SECRET", "hunter2")
    outcome = hostile(host, tmp_out, "read_env", who)
    assert "NODEHOST_TEST_SECRET" not in outcome
    assert outcome.startswith("denied:"), "the host's /proc/PID/environ must not be readable"


@pytest.mark.parametrize("who", HOSTS)
def test_signalling_the_host_denied(host: Any, tmp_out: Path, who: str) -> None:
    outcome = hostile(host, tmp_out, "signal_host", who)
    assert outcome.startswith("denied:")


@pytest.mark.parametrize("who", HOSTS)
def test_ptrace_of_the_host_denied(host: Any, tmp_out: Path, who: str) -> None:
    assert hostile(host, tmp_out, "ptrace_host", who).startswith("denied:")
    assert os.getpid()  # the test process (the host) is still here to assert


def test_memory_past_the_limit_denied(host: Any, tmp_out: Path) -> None:
    assert hostile(host, tmp_out, "memory", "1024") == "denied: MemoryError"
