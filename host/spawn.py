"""How a node process is started: exec'd (``python -m nodehost.runner``) or forked by the
host's zygote (``nodehost.zygote``), and the handle a session keeps of it either way.

A session owns its node processes through a :class:`NodeHandle`: the pid, the pipe with the
node's stdout and stderr, a pidfd (signals without pid-reuse races; readable when it exits),
``wait()`` for the exit code and ``kill_group()`` for what the node forked. The host owns the
zygote (``Host.close()`` ends it); a session only asks it for processes.

A node is forked by the zygote when it runs on the host's own interpreter and its pipeline
config sets no ``env`` for it (the zygote imported numpy and friends under the host's
environment; a node whose variables could change how those load — ``OMP_NUM_THREADS``,
``CT2_USE_MKL``… — is exec'd so they apply from its first instruction). Everything else, and
every node when the zygote is off or cannot start, is exec'd as before.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

from nodehost.errors import SessionError

log = logging.getLogger("nodehost.spawn")

__all__ = ["ExecHandle", "ForkedHandle", "NodeHandle", "Zygote", "ZygoteSlot", "exec_node",
           "zygote_enabled"]

ZYGOTE_ENV = "NODEHOST_ZYGOTE"  # "0": exec every node (Host(zygote=...) wins over it)
FORK_TIMEOUT_S = 60.0  # the first fork waits for the zygote's imports (a loaded machine)
ZYGOTE_MODULE = "nodehost.zygote"
ZYGOTE_EXIT_S = 10.0  # after EOF, the zygote kills and reaps its nodes: then SIGKILL


def zygote_enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    return os.environ.get(ZYGOTE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class NodeHandle(Protocol):
    """A started node process, as the session that owns it sees it."""

    pid: int
    pidfd: int
    stdout: IO[bytes]
    parent_pid: int  # the process the runner must find as its parent (launch.host_pid)
    lost: str | None  # set when the process ended with the zygote that forked it: why
    cpu_s: float | None  # its CPU time once reaped, when the reaper was the zygote (an exec'd
    #                      node's lands in the host's own RUSAGE_CHILDREN instead)

    def wait(self) -> int:
        """Block until the process has exited and been reaped; its Popen-style returncode."""

    def kill_group(self) -> None:
        """SIGKILL the node's process group while its pid cannot have been reused."""


