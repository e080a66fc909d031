"""Shared fixtures: a real Host over the installed plugins, and leak checks.

Every test that starts sessions is checked afterwards for leftover node processes and
iceoryx2 shared-memory files: a leak fails the test that caused it.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest


def shm_files() -> set[str]:
    return set(glob.glob("/dev/shm/iox2_*"))


def mapped_shm_files() -> set[str]:
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
    new_files = shm_files() - before
    return new_files - mapped_shm_files() if new_files else new_files


def child_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def host() -> Iterator[Any]:
    import nodehost

    before = shm_files()
    with nodehost.Host() as h:
        yield h
    leftover = [p.pid for p in child_processes()]
    assert not leftover, f"node processes left running: {leftover}"
    new_files = leaked_shm_files(before)
    assert not new_files, f"shared-memory files left behind: {sorted(new_files)}"


def probe_chain(out: Path, *, count: int = 50, payload: int = 1024, name: str = "chain",
                middle: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """source → [middle nodes] → sink, as a config dict."""
    nodes: list[dict[str, Any]] = [
        {"id": "src", "type": "ProbeSource", "params": {"count": count, "payload_bytes": payload}},
        *(middle if middle is not None else [{"id": "fwd", "type": "Forward"}]),
        {"id": "sink", "type": "ProbeSink", "params": {"out_path": str(out)},
         "sandbox": {"fs_write": [str(out)]}},
    ]
    ids = [n["id"] for n in nodes]
    connections = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    return {"name": name, "nodes": nodes, "connections": connections, **extra}


def pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path
