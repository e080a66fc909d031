"""Test kit for nodehost and its plugins: run nodes for real, and fail the test that leaks.

Needs pytest (``pip install nodehost[test]``). In a plugin's ``tests/conftest.py``::

    from nodehost.testing import host, tmp_out  # noqa: F401  (fixtures)

then in a test::

    from nodehost.testing import chain, run, sink, source

    def test_gain(host, tmp_out):
        done = run(host, chain("gain", source(wav_in), {"id": "g", "type": "Gain"},
                               sink(tmp_out / "out.wav")))
        done.assert_ok()

``host`` is a real ``nodehost.Host`` over the installed plugins; after the test it fails if
node processes are still running or iceoryx2 shared-memory files were left behind.
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

__all__ = ["Run", "chain", "child_processes", "host", "leaked_shm_files", "run", "shm_files",
           "sink", "source", "tmp_out"]


# --------------------------------------------------------------------------- leak checks

def shm_files() -> set[str]:
    """The iceoryx2 shared-memory files on this machine now."""
    return set(glob.glob("/dev/shm/iox2_*"))


def _mapped_shm_files() -> set[str]:
    """iceoryx2 files some live process still maps (another test run's, on a shared
    machine): those are not leaks of ours."""
    mapped: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, encoding="utf-8", errors="replace") as fh:
                mapped.update(line.split()[-1] for line in fh if "/dev/shm/iox2_" in line)
        except OSError:
            continue
    return mapped


def leaked_shm_files(before: set[str]) -> set[str]:
    """Files that appeared since ``before`` and that no live process maps."""
    new_files = shm_files() - before
    return new_files - _mapped_shm_files() if new_files else new_files


def _foreign_nodes() -> bool:
    """Node processes that are not this test's (another test run or a benchmark on the
    same machine): files they create are not this test's leak."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "nodehost.runner" in cmdline and proc.info["pid"] not in mine:
            return True
    return False


def _resource_tracker(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker: started by a test's first "spawn" child and kept,
    by design, for the life of the test process."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def child_processes() -> list[psutil.Process]:
    """This process's live descendants (the resource tracker excepted)."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and \
                    not _resource_tracker(proc):
                out.append(proc)
        except psutil.Error:
            continue
    return out


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def host() -> Iterator[Any]:
    """A real Host over the installed plugins; fails the test that leaves node processes or
    shared-memory files behind."""
    import nodehost

    before = shm_files()
    with nodehost.Host() as h:
        yield h
    leftover = [p.pid for p in child_processes()]
    assert not leftover, f"node processes left running: {leftover}"
    new_files = leaked_shm_files(before)
    assert not new_files or _foreign_nodes(), \
        f"shared-memory files left behind: {sorted(new_files)}"


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    """A temp folder node processes can reach (pytest makes it 0700)."""
    os.chmod(tmp_path, 0o755)
    return tmp_path


# --------------------------------------------------------------------------- sessions

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
        """The node's figures in the session's last ``stats`` event (received, sent, ...)."""
        last: dict[str, Any] = {}
        for e in self.events:
            if e["event"] == "stats" and node in e["nodes"]:
                last = e["nodes"][node]
        return last

    def assert_ok(self) -> None:
        assert self.result.ok, self.result.reason
        pids = self.pids()
        # Every node ran in its own process: one pid each, none shared.
        assert all(len(p) == 1 for p in pids.values()), pids
        assert len({next(iter(p)) for p in pids.values()}) == len(pids), pids
        assert os.getpid() not in {next(iter(p)) for p in pids.values()}


def source(path: Path, node_id: str = "src", **params: Any) -> dict[str, Any]:
    """A ``WavSource`` node (nodehost-audio) reading ``path``, granted read access to it."""
    return {"id": node_id, "type": "WavSource", "params": {"path": str(path), **params},
            "sandbox": {"fs_read": [str(path)]}}


def sink(path: Path, node_id: str = "sink", **params: Any) -> dict[str, Any]:
    """A ``WavSink`` node (nodehost-audio) writing ``path``, granted write access to it."""
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
