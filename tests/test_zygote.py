"""Nodes forked by the host's zygote (nodehost.spawn, nodehost.zygote): the same process a
node exec'd by ``python -m nodehost.runner`` gets — environment, fds, cwd, process group,
sandbox — and nothing outlives its owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

import nodehost
from nodehost.testing import run


def describe_config(out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"id": "me", "type": "Hostile", "params": {"attempt": "describe"}}
    if env:
        node["env"] = env
    return {"name": "describe",
            "nodes": [node, {"id": "log", "type": "TextSink", "params": {"path": str(out)},
                             "sandbox": {"fs_write": [str(out)]}}],
            "connections": [{"from": "me", "to": "log"}]}


def describe(host: Any, out: Path, env: dict[str, str] | None = None
             ) -> tuple[dict[str, Any], list[str]]:
    """What the node's process looked like from inside, and the sandbox layers it reported."""
    done = run(host, describe_config(out, env))
    assert done.result.ok, done.result.reason
    text = out.read_text().strip()
    assert text.startswith("allowed: "), text
    layers = next(e["sandbox"] for e in done.events if e["event"] == "status"
                  and e["node"] == "me" and e["status"] == "Initializing")
    return json.loads(text.removeprefix("allowed: ")), layers


def other_fds(fds: dict[str, str]) -> Counter[str]:
    """What is open besides stdio, sockets and iceoryx2's files (whose names and number of
    event sockets vary from run to run): the kinds, not the numbers."""
    return Counter(target.split(":[")[0] for number, target in fds.items()
                   if int(number) > 2 and not target.startswith(("socket:", "/dev/shm/iox2_",
                                                                 "/tmp/iceoryx2/")))


def open_inodes(pid: int) -> set[str]:
    out = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return out


def zygote_pid(host: Any) -> int:
    zygote = host._zygote_slot._zygote
    assert zygote is not None and zygote.alive
    return int(zygote.pid)


def test_a_forked_node_gets_what_an_execd_node_gets(tmp_out: Path) -> None:
    with nodehost.Host() as forking, nodehost.Host(zygote=False) as execing:
        forked, forked_layers = describe(forking, tmp_out / "forked.txt")
        execd, execd_layers = describe(execing, tmp_out / "execd.txt")
        assert forked["ppid"] == zygote_pid(forking) != os.getpid()
        zygote_fds = open_inodes(zygote_pid(forking))
    assert execd["ppid"] == os.getpid()
    assert forked_layers == execd_layers and "landlock_fs" in forked_layers
    for seen in (forked, execd):
        assert seen["pgid"] == seen["pid"], "a node leads its own process group"
        assert seen["cwd"] == seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["tempdir"]
        assert seen["sys_path0"] == seen["cwd"]
        assert set(seen["no_new_privs"].values()) == {"1"}, \
            f"a thread runs without no_new_privs (started before the sandbox?): {seen}"
        fds = seen["fds"]
        assert fds["0"] == "/dev/null" and fds["1"] == fds["2"], fds
        assert [t for t in fds.values() if t.startswith("pipe:")] == [fds["1"]] * 2, \
            f"a pipe that is not the node's own output: {fds}"
    # the same environment (the node's own temp dir aside), and the same kinds of open fds:
    # nothing of the zygote's (its socket to the host, its wake-up pipe) reaches a node
    private = ("HOME", "TMPDIR")
    assert {k: v for k, v in forked["env"].items() if k not in private} == \
        {k: v for k, v in execd["env"].items() if k not in private}
    assert other_fds(forked["fds"]) == other_fds(execd["fds"]), (forked["fds"], execd["fds"])
    leaked = {t for t in forked["fds"].values() if t.startswith(("socket:", "pipe:"))} & \
        zygote_fds
    assert not leaked, f"the zygote's own fds reached a node: {leaked}"


def test_forked_nodes_do_not_share_random_state(host: Any, tmp_out: Path) -> None:
    first, _ = describe(host, tmp_out / "one.txt")
    second, _ = describe(host, tmp_out / "two.txt")
    assert first["ppid"] == second["ppid"] == zygote_pid(host)
    assert first["random"] != second["random"], "numpy's global generator was not reseeded"


def test_a_node_with_its_own_env_is_execd(host: Any, tmp_out: Path) -> None:
    seen, _ = describe(host, tmp_out / "env.txt", env={"NODEHOST_TEST_KNOB": "7"})
    assert seen["ppid"] == os.getpid(), "variables set per node must apply from exec on"
    assert seen["env"]["NODEHOST_TEST_KNOB"] == "7"


def test_zygote_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEHOST_ZYGOTE", "0")
    assert not nodehost.Host().use_zygote
    assert nodehost.Host(zygote=True).use_zygote
    monkeypatch.delenv("NODEHOST_ZYGOTE")
    assert nodehost.Host().use_zygote


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    return alive


