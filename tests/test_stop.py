"""Stopping is clean at every moment: Ctrl-C and SIGTERM on the real CLI at many points of
start-up and run, the stop grace for cleanup(), and a failure that does not wait for it."""

from __future__ import annotations

import secrets
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import probe_chain
from interrupts import Interrupted, sweep

import nodehost
from nodehost.errors import HostClosed
from nodehost.session import HostState


def _name(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(3)}"


def _covered(runs: list[Interrupted]) -> None:
    phases = Counter(r.phase for r in runs if r.handled)
    assert phases["running"], f"no interrupt reached a running pipeline: {phases}"
    assert sum(phases.values()) >= len(runs) // 2, f"most points were not nodehost's: {phases}"


def test_ctrl_c_at_every_moment_of_start_up_and_run(tmp_out: Path) -> None:
    _covered(sweep(tmp_out, _name("intr"), middle=1, sig=signal.SIGINT, step=0.1))


def test_ctrl_c_with_several_nodes(tmp_out: Path) -> None:
    _covered(sweep(tmp_out, _name("intr6"), middle=4, sig=signal.SIGINT, step=0.25))


def test_sigterm_at_every_moment(tmp_out: Path) -> None:
    _covered(sweep(tmp_out, _name("term"), middle=1, sig=signal.SIGTERM, step=0.25))


# ------------------------------------------------------------------------------ grace

def _with_cleanup(tmp_out: Path, cleanup_s: float, stop_grace_s: float,
                  **extra: Any) -> tuple[dict[str, Any], Path]:
    marker = tmp_out / "cleaned.txt"
    config = probe_chain(tmp_out / "r.json", count=10**6, stop_grace_s=stop_grace_s, **extra)
    config["nodes"][0]["params"]["interval_ms"] = 1.0
    sink = config["nodes"][-1]
    sink["params"].update(cleanup_s=cleanup_s, cleanup_path=str(marker))
    sink["sandbox"]["fs_write"].append(str(marker))
    return config, marker


def _until_processing(session: nodehost.Session) -> list[dict[str, Any]]:
    seen = []
    for event in session.events(timeout=120):
        seen.append(event)
        if event["event"] == "status" and event["status"] == "Processing":
            break
    return seen


def test_a_stop_gives_nodes_their_grace_to_clean_up(tmp_out: Path) -> None:
    config, marker = _with_cleanup(tmp_out, cleanup_s=1.0, stop_grace_s=60.0)
    with nodehost.Host() as host:
        session = host.start_session(config)
        _until_processing(session)
        result = session.stop("operator stop", timeout=120)
        events = list(session.events(timeout=5))
    assert not result.ok and result.reason == "operator stop" and result.failed_node is None
    assert marker.read_text() == "cleaned"  # cleanup() ran to its end: 1 s, inside the grace
    assert not [e for e in events if e["event"] == "log" and "cleanup" in e["message"]]
    assert not [e for e in events if e["event"] == "status" and e.get("error")]


def test_a_cleanup_that_overruns_the_grace_is_terminated(tmp_out: Path) -> None:
    config, marker = _with_cleanup(tmp_out, cleanup_s=600.0, stop_grace_s=0.5)
    with nodehost.Host() as host:
        session = host.start_session(config)
        _until_processing(session)
        result = session.stop("operator stop", timeout=120)  # anti-hang: 600 s never waited
        events = list(session.events(timeout=5))
    assert result.reason == "operator stop" and result.failed_node is None
    assert marker.read_text() == ""  # (the host creates granted files; cleanup() never ended)
    overran = {e["node"]: e["message"] for e in events if e["event"] == "log"}
    assert overran["sink"] == "still running stop_grace_s=0.5 s after stop: terminated"
    assert session.processes()["sink"].exit_code == -signal.SIGTERM
    assert not [e for e in events if e["event"] == "status" and e.get("error")]


def test_a_failure_does_not_wait_for_the_grace(tmp_out: Path) -> None:
    middle = [{"id": "boom", "type": "Faulty", "params": {"mode": "process_exception",
                                                          "after": 5}}]
    config, marker = _with_cleanup(tmp_out, cleanup_s=600.0, stop_grace_s=600.0,
                                   middle=middle)
    with nodehost.Host() as host:
        result = host.start_session(config).wait(timeout=120)  # the 600 s grace is not used
    assert not result.ok and result.failed_node == "boom"
    assert "failed in process(): ValueError" in result.reason
    assert marker.read_text() == ""


# ------------------------------------------------------------------------------ ownership

def test_only_a_host_makes_sessions(tmp_out: Path) -> None:
    with nodehost.Host() as host:
        pipeline = host.validate(probe_chain(tmp_out / "r.json", count=1))
        with pytest.raises(TypeError, match=r"Host\.start_session"):
            nodehost.Session(host, pipeline)


def test_a_closed_host_starts_no_session(tmp_out: Path) -> None:
    host = nodehost.Host()
    session = host.start_session(probe_chain(tmp_out / "r.json", count=10**6))
    host.close()
    assert session.result is not None and not host.sessions()
    with pytest.raises(HostClosed, match=r"^Host is closed; no new sessions$"):
        host.start_session(probe_chain(tmp_out / "r2.json", count=1))
    assert host.state is HostState.CLOSED


def test_every_session_is_listed_until_it_ends_and_never_after(tmp_out: Path) -> None:
    """Sessions that end at once (a node failing in initialize) are registered before their
    supervisor runs, so none is left listed after its end."""
    middle = [{"id": "boom", "type": "Faulty", "params": {"mode": "init_exception"}}]
    with nodehost.Host() as host:
        sessions = [host.start_session(probe_chain(tmp_out / f"r{i}.json", middle=middle))
                    for i in range(6)]
        for session in sessions:
            assert not session.wait(timeout=120).ok
        assert host.sessions() == []


def test_a_source_blocked_by_a_sink_that_never_reads_obeys_stop_at_once(
        tmp_out: Path) -> None:
    """The sink sleeps in its first process() (deaf until the grace ends); the source is
    blocked on the full channel. The source's stop must not wait for anything: it wakes on
    its control socket, cleans up and exits 0 while the sink still holds the session."""
    config = probe_chain(tmp_out / "r.json", count=10**6, payload=1 << 14, middle=[],
                         stop_grace_s=3.0)
    config["nodes"][-1]["params"]["delay_ms"] = 600_000.0
    with nodehost.Host() as host:
        session = host.start_session(config)
        for event in session.events(timeout=120):
            if event["event"] == "status" and event["node"] == "sink" \
                    and event["status"] == "Processing":
                break
        result = session.stop("operator stop", timeout=120)
        events = list(session.events(timeout=5))
    stopped = {e["node"]: e["ts"] for e in events
               if e["event"] == "status" and e["status"] == "Stopped"}
    processes = session.processes()
    assert result.reason == "operator stop" and result.failed_node is None
    assert processes["src"].exit_code == 0  # woke from backpressure, ran cleanup, exited
    overran = [e["node"] for e in events if e["event"] == "log" and "stop_grace_s" in
               e["message"]]
    assert overran == ["sink"]  # only the deaf sink needed the SIGTERM at the grace's end
    assert stopped["src"] < stopped["sink"]
