"""The zygote: a process that has imported what every node runner needs, and forks runners.

Starting a node by ``python -m nodehost.runner`` costs ~0.38 s of CPU, nearly all of it
imports (iceoryx2, numpy, pydantic and the manifest models). A session of five nodes paid that
five times on two cores. The zygote pays it once per host: ``fork()`` gives each runner those
modules already imported, and the runner then does exactly what an exec'd runner does — arms
its parent-death signal, reads its launch, opens its channels, **applies its sandbox** (the
same ``sandbox.apply``: Landlock, seccomp, rlimits, no_new_privs, capabilities dropped) and
only then imports the node's plugin code. No plugin code is ever imported here: nothing a
plugin does runs outside a sandbox.

Host ↔ zygote protocol (a ``SOCK_SEQPACKET`` socketpair, JSON messages, fds by SCM_RIGHTS):

    zygote → host  ready {pid}                  imports done
    host → zygote  fork {id, env, cwd} + fds    [control socket's node end, output pipe]
    zygote → host  forked {id, pid} + [pidfd]   the child runs; the pidfd is opened by its
                                                parent, before any reap, so it is the child's
                   failed {id, error}
                   exit {pid, code, cpu_s}      the child ended (code as Popen's returncode;
                                                its CPU time, user + system, from wait4);
                                                its process group was SIGKILLed before the
                                                reap, as the host does for exec'd nodes

The zygote's parent-death signal (SIGTERM) is tied to the host thread that started it; each
child's (SIGKILL) to the zygote (the runner arms it first thing). When the host goes — closed
(EOF on the socket) or killed (the signal) — the zygote SIGKILLs the process group of every
node it still has (what the nodes forked, which has no parent-death signal of its own), reaps
them and removes their temp dirs, which a SIGKILLed host cannot do itself. A SIGKILLed
zygote takes its nodes with it (their own signal), not what they forked.

What differs from an exec'd runner, on purpose and documented (docs/architecture.md):
children share the zygote's address-space layout (ASLR is per zygote, not per node) and its
``str`` hash seed. ``Host(zygote=False)`` or ``NODEHOST_ZYGOTE=0`` exec every node instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

MAX_REQUEST = 1 << 20  # one fork request: the node's environment and cwd
# What every runner imports before its node's code: imported here once, shared by fork.
PREIMPORT = ("numpy", "pydantic", "iceoryx2", "nodehost.manifest", "nodehost.channels",
             "nodehost.runner", "nodehost.sandbox", "nodehost.data", "nodehost.wire",
             "nodehost.stats", "nodehost.plan", "nodehost.protocol")
CHILD_CONTROL_FD = 3  # where a child finds its control socket (like exec'd runners' argv)


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    raw = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [raw], fds)
    else:
        sock.send(raw)


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become a fresh runner's process, run it, never return."""
    from nodehost import runner
    from nodehost.protocol import ExitCode

    code: int = ExitCode.RUNNER_ERROR
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        control, output = fds
        # stdin, stdout and stderr as Popen gives an exec'd runner; the control socket at a
        # fixed number; every other fd of the zygote closed (its socket to the host, the
        # other children's fds it may still hold).
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(control, CHILD_CONTROL_FD)
        os.closerange(CHILD_CONTROL_FD + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = request["cwd"]  # as `python -m` in that directory would have it
        sys.argv = [runner.__file__, "--control-fd", str(CHILD_CONTROL_FD)]
        import tempfile

        tempfile.tempdir = None  # TMPDIR is the node's own now
        if "numpy" in sys.modules:  # numpy's global generator is not reseeded by fork
            sys.modules["numpy"].random.seed()
        code = runner.main(["--control-fd", str(CHILD_CONTROL_FD)])
    except BaseException:  # the child must never return into the zygote
        traceback.print_exc()
    runner.exit_now(code)


class _Zygote:
    def __init__(self, sock: socket.socket, tmp_dir: str) -> None:
        self.sock = sock
        self.tmp_dir = tmp_dir  # its own (HOME, TMPDIR, cwd): removed as it goes
        self.children: dict[int, str] = {}  # pid -> the node's temp dir (its cwd)
        # Every temp dir a node was forked into: the host removes each when its session
        # ends; if the host dies first, shut_down() does (a node may exit on its own first).
        self.dirs: set[str] = set()
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def serve(self) -> None:
        _send(self.sock, {"t": "ready", "pid": os.getpid()})
        while True:
            readable, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                while True:
                    try:
                        if not os.read(self.wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            self.reap()
            if self.sock.fileno() in readable and not self.handle_request():
                return

    def handle_request(self) -> bool:
        try:
            raw, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_REQUEST, 2)
        except OSError:
            raw, fds = b"", []
        if not raw:
            for fd in fds:
                os.close(fd)
            return False  # the host closed its end, or died
        request_id = None
        try:
            request = json.loads(raw)
            request_id = request["id"]
            if len(fds) != 2:
                raise ValueError(f"a fork request carries 2 fds, not {len(fds)}")
            pid = os.fork()
            if pid == 0:
                # nothing of other sessions' nodes stays in the child's memory
                self.sock.close()
                self.children.clear()
                self.dirs.clear()
                _child(request, fds)  # never returns
            self._remember(request["cwd"])
            try:
                pidfd = os.pidfd_open(pid)
                try:
                    _send(self.sock, {"t": "forked", "id": request_id, "pid": pid}, [pidfd])
                finally:
                    os.close(pidfd)
            except BaseException:
                # forked but not handed over: it must not run (the host execs the node)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise
            self.children[pid] = request["cwd"]
        except Exception as exc:  # reported to the host; the zygote goes on
            with contextlib.suppress(OSError):
                _send(self.sock, {"t": "failed", "id": request_id, "error": repr(exc)})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _remember(self, tmp_dir: str) -> None:
        if len(self.dirs) >= 256:  # a long-lived host: forget the dirs already removed
            self.dirs = {d for d in self.dirs if os.path.exists(d)}
        self.dirs.add(tmp_dir)

    def reap(self, block: bool = False) -> None:
        for pid in list(self.children):
            flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
            try:
                if os.waitid(os.P_PID, pid, flags) is None:
                    continue
                # Exited but not reaped: its pid is still its group's id. What it forked
                # goes too, as for an exec'd node (the host kills that group itself).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
            except ChildProcessError:
                self.children.pop(pid, None)
                continue
            self.children.pop(pid, None)
            with contextlib.suppress(OSError):  # the host is gone: the reap still mattered
                _send(self.sock, {"t": "exit", "pid": pid,
                                  "code": os.waitstatus_to_exitcode(status),
                                  "cpu_s": usage.ru_utime + usage.ru_stime})

    def shut_down(self) -> None:
        """The host is gone: end every node still here, with whatever it forked (not yet
        reaped, a node's pid is still its group's id), and remove the nodes' temp dirs (after
        a clean ``Host.close()`` their sessions removed them already)."""
        import shutil

        for pid in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reap(block=True)
        for tmp_dir in (*self.dirs, self.tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up must not be cut short
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from nodehost import sandbox

    parser = argparse.ArgumentParser(prog="nodehost.zygote")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--host-pid", type=int, required=True)
    parser.add_argument("--tmp-dir", required=True)
    args = parser.parse_args(argv)
    # SIGTERM when the host dies: shut_down() below ends the nodes and what they forked
    signal.signal(signal.SIGTERM, _terminated)
    sandbox.preexec(expected_parent=args.host_pid, death_signal=signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host stops the zygote, not a Ctrl-C
    # blocked in the host thread that started us, and kept blocked through exec
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    sock = socket.socket(fileno=args.fd)
    zygote = _Zygote(sock, args.tmp_dir)
    try:
        for name in PREIMPORT:
            __import__(name)
        zygote.serve()
    except SystemExit:
        pass
    finally:
        zygote.shut_down()
    return 0


if __name__ == "__main__":
    os._exit(main())