class ExecHandle:
    """A runner exec'd by the host: the host is its parent and reaps it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        assert popen.stdout is not None
        self.stdout: IO[bytes] = popen.stdout
        self.parent_pid = os.getpid()
        self.lost: str | None = None
        self.cpu_s: float | None = None
        try:
            self.pidfd = os.pidfd_open(popen.pid)
        except BaseException:
            popen.kill()
            popen.wait()
            popen.stdout.close()
            raise

    def wait(self) -> int:
        return self.popen.wait()

    def kill_group(self) -> None:
        # only while it is not reaped: its pid, the group's id, cannot belong to anyone else
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def exec_node(python: str, control: socket.socket, env: Mapping[str, str], cwd: str
              ) -> ExecHandle:
    popen = subprocess.Popen(
        [python, "-m", "nodehost.runner", "--control-fd", str(control.fileno())],
        pass_fds=[control.fileno()],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        # Own process group: a Ctrl-C in the terminal reaches the host only, which then
        # stops the nodes in order instead of every node dying mid-message.
        process_group=0,
    )
    return ExecHandle(popen)


class ForkedHandle:
    """A runner forked by the zygote: the zygote reaps it (killing its group first) and
    reports the exit code; the pidfd came from the zygote, opened before any reap."""

    def __init__(self, pid: int, pidfd: int, stdout: IO[bytes], parent_pid: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.stdout = stdout
        self.parent_pid = parent_pid
        self.returncode: int | None = None
        self.lost: str | None = None
        self.cpu_s: float | None = None
        self._exited = threading.Event()

    def _ended(self, code: int, cpu_s: float | None = None) -> None:
        if self.returncode is None:
            self.returncode = code
            self.cpu_s = cpu_s
        self._exited.set()

    def wait(self) -> int:
        self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def kill_group(self) -> None:
        pass  # the zygote kills the group before it reaps the node, the only safe moment


class _Request:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] = {}
        self.pidfd = -1


class Zygote:
    """The host's zygote process and the thread that owns it.

    The thread starts the process (so the zygote's parent-death signal is tied to a thread
    that lives exactly as long as it), then reads every message the zygote sends: fork
    replies and exit reports. ``close()`` ends the zygote; its children die with it.
    """

    def __init__(self, env: Mapping[str, str], python: str = sys.executable) -> None:
        self.python = python
        self.tmp_dir = tempfile.mkdtemp(prefix="nodehost-zygote-")
        self._env = {**env, "HOME": self.tmp_dir, "TMPDIR": self.tmp_dir}
        self._sock, self._zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._zygote_end.set_inheritable(True)
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._children: dict[int, ForkedHandle] = {}
        self._early_exits: dict[int, tuple[int, float]] = {}  # reports that beat the reply
        self._abandoned: set[int] = set()  # forked after fork() gave up waiting: killed
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._started = threading.Event()
        self.pid = 0
        self.error: str | None = None  # why it ended, once it has
        self.was_ready = False
        self.closed = False
        self._popen: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._own, name="nodehost-zygote", daemon=True)
        self._thread.start()
        self._started.wait()

    @property
    def alive(self) -> bool:
        return self.error is None and not self.closed

    # -- the owning thread ---------------------------------------------------------------
    def _own(self) -> None:
        try:
            self._popen = subprocess.Popen(
                [self.python, "-m", ZYGOTE_MODULE, "--fd", str(self._zygote_end.fileno()),
                 "--host-pid", str(os.getpid()), "--tmp-dir", self.tmp_dir],
                pass_fds=[self._zygote_end.fileno()], env=self._env, cwd=self.tmp_dir,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, process_group=0)
        except OSError as exc:
            self.error = f"the zygote could not start: {exc}"
        finally:
            self._zygote_end.close()
            self._started.set()
        if self._popen is None:
            self._end()
            return
        try:
            while self._dispatch():
                pass
        except (ValueError, KeyError, TypeError) as exc:  # it is our code: a bug, said so
            self.error = f"the zygote sent a message the host cannot read: {exc!r}"
        finally:
            self._sock.close()  # EOF: a zygote still running ends its nodes and exits
            try:
                code = self._popen.wait(ZYGOTE_EXIT_S)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                code = self._popen.wait()
            if self.error is None and not self.closed:
                self.error = f"the zygote ended (exit code {code})"
            self._end()

    def _dispatch(self) -> bool:
        try:
            raw, fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 1)
        except OSError:
            return False
        if not raw:
            return False
        message = json.loads(raw)
        kind = message.get("t")
        if kind == "ready":
            self.pid = int(message["pid"])
            self.was_ready = True
            self._ready.set()
        elif kind in ("forked", "failed"):
            with self._lock:
                request = self._requests.pop(message.get("id"), None)
                if request is None and kind == "forked":
                    self._abandoned.add(int(message["pid"]))
            if request is None:
                # fork() gave up waiting and the node was exec'd instead: this runner must
                # never run (it holds the same control socket)
                for fd in fds:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    os.close(fd)
            else:
                request.reply = message
                request.pidfd = fds[0] if fds else -1
                request.done.set()
        elif kind == "exit":
            pid, code = int(message["pid"]), int(message["code"])
            cpu_s = float(message.get("cpu_s", 0.0))
            with self._lock:
                child = self._children.pop(pid, None)
                if child is None and pid not in self._abandoned:
                    self._early_exits[pid] = (code, cpu_s)
                self._abandoned.discard(pid)
            if child is not None:
                child._ended(code, cpu_s)
        return True

    def _end(self) -> None:
        """The zygote is gone: nothing more will be forked, and every child it had is dead
        (parent-death signal) — their waits return."""
        self._ready.set()
        with self._lock:
            requests, self._requests = self._requests, {}
            children, self._children = self._children, {}
        for request in requests.values():
            request.done.set()
        if children and not self.closed:
            log.warning("%s while %d node(s) it forked ran: they ended with it", self.error,
                        len(children))
        for child in children.values():
            child.lost = self.error or "the zygote ended"
            child._ended(-signal.SIGKILL)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    # -- for sessions --------------------------------------------------------------------
    def fork(self, control: socket.socket, env: Mapping[str, str], cwd: str) -> ForkedHandle:
        """A runner forked with ``control`` as its control socket, ``env`` as its whole
        environment and ``cwd`` as its working directory. Raises SessionError when the
        zygote cannot (the caller then execs the node instead)."""
        if not self._ready.wait(FORK_TIMEOUT_S) or not self.alive:
            raise SessionError(self.error or "the zygote did not get ready in "
                               f"{FORK_TIMEOUT_S:g} s")
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        request = _Request()
        request_id = next(self._ids)
        with self._lock:
            self._requests[request_id] = request
        try:
            raw = json.dumps({"t": "fork", "id": request_id, "env": dict(env), "cwd": cwd})
            with self._send_lock:
                socket.send_fds(self._sock, [raw.encode()], [control.fileno(), write_end])
        except OSError as exc:
            with self._lock:
                self._requests.pop(request_id, None)
            os.close(read_end)
            raise SessionError(f"the zygote is gone ({exc})") from exc
        finally:
            os.close(write_end)
        if not request.done.wait(FORK_TIMEOUT_S):
            with self._lock:
                gave_up = self._requests.pop(request_id, None) is not None
            if gave_up:  # a late reply is killed by _dispatch, never used
                os.close(read_end)
                raise SessionError(f"the zygote did not answer in {FORK_TIMEOUT_S:g} s")
            request.done.wait()  # the reply came in just now
        if request.reply.get("t") != "forked":
            os.close(read_end)
            raise SessionError(request.reply.get("error") or self.error or
                               "the zygote ended")
        pid = int(request.reply["pid"])
        output = open(read_end, "rb", buffering=0)  # noqa: SIM115 - the session closes it
        handle = ForkedHandle(pid, request.pidfd, output, self.pid)
        with self._lock:
            early = self._early_exits.pop(pid, None)
            if early is None and self.alive:
                self._children[pid] = handle
        if early is not None:
            handle._ended(*early)
        elif not self.alive:
            handle._ended(-signal.SIGKILL)
        return handle

    def close(self) -> None:
        """End the zygote (a node it forked that is still running is killed with it) and
        wait for its owning thread."""
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not threading.current_thread():
            self._thread.join()


class ZygoteSlot:
    """A host's zygote: started on first use, started again if it died (at most
    ``MAX_RESTARTS`` times, and never when it did not even get ready: then every node is
    exec'd for the rest of the host's life), ended by ``close()`` (the host's, or its
    finalizer's when a host is dropped unclosed)."""

    MAX_RESTARTS = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: Zygote | None = None
        self._closed = False
        self._restarts = 0
        self._given_up = False

    def get(self, env: Callable[[], Mapping[str, str]]) -> Zygote | None:
        with self._lock:
            if self._closed or self._given_up:
                return None
            zygote = self._zygote
            if zygote is not None and not zygote.alive:
                zygote.close()
                if not zygote.was_ready or self._restarts >= self.MAX_RESTARTS:
                    self._given_up = True
                    log.warning("%s; nodes are exec'd from now on", zygote.error)
                    return None
                self._restarts += 1
                log.warning("starting a new zygote: %s", zygote.error)
                zygote = None
            if zygote is None:
                zygote = self._zygote = Zygote(env())
            return zygote if zygote.alive else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()
