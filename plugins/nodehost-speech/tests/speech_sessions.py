"""Run nodes for real: a ``host`` fixture (with leak checks) and helpers that build a chain
config, run it through ``nodehost.Host().start_session`` and collect its events.

Uniquely named (not conftest.py) so both plugins' test folders can share one pytest run.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest


def _shm_files() -> set[str]:
    return set(glob.glob("/dev/shm/iox2_*"))


def _mapped_shm_files() -> set[str]:
    """iceoryx2 files some live process still maps (another run's on a shared machine)."""
    mapped: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, encoding="utf-8", errors="replace") as fh:
                mapped.update(line.split()[-1] for line in fh if "/dev/shm/iox2_" in line)
        except OSError:
            continue
    return mapped


def _foreign_nodes() -> bool:
    """Node processes that are not this test's (another test run or a benchmark on the same
    machine): their shared-memory files are not this test's leak."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "nodehost.runner" in cmdline and proc.info["pid"] not in mine:
            return True
    return False


@pytest.fixture
def host() -> Iterator[Any]:
    """A real Host over the installed plugins; fails the test that leaves node processes or
    shared-memory files behind."""
    import nodehost

    before = _shm_files()
    with nodehost.Host() as h:
        yield h
    leftover = [p.pid for p in psutil.Process().children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftover, f"node processes left running: {leftover}"
    new_files = _shm_files() - before
    if new_files:
        new_files -= _mapped_shm_files()
    assert not new_files or _foreign_nodes(), \
        f"shared-memory files left behind: {sorted(new_files)}"


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    """A temp folder node processes can reach (pytest makes it 0700)."""
    os.chmod(tmp_path, 0o755)
    return tmp_path


@dataclass
class Run:
    """What a finished session left: its result and every event."""

    result: Any
    events: list[dict[str, Any]] = field(default_factory=list)

    def logs(self, node: str) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == "log" and e["node"] == node]

    def pids(self) -> dict[str, set[int]]:
        pids: dict[str, set[int]] = {}
        for e in self.events:
            if e["event"] == "status":
                pids.setdefault(e["node"], set()).add(e["pid"])
        return pids

    def stats(self, node: str) -> dict[str, Any]:
        """The node's last reported counters (received, sent, ...)."""
        last: dict[str, Any] = {}
        for e in self.events:
            if e["event"] == "status" and e["node"] == node and e.get("stats"):
                last = e["stats"]
        return last

    def assert_ok(self) -> None:
        assert self.result.ok, self.result.reason
        pids = self.pids()
        # Every node ran in its own process: one pid each, none shared.
        assert all(len(p) == 1 for p in pids.values()), pids
        assert len({next(iter(p)) for p in pids.values()}) == len(pids), pids
        assert os.getpid() not in {next(iter(p)) for p in pids.values()}


def source(path: Path, node_id: str = "src", **params: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "WavSource", "params": {"path": str(path), **params},
            "sandbox": {"fs_read": [str(path)]}}


def sink(path: Path, node_id: str = "sink", **params: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "WavSink", "params": {"path": str(path), **params},
            "sandbox": {"fs_write": [str(path)]}}


def chain(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    """A pipeline config connecting ``nodes`` one after the other."""
    ids = [n["id"] for n in nodes]
    return {"name": name, "init_timeout_s": 120, "nodes": list(nodes),
            "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]}


def run(host: Any, config: Any, timeout: float = 300) -> Run:
    """Run ``config`` to its end. ``timeout`` only guards against a hang (a quiet gap that
    long ends the wait, and the host fixture then stops the session); it times nothing."""
    session = host.start_session(config)
    events = list(session.events(timeout=timeout))
    return Run(session.wait(timeout=1 if events[-1]["event"] != "session_end" else None),
               events)
