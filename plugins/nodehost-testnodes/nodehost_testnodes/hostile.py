"""A hostile node: tries one way out of its sandbox and reports what happened as text.

The report starts with ``allowed:`` when the attempt worked and ``denied:`` when something
stopped it, followed by what stopped it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import tempfile
from collections.abc import Iterator

from pydantic import BaseModel

import nodehost
from nodehost import RuntimeData


def _host_pid(target: str) -> int:
    return int(target) if target else os.getppid()


def _attempt(attempt: str, target: str) -> str:
    if attempt == "network":
        host, _, port = (target or "127.0.0.1:9").partition(":")
        with socket.create_connection((host, int(port or 9)), timeout=2):
            return "connected"
    if attempt in ("write_outside", "write_granted"):
        with open(target, "w", encoding="utf-8") as fh:
            fh.write("written by a node\n")
        return f"wrote {target}"
    if attempt == "read_outside":
        with open(target, encoding="utf-8", errors="replace") as fh:
            return f"read {len(fh.read())} chars of {target}"
    # "the host" is the parent process unless ``target`` names a pid: a node forked by the
    # host's zygote has the zygote as its parent, and both must stay out of reach.
    if attempt == "read_env":
        secrets = {k: v for k, v in os.environ.items() if "SECRET" in k}
        host_env = f"/proc/{_host_pid(target)}/environ"
        with open(host_env, "rb") as fh:
            return f"own env has {sorted(secrets)}; read {len(fh.read())} bytes of {host_env}"
    if attempt == "signal_host":
        os.kill(_host_pid(target), signal.SIGTERM)
        return f"signalled host {_host_pid(target)}"
    if attempt == "ptrace_host":
        libc = ctypes.CDLL(None, use_errno=True)
        ptrace_attach = 16
        if libc.ptrace(ptrace_attach, _host_pid(target), None, None) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return "attached to the host"
    if attempt == "fork_bomb":
        children = []
        for _ in range(int(target or 64)):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        return f"forked {len(children)} children"
    if attempt == "memory":
        hog = bytearray(int(target or 1024) * 1024 * 1024)
        return f"allocated {len(hog) >> 20} MiB"
    if attempt == "fill_tmp":
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "fill.bin")
        block = b"\0" * (1 << 20)
        with open(path, "wb") as fh:
            for _ in range(int(target or 4096)):
                fh.write(block)
        return f"wrote {os.path.getsize(path) >> 20} MiB to {path}"
    if attempt == "describe":  # not an escape: what the node's process looks like from inside
        return json.dumps(_describe())
    raise ValueError(f"unknown attempt {attempt!r}")


def _describe() -> dict[str, object]:
    import sys

    import numpy as np

    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
    no_new_privs = {}  # per thread: a thread started before the sandbox went on lacks it
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/status") as fh:
            no_new_privs[tid] = next((line.split()[1] for line in fh
                                      if line.startswith("NoNewPrivs:")), "?")
    return {"pid": os.getpid(), "no_new_privs": no_new_privs, "ppid": os.getppid(),
            "pgid": os.getpgid(0), "cwd": os.getcwd(), "sys_path0": sys.path[0],
            "env": dict(os.environ), "fds": fds, "random": float(np.random.random()),
            "tempdir": tempfile.gettempdir()}


class HostileParams(BaseModel):
    """The params of Hostile's manifest, typed (nodehost checks the names match)."""

    attempt: str
    target: str = ''


class Hostile(nodehost.Node[HostileParams]):
    def generate(self) -> Iterator[RuntimeData]:
        try:
            outcome = "allowed: " + _attempt(self.params.attempt, self.params.target)
        except MemoryError:
            outcome = "denied: MemoryError"
        except OSError as exc:
            outcome = f"denied: {type(exc).__name__}: {exc.strerror or exc}"
        yield RuntimeData.text(outcome)
