"""Sessions: a running pipeline that owns its node processes.

A session starts every node process at once, watches them from one supervisor thread that
waits on events only (pidfds for process exits, the control sockets, the nodes' stderr, a
wake-up pipe for ``stop()``) with the nearest deadline as the timeout — never a
sleep-and-poll loop — and when anything fails it stops every process (graceful, then
forced), reaps them, releases their shared memory and reports which node failed and why.
The supervisor thread is also the thread that spawns the children it execs: their
parent-death signal is tied to it, and it lives until every child is reaped. Children the
host's zygote forks (``nodehost.spawn``) are the zygote's; the session watches them the same
way (pidfd, control socket, output pipe) and gets their exit codes from the zygote.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import os
import queue
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import psutil

from nodehost import protocol, stats
from nodehost.config import PipelineConfig, ValidatedPipeline, load_config, validate_pipeline
from nodehost.discovery import Registry, discover
from nodehost.endpoints import SessionIO, open_ends
from nodehost.errors import HostClosed, IllegalTransition, NodehostError, SessionError
from nodehost.lifecycle import (
    NodeProcess,
    ProcessChannelBinding,
    ProcessStatus,
    Role,
    SessionProcessMap,
    SharedMemoryChannel,
)
from nodehost.nodelog import NodeOutput
from nodehost.plan import HostEnds, NodeLaunch, new_session_id, plan_host_ends, plan_session
from nodehost.protocol import Cause, ExitCode, Kind, Stage
from nodehost.spawn import NodeHandle, Zygote, ZygoteSlot, exec_node, zygote_enabled

log = logging.getLogger("nodehost.session")

HEARTBEAT_S = 2.0  # a node still initializing is reported at least this often
FAIL_GRACE_S = 0.1  # after a failure, nodes get this long to exit before SIGTERM
KILL_GRACE_S = 1.0  # ... and this long after SIGTERM before SIGKILL
# (a stop the user asked for waits the pipeline's stop_grace_s instead of FAIL_GRACE_S)
OUTPUT_TAIL_LINES = 10  # a crash report quotes this many of the node's last output lines

S = ProcessStatus
NODE_STAGES = frozenset(stage for stage in Stage if stage.in_node_code)


@dataclass(frozen=True)
class SessionResult:
    ok: bool
    reason: str
    failed_node: str | None = None
    failed_node_type: str | None = None
    duration_s: float = 0.0
    failed_machine: str | None = None  # sessions spread over machines (nodehost.remote)


@dataclass
class _Child:
    launch: NodeLaunch
    process: NodeProcess
    proc: NodeHandle  # its pid, pidfd, output pipe, exit code
    sock: socket.socket
    tmp_dir: str
    output: NodeOutput
    done: bool = False
    error: str | None = None
    error_kind: str | None = None
    exited: bool = False
    sandbox: list[str] = field(default_factory=list)
    last_report: float = 0.0

    @property
    def label(self) -> str:
        return f"node {self.launch.node_id!r} ({self.launch.node_type})"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_HOST_ONLY = object()  # Session's constructor is Host's: a session always has its owner


class Session(SessionIO):
    """A running pipeline that owns its node processes (and, through ``SessionIO``, the
    host's ends of its session inputs and outputs). Made only by ``Host.start_session``,
    which registers it with the host before its supervisor starts."""

    def __init__(self, host: Host, pipeline: ValidatedPipeline, *,
                 python: str | None = None, session_id: str | None = None,
                 _owner: object = None) -> None:
        if _owner is not _HOST_ONLY:
            raise TypeError("a Session is made by Host.start_session(config), which owns it")
        self.host = host
        self.pipeline = pipeline
        self.name = pipeline.config.name
        # a given id: one machine's part of a session spread over machines (nodehost.remote)
        self.id = session_id or new_session_id(self.name)
        self.launches = plan_session(pipeline, self.id)
        for launch in self.launches:
            launch.stats_interval_s = host.stats_interval_s
        host_ends = plan_host_ends(pipeline, self.launches)
        # The session's own record of its processes, channels and bindings: what
        # processes(), channels() and the stats events report.
        self._map = _allocate_channels(self.id, pipeline.config.max_processes, self.launches,
                                       host_ends)
        self._ready = threading.Event()
        self._ready_or_ended = threading.Event()
        self._ends = open_ends(self.id, pipeline, host_ends)
        self.python = python or sys.executable
        self.started_at = time.time()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._result: SessionResult | None = None
        self._finished = threading.Event()
        self._spawned = threading.Event()
        self._spawn_error: BaseException | None = None
        # The wake-up pipe lives as long as this object, not the supervisor: cancel() may
        # write to it at any moment (from a signal handler), never to a reused fd number.
        self._wake_r, self._wake_w = os.pipe()
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._stop_requested: str | None = None
        self._kill_requested = False
        self._failure: tuple[str, str, str] | None = None  # node, type, reason
        self._thread = threading.Thread(target=self._supervise, name=f"nodehost-{self.id}",
                                        daemon=True)

    def _start(self) -> None:
        """Start the supervisor; return once every node process is spawned. Host only."""
        self._thread.start()
        try:
            self._spawned.wait()
        except BaseException:  # e.g. Ctrl-C in an embedding program: nothing may outlive it
            self.cancel("interrupted while starting", graceful=False)
            self._thread.join()
            raise
        if self._spawn_error is not None:
            self._thread.join()
            raise SessionError(f"session {self.id} could not start: {self._spawn_error}"
                               ) from self._spawn_error

    # -- public API ----------------------------------------------------------------------
    def status(self) -> dict[str, ProcessStatus]:
        with self._lock:
            return {node_id: c.process.status for node_id, c in self._children.items()}

    def processes(self) -> dict[str, NodeProcess]:
        """The node processes' records: a consistent snapshot, as the last stats event."""
        with self._lock:
            return copy.deepcopy(self._map.processes)

    def channels(self) -> dict[str, SharedMemoryChannel]:
        """The channels' records (state, figures) by name: a consistent snapshot."""
        with self._lock:
            return copy.deepcopy(self._map.channels)

    def bindings(self) -> list[ProcessChannelBinding]:
        """Which process publishes or subscribes which channel, since and until when."""
        with self._lock:
            return list(self._map.bindings)

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Every event of the session in order, ending with ``session_end``."""
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                return
            yield event
            if event["event"] == "session_end":
                return

    def wait(self, timeout: float | None = None) -> SessionResult:
        if not self._finished.wait(timeout):
            raise TimeoutError(f"session {self.id} still running after {timeout} s")
        assert self._result is not None
        return self._result

    @property
    def result(self) -> SessionResult | None:
        return self._result

    def stop(self, reason: str = "stopped by request", timeout: float | None = None
             ) -> SessionResult:
        """Stop the session and wait for its end: nodes get the pipeline's ``stop_grace_s``
        to run ``cleanup()``, then they are terminated."""
        self.cancel(reason)
        return self.wait(timeout)

    def cancel(self, reason: str = "stopped by request", *, graceful: bool = True) -> None:
        """Ask the session to stop and return at once. Safe in a signal handler (no lock).
        ``graceful=False`` (or a second call) kills the nodes now instead of waiting
        ``stop_grace_s`` for their ``cleanup()``; the session still reaps and releases all."""
        if self._finished.is_set():
            return
        if self._stop_requested is None:
            self._stop_requested = reason
        if not graceful:
            self._kill_requested = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- events --------------------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "ts": time.time(), "session": self.id, **fields}
        self._events.put(event)
        self.host.registry.notify(event)
        listener = self.host.on_event
        if listener is not None:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def _memory(self, child: _Child) -> int | None:
        try:
            return int(psutil.Process(child.proc.pid).memory_info().rss)
        except (psutil.Error, OSError):
            return None

    def _status_event(self, child: _Child) -> None:
        proc = child.process
        child.last_report = time.monotonic()
        figures = proc.figures
        self._emit("status", node=proc.node_id, node_type=proc.node_type, pid=proc.pid,
                   status=proc.status.value, memory_usage=proc.memory_usage,
                   memory_limit=None if child.launch.memory_mb is None
                   else child.launch.memory_mb << 20,
                   error=proc.error, sandbox=child.sandbox,
                   stats={"received": figures.received, "sent": figures.sent,
                          "first_output_ts": figures.first_output_ts}
                   if figures.reported_at else None)

    def _stats_event(self, final: bool = False) -> None:
        for child in self._children.values():
            if not child.exited:
                child.process.memory_usage = self._memory(child)
        with self._lock:
            fields = stats.stats_fields(self._map)
        self._emit("stats", final=final, **fields)

    def _set_status(self, child: _Child, status: ProcessStatus, error: str | None = None,
                    memory: int | None = None) -> None:
        proc = child.process
        if proc.status == status:
            return
        try:
            with self._lock:
                proc.set_status(status)
                if error:
                    proc.error = error
                if status == S.INITIALIZING:  # the runner has opened its channel ends
                    self._bind(child.launch)
        except IllegalTransition as exc:
            log.debug("%s", exc)  # e.g. an error reported while already stopping
            return
        if memory is not None:  # the node's own figure (VmData at a failure): RSS misleads
            proc.memory_usage = memory
        elif not child.exited:
            proc.memory_usage = self._memory(child)
        self._status_event(child)

    def _bind(self, launch: NodeLaunch) -> None:
        for port in launch.outputs:
            self._map.bind(ProcessChannelBinding(launch.node_id, port.port, port.channel,
                                                 Role.PUBLISHER))
        for port in launch.inputs:
            self._map.bind(ProcessChannelBinding(launch.node_id, port.port, port.channel,
                                                 Role.SUBSCRIBER))

    # -- supervisor ----------------------------------------------------------------------
    def _interpreter(self, launch: NodeLaunch) -> str:
        """The host's Python, or the node's own environment (built once, then cached)."""
        from nodehost.envs import EnvError, env_for_node_type

        node_type = self.host.registry.get(launch.node_type)
        if node_type.manifest.runtime is None:
            return self.python

        def progress(fraction: float, message: str) -> None:
            self._emit("progress", node=launch.node_id, node_type=launch.node_type,
                       fraction=fraction, message=f"environment: {message}")

        try:
            return env_for_node_type(node_type, progress) or self.python
        except EnvError as exc:
            raise SessionError(f"node {launch.node_id!r} ({launch.node_type}): {exc}") from exc

    def _spawn_all(self) -> None:
        pythons: dict[str, str] = {}
        for launch in self.launches:
            if self._stop_requested is not None:
                return
            pythons[launch.node_id] = self._interpreter(launch)
        for launch in self.launches:
            if self._stop_requested is not None:
                return  # stopped while starting: the loop tears down what was spawned
            self._spawn(launch, pythons[launch.node_id])

    def _spawn(self, launch: NodeLaunch, python: str) -> None:
        """Start one node process and take ownership of it (and its temp dir) at once:
        whatever fails after this point, the supervisor reaps and removes what exists."""
        tmp_dir = tempfile.mkdtemp(prefix=f"nodehost-{self.id}-{launch.node_id}-")
        launch.tmp_dir = tmp_dir
        host_end, node_end = protocol.pair()
        try:
            env = self.host.node_env(tmp_dir, launch.env)
            handle: NodeHandle | None = None
            zygote = self.host.zygote_for(python) if not launch.env else None
            if zygote is not None:
                try:
                    handle = zygote.fork(node_end, env, tmp_dir)
                except SessionError as exc:  # exec'd instead: slower, never weaker
                    log.warning("node %r: the zygote cannot fork it (%s); starting it with "
                                "%s -m nodehost.runner", launch.node_id, exc, python)
                    # a fresh socket: the old node end went to the zygote, which may
                    # still hold it
                    host_end.close()
                    node_end.close()
                    host_end, node_end = protocol.pair()
            if handle is None:
                handle = exec_node(python, node_end, env, tmp_dir)
        except BaseException:
            host_end.close()
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        finally:
            node_end.close()
        launch.host_pid = handle.parent_pid
        process = NodeProcess(launch.node_id, launch.node_type, pid=handle.pid,
                              session_id=self.id,
                              input_channels=[p.channel for p in launch.inputs],
                              output_channels=[p.channel for p in launch.outputs])
        child = _Child(launch, process, handle, host_end, tmp_dir,
                       NodeOutput(launch.node_id, self.host.log_dir))
        with self._lock:
            self._map.add_process(process)
            self._children[launch.node_id] = child
        protocol.send(host_end, Kind.LAUNCH, spec=launch.to_json())

    def _supervise(self) -> None:
        # A terminal's Ctrl-C goes to the host's process group, and a node is in it from
        # fork until it moves to its own group: blocked here, the signal stays blocked
        # (pending) through exec, and the runner discards it. Python handles signals in
        # the main thread anyway.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._spawn_all()
        except BaseException as exc:
            self._spawn_error = exc
        self._spawned.set()
        try:
            if self._spawn_error is not None:
                self._kill_all()
                return
            for child in self._children.values():
                child.process.memory_usage = self._memory(child)
                self._status_event(child)
            self._loop()
        except BaseException as exc:
            log.exception("supervisor failed")
            self._fail(None, f"nodehost supervisor error: {exc!r}")
            self._kill_all()
        finally:
            self._reap_all()
            self._release()
            self._finish()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for child in self._children.values():
            sel.register(child.sock, selectors.EVENT_READ, ("control", child))
            sel.register(child.proc.pidfd, selectors.EVENT_READ, ("exit", child))
            assert child.proc.stdout is not None
            os.set_blocking(child.proc.stdout.fileno(), False)
            sel.register(child.proc.stdout, selectors.EVENT_READ, ("output", child))
        init_deadline = time.monotonic() + self.pipeline.config.init_timeout_s
        started = False
        stop_deadline: float | None = None
        killed = killed_hard = False
        next_stats = time.monotonic() + self.host.stats_interval_s
        while any(not c.exited for c in self._children.values()):
            now = time.monotonic()
            deadlines = [init_deadline, next_stats] if not started else [next_stats]
            if stop_deadline is not None:
                deadlines.append(stop_deadline)
            initializing = [c for c in self._children.values()
                            if c.process.status in (S.IDLE, S.INITIALIZING)]
            deadlines += [c.last_report + HEARTBEAT_S for c in initializing]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            for key, _ in sel.select(timeout):
                if sel.get_map().get(key.fd) is not key:
                    continue  # unregistered by an earlier event of this batch (its exit)
                kind, child = key.data
                if kind == "wake":
                    os.read(self._wake_r, 64)
                elif kind == "control":
                    self._on_control(sel, child)
                elif kind == "output":
                    self._on_output(sel, child)
                elif kind == "exit":
                    sel.unregister(child.proc.pidfd)
                    self._on_exit(sel, child)
            now = time.monotonic()
            if now >= next_stats:
                self._stats_event()
                next_stats = now + self.host.stats_interval_s
            for child in initializing:
                if not child.exited and now - child.last_report >= HEARTBEAT_S:
                    child.process.memory_usage = self._memory(child)
                    self._status_event(child)
            if not started and self._failure is None and self._stop_requested is None:
                if all(c.process.status == S.READY for c in self._children.values()):
                    started = True
                    for child in self._children.values():
                        protocol.send(child.sock, Kind.START)
                    self._io_started()
                elif now >= init_deadline:
                    pending = [c for c in self._children.values()
                               if c.process.status in (S.IDLE, S.INITIALIZING)]
                    # A node stuck in its own initialize() is the one to name, not a sibling
                    # that a loaded machine is still starting (Idle: the runner's own imports).
                    late = next((c for c in pending if c.process.status == S.INITIALIZING),
                                pending[0])
                    self._fail(late, f"did not become Ready within init_timeout_s="
                                     f"{self.pipeline.config.init_timeout_s:g} s", "timeout")
            if self._kill_requested and not killed_hard:
                self._kill_all()  # asked to stop without grace (e.g. a second Ctrl-C)
                killed_hard = killed = True
                stop_deadline = now + KILL_GRACE_S
            if (self._failure is not None or self._stop_requested is not None) \
                    and stop_deadline is None:
                self._request_stop()
                # A stop the user asked for lets nodes finish cleanup(); a failure does not wait.
                grace = self.pipeline.config.stop_grace_s if self._failure is None \
                    else FAIL_GRACE_S
                stop_deadline = now + grace
            elif stop_deadline is not None and now >= stop_deadline:
                if not killed:
                    if self._failure is None:
                        self._overran_grace()
                    self._signal_all(signal.SIGTERM)
                    killed = True
                    stop_deadline = now + KILL_GRACE_S
                else:
                    self._kill_all()
                    stop_deadline = now + KILL_GRACE_S
        sel.close()

    def _on_control(self, sel: selectors.BaseSelector, child: _Child) -> None:
        message = protocol.receive(child.sock)
        if message is None:
            sel.unregister(child.sock)
            return
        kind = message["t"]
        if kind == Kind.STATUS:
            if message.get("sandbox") is not None:
                child.sandbox = list(message["sandbox"])
            try:
                self._set_status(child, S(message["status"]))
            except ValueError:
                log.warning("%s sent unknown status %r", child.label, message.get("status"))
        elif kind == Kind.PROGRESS:
            self._emit("progress", node=child.launch.node_id, node_type=child.launch.node_type,
                       fraction=message.get("fraction"), message=message.get("message", ""))
            child.last_report = time.monotonic()
        elif kind == Kind.STATS:
            with self._lock:
                stats.apply_report(self._map, child.launch.node_id, message)
        elif kind == Kind.DONE:
            child.done = True
        elif kind == Kind.ERROR:
            child.error = str(message.get("error", "unknown error"))
            child.error_kind = message.get("cause")
            stage = message.get("stage", "")
            where = f" in {stage}()" if stage in NODE_STAGES else \
                f" during {stage}" if stage else ""
            memory = None
            if child.error_kind == Cause.MEMORY:
                reason = self._memory_reason(child, where, child.error)
                memory = message.get("memory_used")
            elif child.error_kind == Cause.SANDBOX:
                index = self.pipeline.nodes[child.launch.node_id].index
                reason = (f"was denied {message.get('path')} by its sandbox{where}; add its "
                          f"folder to nodes[{index}].sandbox.{message.get('grant')}; the "
                          f"error: {child.error}")
            else:
                reason = f"failed{where}: {child.error}"
            tb = message.get("traceback")
            if tb:
                log.info("%s traceback:\n%s", child.label, tb)
            if self._failure is None and self._stop_requested is not None \
                    and child.process.status == S.STOPPING:
                # Interrupted by the stop we asked for (e.g. SIGTERM inside initialize()):
                # a consequence of the stop, not a failure of the node.
                log.info("%s after the stop: %s", child.label, reason)
                return
            self._set_status(child, S.ERROR, error=reason, memory=memory)
            self._fail(child, reason, child.error_kind or "exception")
        elif kind == Kind.LOG:
            child.output.record(message.get("level", "INFO"), message.get("message", ""))
            self._emit("log", node=child.launch.node_id, node_type=child.launch.node_type,
                       level=message.get("level", "INFO"), message=message.get("message", ""))

    def _memory_reason(self, child: _Child, where: str, detail: str) -> str:
        """A failure at the memory limit, worded as that, with what to change in the config."""
        index = self.pipeline.nodes[child.launch.node_id].index
        reason = (f"hit its memory limit of {child.launch.memory_mb} MiB{where} "
                  f"(raise nodes[{index}].resources.memory_mb)")
        return f"{reason}; the error: {detail}" if detail else reason

    def _on_output(self, sel: selectors.BaseSelector, child: _Child) -> None:
        """A node's stdout/stderr: always read (a full pipe would block the node), lines
        kept for crash reports and --log-dir, emitted as ``log`` events within a budget."""
        assert child.proc.stdout is not None
        try:
            chunk = os.read(child.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(child.proc.stdout)
        for line in child.output.feed(chunk):
            self._emit("log", node=child.launch.node_id, node_type=child.launch.node_type,
                       level="OUTPUT", message=line)

    def _output_tail(self, child: _Child, lines: int = OUTPUT_TAIL_LINES) -> str:
        return "\n".join(child.output.last_lines(lines))

    def _on_exit(self, sel: selectors.BaseSelector, child: _Child) -> None:
        # What the node forked (its process group) is the session's too, and has no
        # parent-death signal: killed before the reap, while the group's id is still ours.
        child.proc.kill_group()
        returncode = child.proc.wait()
        child.exited = True
        child.process.exit_code = returncode
        os.close(child.proc.pidfd)
        # Drain what the node said before dying: its error report explains the exit.
        with contextlib.suppress(KeyError, ValueError):
            while sel.get_key(child.sock) is not None:
                child.sock.setblocking(False)
                try:
                    self._on_control(sel, child)
                except BlockingIOError:
                    break
        with contextlib.suppress(KeyError, ValueError):
            if child.proc.stdout is not None and sel.get_key(child.proc.stdout):
                self._on_output(sel, child)
        stopping = self._failure is not None or self._stop_requested is not None
        if child.done and returncode == 0:
            self._set_status(child, S.STOPPING)
        elif child.error is None and not (stopping and child.process.status == S.STOPPING):
            from nodehost.sandbox import is_allocation_failure

            tail = self._output_tail(child)
            memory = None
            allocation = next((line for line in self._output_tail(child, lines=8).splitlines()
                               if is_allocation_failure(line)), None)
            if child.launch.memory_mb is not None and (
                    returncode == ExitCode.MEMORY_LIMIT or (returncode != 0 and allocation)):
                # e.g. a native library aborting on a failed allocation (Rust's "memory
                # allocation of N bytes failed", an uncaught std::bad_alloc): the kernel
                # refused to go past the limit, so that is where the node was.
                where = {S.INITIALIZING: " in initialize()",
                         S.PROCESSING: " in process()" if child.launch.inputs
                         else " in generate()"}.get(child.process.status, "")
                detail = f"it {describe_exit(returncode)}" + \
                    (f": {(allocation or tail)[-200:]}" if allocation or tail else "")
                cause, kind = self._memory_reason(child, where, detail), str(Cause.MEMORY)
                memory = child.launch.memory_mb << 20
            elif returncode == 0:
                cause, kind = "exited before its stream ended", "exit"
            else:
                cause = describe_exit(returncode)
                if child.proc.lost:
                    cause += f" with the host's zygote ({child.proc.lost})"
                kind = "signal" if returncode < 0 else "exit"
                if tail:
                    cause += "; its last output:\n" + "\n".join(
                        f"    | {line}" for line in tail.splitlines())
            if not stopping or self._failure is None:
                self._set_status(child, S.ERROR, error=cause, memory=memory)
                self._fail(child, cause, kind)
        if child.process.status != S.STOPPING:
            self._set_status(child, S.STOPPING)
        self._set_status(child, S.STOPPED)
        with self._lock:  # its channel ends are gone with it
            self._map.disconnect(child.launch.node_id)

    def _fail(self, child: _Child | None, reason: str, kind: str = "error") -> None:
        if self._failure is not None:
            return
        if child is None:
            self._failure = ("", "", reason)
        else:
            self._failure = (child.launch.node_id, child.launch.node_type,
                             f"{child.label} {reason}")

    def _request_stop(self) -> None:
        for child in self._children.values():
            if child.exited:
                continue
            # A node still starting or inside initialize() reads its socket only once it is
            # Ready: SIGTERM interrupts it (the runner then runs cleanup() and exits).
            deaf = child.process.status in (S.IDLE, S.INITIALIZING)
            if child.process.status.is_live:
                self._set_status(child, S.STOPPING)
            protocol.send(child.sock, Kind.STOP)
            if deaf:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(child.proc.pidfd, signal.SIGTERM)

    def _overran_grace(self) -> None:
        grace = self.pipeline.config.stop_grace_s
        for child in self._children.values():
            if not child.exited:
                self._emit("log", node=child.launch.node_id, node_type=child.launch.node_type,
                           level="WARNING", message=f"still running stop_grace_s={grace:g} s "
                                                    "after stop: terminated")

    def _signal_all(self, sig: signal.Signals) -> None:
        for child in self._children.values():
            if not child.exited:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(child.proc.pidfd, sig)

    def _kill_all(self) -> None:
        self._signal_all(signal.SIGKILL)

    def _reap_all(self) -> None:
        for child in self._children.values():
            if not child.exited:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(child.proc.pidfd, signal.SIGKILL)
                child.proc.kill_group()
                child.proc.wait()
                child.exited = True
                with contextlib.suppress(OSError):
                    os.close(child.proc.pidfd)
        with self._lock:
            self._map.close_all()  # teardown: whatever is left is force-closed

    def _release(self) -> None:
        for child in self._children.values():
            child.output.close()
            child.sock.close()
            if child.proc.stdout is not None:
                child.proc.stdout.close()
            shutil.rmtree(child.tmp_dir, ignore_errors=True)
        # A killed node leaves its shared memory behind, and so can nodes that exit at the
        # same moment (each sees the other still attached): clean up after every session.
        from nodehost.channels import cleanup_dead_nodes

        cleanup_dead_nodes()

    def _finish(self) -> None:
        duration = time.time() - self.started_at
        if self._failure is not None:
            node, node_type, reason = self._failure
            result = SessionResult(False, reason, node or None, node_type or None, duration)
        elif self._stop_requested is not None:
            result = SessionResult(False, self._stop_requested, duration_s=duration)
        elif self._spawn_error is not None:
            result = SessionResult(False, str(self._spawn_error), duration_s=duration)
        else:
            result = SessionResult(True, "every sink reached end of stream", duration_s=duration)
        self._result = result
        self._stats_event(final=True)
        self._io_ended(result, failed=not result.ok and (self._failure is not None or
                                                         self._stop_requested is None))
        self._emit("session_end", ok=result.ok, reason=result.reason,
                   failed_node=result.failed_node, failed_node_type=result.failed_node_type,
                   duration_s=round(duration, 6))
        self.host._forget(self)
        _LIVE_SESSIONS.discard(self)
        self._finished.set()


class HostState(Enum):
    OPEN = "open"        # start_session() works
    CLOSING = "closing"  # cancel() or close() was called: no new sessions, the others stop
    CLOSED = "closed"    # close() returned: every session has ended


class Host:
    """Discovers plugins and runs sessions. Several sessions may run at once.

    The host owns its sessions as a trio nursery owns its tasks: only ``start_session``
    makes one, registers it before its supervisor starts, and ``close()`` (or leaving the
    ``with`` block) stops every session and refuses new ones.
    """

    def __init__(self, *, plugins: tuple[object, ...] = (), registry: Registry | None = None,
                 on_event: Any = None, env_allow: Mapping[str, str] | None = None,
                 stats_interval_s: float = stats.STATS_INTERVAL_S,
                 log_dir: str | Path | None = None, zygote: bool | None = None) -> None:
        self.registry = registry if registry is not None else discover(plugins=plugins)
        self.on_event = on_event
        # how often runners report and sessions emit ``stats`` events
        self.stats_interval_s = stats_interval_s
        # every node's output lines and log records, one file per node (``--log-dir``)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._extra_env = dict(env_allow or {})
        self._sessions: list[Session] = []
        self._lock = threading.Lock()
        self.state = HostState.OPEN
        self._cancel_reason = "host closed"
        # Nodes on the host's interpreter are forked by a zygote that imported the runner's
        # modules once (nodehost.spawn); started by the first session that needs it.
        # None: on unless NODEHOST_ZYGOTE=0.
        self.use_zygote = zygote_enabled(zygote)
        self._zygote_slot = ZygoteSlot()
        weakref.finalize(self, self._zygote_slot.close)  # a host dropped without close()
        from nodehost.channels import cleanup_dead_nodes

        cleanup_dead_nodes()  # reclaim what a killed host left in /dev/shm

    def validate(self, config: str | Path | Mapping[str, Any] | PipelineConfig
                 ) -> ValidatedPipeline:
        return validate_pipeline(load_config(config), self.registry.node_types)

    def start_session(self, config: str | Path | Mapping[str, Any] | PipelineConfig
                      ) -> Session:
        """Validate ``config``, start its session and return it once every node process is
        spawned. Raises HostClosed after ``close()`` or ``cancel()``."""
        self._check_open()
        parsed = load_config(config)
        from nodehost import remote

        if remote.placed(parsed):  # nodes on other machines: see nodehost.remote
            return self._own(remote.DistributedSession(self, parsed))
        return self.start_validated(validate_pipeline(parsed, self.registry.node_types))

    def start_validated(self, pipeline: ValidatedPipeline, *, session_id: str | None = None
                        ) -> Session:
        """``start_session`` for a pipeline validated already, under a given session id
        (``nodehost agent`` runs its part of a distributed session under the caller's)."""
        self._check_open()
        return self._own(Session(self, pipeline, session_id=session_id, _owner=_HOST_ONLY))

    def _own(self, session: Session) -> Session:
        """Register ``session``, then start it: its end always finds it registered."""
        with self._lock:
            closed = self.state is not HostState.OPEN
            if not closed:
                self._sessions.append(session)  # before it runs: its end always finds it here
        if closed:  # closed while the session was being built: end it before it spawns
            session.cancel(self._cancel_reason)
            session._start()
            raise HostClosed("Host is closed; no new sessions")
        _LIVE_SESSIONS.add(session)
        if self.state is not HostState.OPEN:  # cancel() ran (a signal) while we registered
            session.cancel(self._cancel_reason)
        session._start()
        return session

    def run(self, config: str | Path | Mapping[str, Any] | PipelineConfig,
            timeout: float | None = None) -> SessionResult:
        session = self.start_session(config)
        try:
            return session.wait(timeout)
        finally:
            session.stop()

    def start_metrics(self, port: int) -> Any:
        """Serve this host's metrics on http://127.0.0.1:``port``/metrics through the
        installed metrics plugin; returns the exporter (``close()`` stops it)."""
        try:
            exporter = self.registry.plugin_manager.hook.nodehost_metrics_exporter(port=port)
        except OSError as exc:
            raise NodehostError(f"cannot serve metrics on 127.0.0.1:{port}: "
                                f"{exc.strerror or exc}") from exc
        if exporter is None:
            raise NodehostError("serving metrics needs a metrics plugin: pip install "
                                "nodehost-prometheus (plugins/nodehost-prometheus here)")
        return exporter

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions)

    def node_env(self, tmp_dir: str, node_env: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
        from nodehost.sandbox import scrubbed_env

        return scrubbed_env(self._extra_env, tmp_dir=tmp_dir, node_env=node_env)

    def zygote_for(self, python: str) -> Zygote | None:
        """The zygote that forks nodes running on ``python``, started on first use; None
        when such nodes are exec'd (another interpreter, the zygote off, or it failed)."""
        if not self.use_zygote or python != sys.executable:
            return None
        return self._zygote_slot.get(lambda: self.node_env(tempfile.gettempdir()))

    def _check_open(self) -> None:
        if self.state is not HostState.OPEN:
            raise HostClosed("Host is closed; no new sessions")

    def _forget(self, session: Session) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def cancel(self, reason: str = "host closed", *, graceful: bool = True) -> None:
        """Refuse new sessions and ask every session to stop, without waiting. Safe in a
        signal handler (takes no lock): ``nodehost run`` calls it on Ctrl-C and SIGTERM."""
        if self.state is HostState.OPEN:
            self._cancel_reason = reason
            self.state = HostState.CLOSING
        for session in list(self._sessions):
            session.cancel(reason, graceful=graceful)

    def close(self) -> None:
        """Stop every session (each node gets its pipeline's stop_grace_s to clean up), wait
        until all are reaped, and refuse new sessions from now on."""
        self.cancel()
        for session in self.sessions():
            session.wait()
        self.state = HostState.CLOSED
        self._zygote_slot.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _allocate_channels(session_id: str, max_processes: int | None,
                       launches: list[NodeLaunch], host_ends: HostEnds) -> SessionProcessMap:
    """The session map with one Created record per planned channel. The application's own
    ends (session inputs and outputs) appear as ``input:NAME`` / ``output:NAME``; only node
    processes are bound and counted as publishers and subscribers."""
    smap = SessionProcessMap(session_id, max_processes)
    for name, port in host_ends.inputs.items():
        smap.add_channel(SharedMemoryChannel(port.channel, port.capacity, port.backpressure,
                                             source=f"input:{name}"))
    for launch in launches:
        for port in launch.outputs:
            smap.add_channel(SharedMemoryChannel(
                port.channel, port.capacity, port.backpressure,
                source=f"{launch.node_id}.{port.port}"))
    for launch in launches:
        for port in launch.inputs:
            channel = smap.channels[port.channel]
            if f"{launch.node_id}.{port.port}" not in channel.targets:
                channel.targets.append(f"{launch.node_id}.{port.port}")
    for name, port in host_ends.outputs.items():
        smap.channels[port.channel].targets.append(f"output:{name}")
    return smap


# Sessions still running when the interpreter exits (an embedding program ended or died of
# an exception without stopping them) are torn down before it goes: nothing outlives it.
_LIVE_SESSIONS: weakref.WeakSet[Session] = weakref.WeakSet()


@atexit.register
def _stop_sessions_at_exit() -> None:
    for session in list(_LIVE_SESSIONS):
        session.cancel("the host program exited", graceful=False)
    for session in list(_LIVE_SESSIONS):
        if session._thread.is_alive():
            session._thread.join(timeout=30)
