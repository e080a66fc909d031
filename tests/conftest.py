"""Shared fixtures: a real Host over the installed plugins, and leak checks.

Every test that starts sessions is checked afterwards for leftover node processes and
iceoryx2 shared-memory files: a leak fails the test that caused it.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import nodehost
from nodehost.testing import host, leaked_shm_files, shm_files, tmp_out

__all__ = ["ManifestsPlugin", "host", "leaked_shm_files", "pid_alive", "probe_chain",
           "shm_files", "tmp_out"]


class ManifestsPlugin:
    """An in-process plugin whose manifest hook returns ``items``, whatever they are."""

    def __init__(self, items: Any) -> None:
        self.items = items

    @nodehost.hookimpl
    def nodehost_node_manifests(self) -> Any:
        return self.items


@pytest.fixture
def listener() -> Iterator[str]:
    """A TCP server on 127.0.0.1 for sandbox tests to try to reach: "host:port"."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


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
