"""The process runtime end to end: real node processes, real shared memory, real plugins
installed through entry points (nodehost-testnodes)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import pid_alive, probe_chain

from nodehost.lifecycle import ProcessStatus

REQUIRED_STATUS_KEYS = {"event", "ts", "node", "node_type", "pid", "status", "memory_usage",
                        "error"}


def run(host: Any, config: dict[str, Any], timeout: float = 60) -> tuple[Any, list[dict]]:
    session = host.start_session(config)
    events = list(session.events(timeout=timeout))
    return session.wait(timeout), events


def statuses(events: list[dict], node: str) -> list[str]:
    return [e["status"] for e in events if e["event"] == "status" and e["node"] == node]


def test_healthy_chain_delivers_everything_in_order(host: Any, tmp_out: Path) -> None:
    out = tmp_out / "result.json"
    result, events = run(host, probe_chain(out, count=300, payload=4096))
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    assert summary["count"] == 300
    assert summary["in_order"] and summary["intact"]
    assert summary["sizes"] == [4096]

    status_events = [e for e in events if e["event"] == "status"]
    pids = {e["node"]: e["pid"] for e in status_events}
    assert set(pids) == {"src", "fwd", "sink"}
    assert len(set(pids.values())) == 3, "one process per node"
    for event in status_events:
        assert event.keys() >= REQUIRED_STATUS_KEYS
        assert isinstance(event["memory_usage"], int) and event["memory_usage"] > 0
    for node in pids:
        seen = statuses(events, node)
        assert seen[0] == "Idle" and seen[-1] == "Stopped"
        for before, after in itertools.pairwise(seen):
            assert ProcessStatus(before).can_become(ProcessStatus(after)) or before == after
        assert "Ready" in seen
    assert events[-1]["event"] == "session_end" and events[-1]["ok"] is True
    assert all(not pid_alive(pid) for pid in pids.values())


def test_an_async_node_runs_in_its_sandbox(host: Any, tmp_out: Path) -> None:
    """The runner imports asyncio only for a node that needs it — after the sandbox is on."""
    out = tmp_out / "result.json"
    config = probe_chain(out, count=200, middle=[{"id": "fwd", "type": "AsyncForward"}])
    result, _events = run(host, config)
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    assert (summary["count"], summary["in_order"], summary["intact"]) == (200, True, True)


def test_sandbox_layers_reported_in_status(host: Any, tmp_out: Path) -> None:
    result, events = run(host, probe_chain(tmp_out / "r.json", count=3))
    assert result.ok
    init = [e for e in events if e["event"] == "status" and e["status"] == "Initializing"]
    assert len(init) == 3
    for event in init:
        assert "no_new_privs" in event["sandbox"]


def test_nodes_initialize_in_parallel_with_progress(host: Any, tmp_out: Path) -> None:
    middle = [{"id": f"slow{i}", "type": "SlowInit", "params": {"init_s": 1.0}} for i in range(5)]
    result, events = run(host, probe_chain(tmp_out / "r.json", count=5, middle=middle))
    assert result.ok, result.reason
    began: dict[str, float] = {}
    ready: dict[str, float] = {}
    for e in events:
        if e["event"] == "status" and e["node"].startswith("slow"):
            if e["status"] == "Initializing":
                began.setdefault(e["node"], e["ts"])
            if e["status"] == "Ready":
                ready.setdefault(e["node"], e["ts"])
    assert len(began) == len(ready) == 5
    # Every node was initializing at one common moment: they ran side by side, not in turn.
    assert max(began.values()) < min(ready.values())
    progress = [e for e in events if e["event"] == "progress" and e["node"] == "slow0"]
    assert len(progress) >= 5
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


FAULTS = [
    ("sigkill", "was killed by SIGKILL"),
    ("sigsegv", "was killed by SIGSEGV"),
    ("exit", "exited with code 3"),
    ("init_exception", "failed in initialize(): RuntimeError: injected failure in initialize"),
    ("process_exception", "failed in process(): ValueError: injected failure after 2 messages"),
    ("memory", "memory limit"),
]


@pytest.mark.parametrize(("mode", "cause"), FAULTS, ids=[f[0] for f in FAULTS])
def test_a_failing_node_ends_the_session(host: Any, tmp_out: Path, mode: str,
                                         cause: str) -> None:
    middle = [{"id": "bad", "type": "Faulty", "params": {"mode": mode, "after": 2}}]
    config = probe_chain(tmp_out / "r.json", count=1000, middle=middle)
    result, events = run(host, config)
    assert not result.ok
    assert result.failed_node == "bad"
    assert result.failed_node_type == "Faulty"
    assert "node 'bad' (Faulty)" in result.reason
    assert cause in result.reason
    end = events[-1]
    assert end["event"] == "session_end" and end["ok"] is False and end["failed_node"] == "bad"
    pids = {e["pid"] for e in events if e["event"] == "status"}
    assert all(not pid_alive(pid) for pid in pids)
    final = {e["node"]: e["status"] for e in events if e["event"] == "status"}
    assert set(final.values()) == {"Stopped"}
    assert "Error" in statuses(events, "bad")


def test_init_timeout_ends_the_session(host: Any, tmp_out: Path) -> None:
    middle = [{"id": "stuck", "type": "Faulty", "params": {"mode": "hang_init"}}]
    # 3 s: long enough for every healthy node to start on a loaded 2-core machine.
    config = probe_chain(tmp_out / "r.json", count=10, middle=middle, init_timeout_s=3.0)
    result, _ = run(host, config)
    assert not result.ok
    assert result.failed_node == "stuck"
    assert "did not become Ready within init_timeout_s=3 s" in result.reason


def test_two_sessions_one_fails_the_other_completes(host: Any, tmp_out: Path) -> None:
    good_out = tmp_out / "good.json"
    good = probe_chain(good_out, count=400, name="good")
    good["nodes"][0]["params"]["interval_ms"] = 1.0
    bad = probe_chain(tmp_out / "bad.json", count=400, name="bad",
                      middle=[{"id": "bad", "type": "Faulty",
                               "params": {"mode": "sigkill", "after": 5}}])
    s_good = host.start_session(good)
    s_bad = host.start_session(bad)
    r_bad = s_bad.wait(60)
    r_good = s_good.wait(60)
    assert not r_bad.ok and r_bad.failed_node == "bad"
    assert r_good.ok, r_good.reason
    summary = json.loads(good_out.read_text())
    assert summary["count"] == 400 and summary["in_order"] and summary["intact"]


def test_stop_tears_down_a_running_session(host: Any, tmp_out: Path) -> None:
    config = probe_chain(tmp_out / "r.json", count=100000)
    config["nodes"][0]["params"]["interval_ms"] = 5.0
    session = host.start_session(config)
    for event in session.events(timeout=30):
        if event["event"] == "status" and event["status"] == "Processing":
            break
    pids = [p.pid for p in session.processes().values()]
    result = session.stop("test says stop", timeout=30)
    assert not result.ok and result.reason == "test says stop"
    assert all(not pid_alive(pid) for pid in pids)
    assert set(session.status().values()) == {ProcessStatus.STOPPED}