def long_chain(out: Path) -> dict[str, Any]:
    return {"name": "long", "nodes": [
        {"id": "src", "type": "ProbeSource", "params": {"count": 10**9, "interval_ms": 20}},
        {"id": "sink", "type": "ProbeSink", "params": {"out_path": str(out)},
         "sandbox": {"fs_write": [str(out)]}}],
        "connections": [{"from": "src", "to": "sink"}]}


def running(session: Any) -> list[int]:
    for event in session.events(timeout=60):
        if event["event"] == "status" and all(
                s.value == "Processing" for s in session.status().values()):
            break
    return [p.pid for p in session.processes().values()]


def test_a_killed_zygote_fails_the_session_cleanly_and_is_replaced(host: Any,
                                                                   tmp_out: Path) -> None:
    session = host.start_session(long_chain(tmp_out / "a.json"))
    pids = running(session)
    zygote = zygote_pid(host)
    assert {psutil.Process(p).ppid() for p in pids} == {zygote}
    os.kill(zygote, signal.SIGKILL)
    result = session.wait(30)
    assert not result.ok and "SIGKILL with the host's zygote" in result.reason, result.reason
    assert wait_gone(pids) == [], "the zygote's nodes outlived it"
    # the next session gets a new zygote
    seen, _ = describe(host, tmp_out / "after.txt")
    assert seen["ppid"] == zygote_pid(host) != zygote


def test_nothing_outlives_a_sigkilled_host(tmp_out: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys, nodehost
        host = nodehost.Host()
        session = host.start_session({long_chain(tmp_out / "k.json")!r})
        for event in session.events():
            if event["event"] == "status" and all(
                    s.value == "Processing" for s in session.status().values()):
                break
        zygote = host._zygote_slot._zygote
        print(json.dumps([zygote.tmp_dir, zygote.pid] +
                         [p.pid for p in session.processes().values()]), flush=True)
        import time; time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        zygote_dir, *pids = json.loads(proc.stdout.readline())
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
        assert os.path.isdir(zygote_dir)
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(pids) == [], "the zygote or a node outlived its host"
    assert not os.path.exists(zygote_dir), "the zygote's own temp dir outlived the host"


def test_closing_the_host_ends_the_zygote(tmp_out: Path) -> None:
    with nodehost.Host() as host:
        describe(host, tmp_out / "x.txt")
        zygote = zygote_pid(host)
    assert wait_gone([zygote], timeout=5) == []


def test_a_fork_answered_too_late_is_killed_and_the_node_execd(
        host: Any, tmp_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zygote stalls (a loaded machine) past the fork timeout: the node is exec'd with a
    fresh control socket, and the runner the zygote forks later never runs."""
    from nodehost import spawn

    describe(host, tmp_out / "warm.txt")  # the zygote is up
    zygote = zygote_pid(host)
    monkeypatch.setattr(spawn, "FORK_TIMEOUT_S", 1.0)
    os.kill(zygote, signal.SIGSTOP)
    try:
        session = host.start_session(long_chain(tmp_out / "late.json"))  # 2 forks time out
    finally:
        os.kill(zygote, signal.SIGCONT)
    pids = running(session)
    assert {psutil.Process(p).ppid() for p in pids} == {os.getpid()}, "not exec'd"
    # the late replies' runners are killed at once: the zygote is left with no child
    deadline = time.monotonic() + 10
    while psutil.Process(zygote).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process(zygote).children() == []
    session.stop()
    assert session.result is not None and session.result.reason == "stopped by request"


def test_a_zygote_that_cannot_start_is_given_up_once(
        tmp_out: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from nodehost import spawn

    monkeypatch.setattr(spawn, "ZYGOTE_MODULE", "nodehost.no_such_zygote")
    with nodehost.Host() as host:
        for name in ("one", "two"):
            seen, _ = describe(host, tmp_out / f"{name}.txt")
            assert seen["ppid"] == os.getpid(), "exec'd when the zygote cannot start"
    given_up = [r for r in caplog.records if "exec'd from now on" in r.getMessage()]
    assert len(given_up) == 1, [r.getMessage() for r in caplog.records]


def test_the_zygote_reports_each_nodes_cpu_time(host: Any, tmp_out: Path) -> None:
    """An exec'd node's CPU time lands in the host's RUSAGE_CHILDREN; a forked node's in
    the zygote's, which reports it with the exit code (the bench's CPU figures use it)."""
    config = long_chain(tmp_out / "cpu.json")
    config["nodes"][0]["params"].update(count=300, interval_ms=0)
    session = host.start_session(config)
    assert session.wait(60).ok
    cpu = {node_id: child.proc.cpu_s for node_id, child in session._children.items()}
    assert all(c is not None and 0.01 < c < 60 for c in cpu.values()), cpu
