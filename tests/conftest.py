"""Shared fixtures: a real Host over the installed plugins, and leak checks.

Every test that starts sessions is checked afterwards for leftover node processes and
iceoryx2 shared-memory files: a leak fails the test that caused it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import psutil

from nodehost.testing import host, leaked_shm_files, shm_files, tmp_out

__all__ = ["host", "leaked_shm_files", "pid_alive", "probe_chain", "shm_files", "tmp_out"]


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
