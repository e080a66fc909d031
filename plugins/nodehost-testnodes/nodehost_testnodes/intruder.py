"""More ways out of the sandbox than ``Hostile`` tries: processes that outlive the node,
execution of code it wrote, other processes by pid, unix sockets, raw/UDP sockets, raising
its own limits, huge files, new namespaces.

Same report convention as ``Hostile``: one text message, ``allowed: ...`` when the attempt
worked, ``denied: <exception>: <reason>`` when something stopped it. Every attempt is bounded
(a fork bomb forks at most ``target`` processes, lingering children sleep at most
``linger_s``), so a sandbox that fails to contain one cannot take the test machine down.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator

from pydantic import BaseModel

import nodehost
from nodehost import RuntimeData


def _linger(seconds: float, new_session: bool = False) -> None:
    """In a forked child: optionally leave the node's process group, sleep, exit."""
    try:
        if new_session:
            os.setsid()
        time.sleep(seconds)
    finally:
        os._exit(0)


def _fork_lingering(count: int, linger_s: float, new_session: bool = False) -> list[int]:
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            _linger(linger_s, new_session)
        pids.append(pid)
    return pids


def _attempt(attempt: str, target: str, linger_s: float) -> str:
    if attempt in ("orphan", "orphan_setsid"):
        # The child outlives this node unless the host kills it: the session must.
        (pid,) = _fork_lingering(1, linger_s, new_session=attempt == "orphan_setsid")
        return f"child left running pids={pid}"
    if attempt == "fork_bomb":
        # Bounded: target processes, all alive at once (a real bomb would never stop).
        pids = _fork_lingering(int(target or 64), linger_s)
        return f"forked {len(pids)} lingering children pids={','.join(map(str, pids))}"
    if attempt == "fill_tmp_sparse":
        # One byte at the file-size limit: RLIMIT_FSIZE refuses it without writing gigabytes.
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        offset = (limit if limit != resource.RLIM_INFINITY else 64 << 30) + int(target or 0)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "sparse.bin")
        with open(path, "wb") as fh:
            fh.seek(offset)
            fh.write(b"x")
        return f"wrote one byte at offset {offset} of {path}"
    if attempt == "fill_shm":
        path = f"/dev/shm/nodehost-intruder-{os.getpid()}"
        try:
            with open(path, "wb") as fh:
                for _ in range(int(target or 1)):
                    fh.write(b"\0" * (1 << 20))
            return f"wrote {os.path.getsize(path) >> 20} MiB to {path}"
        finally:
            if os.path.exists(path):
                os.unlink(path)
    if attempt == "raise_rlimit":
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY,) * 2)
        except ValueError as exc:  # CPython's way of saying EPERM for setrlimit
            raise PermissionError(1, str(exc)) from exc
        return "raised RLIMIT_DATA to unlimited"
    if attempt == "signal_pid":
        os.kill(int(target), signal.SIGTERM)
        return f"signalled {target}"
    if attempt == "signal_host_group":
        os.killpg(os.getpgid(int(target) if target else os.getppid()), signal.SIGTERM)
        return "signalled the host's process group"
    if attempt == "ptrace_pid":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.ptrace(16, int(target), None, None) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return f"attached to {target}"
    if attempt == "proc_mem":
        with open(f"/proc/{int(target) if target else os.getppid()}/mem", "rb") as fh:
            return f"opened the host's memory ({fh.name})"
    if attempt == "unix_abstract":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect("\0" + target)
        return f"connected to abstract socket {target!r}"
    if attempt == "unix_path":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(target)
        return f"connected to {target}"
    if attempt == "udp":
        host, _, port = (target or "127.0.0.1:9").partition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"ping", (host, int(port or 9)))
        return f"sent a datagram to {target}"
    if attempt == "netlink":
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0):
            return "opened a netlink socket"
    if attempt == "exec_written":
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "payload.sh")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("#!/bin/sh\necho escaped\n")
        os.chmod(path, stat.S_IRWXU)
        out = subprocess.run([path], capture_output=True, text=True, timeout=10, check=False)
        return f"executed {path}: {out.stdout.strip()}"
    if attempt == "write_code":
        # Opening for append and writing nothing: the file is left intact even if allowed.
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
        return f"opened {target} for writing"
    if attempt == "unshare":
        # In forked children: unshare(CLONE_NEWUSER) needs a single-threaded caller, and the
        # node process has threads. Each child reports errno as its exit status; the last
        # one, inside new user and mount namespaces (where it holds every capability of the
        # new namespace), also tries to mount a tmpfs over its temp dir.
        libc = ctypes.CDLL(None, use_errno=True)  # os.unshare is Python 3.12+
        tmp = os.environ.get("TMPDIR", "/tmp").encode()
        results = []
        for name, flags, mount in (("user ns", 0x10000000, False),
                                   ("mount ns", 0x00020000, False),
                                   ("user+mount ns", 0x10020000, False),
                                   ("mount inside them", 0x10020000, True)):
            pid = os.fork()
            if pid == 0:
                code = 255
                try:
                    code = ctypes.get_errno() if libc.unshare(flags) != 0 else 0
                    if code == 0 and mount:
                        failed = libc.mount(b"none", tmp, b"tmpfs", 0, None) != 0
                        code = ctypes.get_errno() if failed else 0
                finally:
                    os._exit(code)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            results.append(f"{name}: {os.strerror(code) if code else 'done'}")
        outcome = "; ".join(results)
        if "done" not in outcome:
            raise PermissionError(1, outcome)
        return outcome
    if attempt == "hang_ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deadline = time.monotonic() + linger_s
        while time.monotonic() < deadline:
            time.sleep(0.05)  # deaf to stop and SIGTERM: only SIGKILL ends it
        return "hung and was never stopped"
    raise ValueError(f"unknown attempt {attempt!r}")


class IntruderParams(BaseModel):
    """The params of Intruder's manifest, typed (nodehost checks the names match)."""

    attempt: str
    target: str = ''
    linger_s: float = 120.0
    hold_s: float = 0.0


class Intruder(nodehost.Node[IntruderParams]):
    def generate(self) -> Iterator[RuntimeData]:
        p = self.params
        try:
            outcome = "allowed: " + _attempt(p.attempt, p.target, p.linger_s)
        except MemoryError:
            outcome = "denied: MemoryError"
        except OSError as exc:
            outcome = f"denied: {type(exc).__name__}: {exc.strerror or exc}"
        yield RuntimeData.text(outcome)
        deadline = time.monotonic() + p.hold_s  # keep the session running, if asked to
        while time.monotonic() < deadline:
            time.sleep(0.05)
