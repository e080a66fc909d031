"""The host↔runner protocol, in one place: the control channel, its message kinds, the
status names a runner reports, the stages an error is reported from, and the exit codes.

The control channel is a ``SOCK_SEQPACKET`` socketpair: message boundaries come free, either
side sees the other's death as EOF, and the fd can sit in a selector or an iceoryx2 WaitSet
next to the data channels. A message is a small JSON object whose ``"t"`` names its kind.
Data never travels here.

    host → node   launch {spec}       the NodeLaunch, first and once
                  start               every node of the session is Ready: sources may begin
                  stop                end now: run cleanup() and exit (a stop the user asked
                                      for waits stop_grace_s; then SIGTERM, then SIGKILL)
    node → host   status {status, sandbox?}   a ProcessStatus value (Initializing carries
                                              the sandbox layers in force)
                  progress {fraction, message}
                  stats {received, sent, processing_s, input_age_s, busy, outputs,
                         inputs, first_output_ts}   (docs/architecture.md)
                  log {level, message}
                  error {stage, error, traceback?, cause?, memory_used?}
                  done                the stream ended and cleanup() ran; exit 0 follows

A node that cannot read its socket (still starting, or inside ``initialize()``) is stopped
with SIGTERM, which the runner turns into the same clean stop.
"""

from __future__ import annotations

import json
import socket
from enum import IntEnum, StrEnum
from typing import Any

from nodehost.lifecycle import ProcessStatus

__all__ = ["MAX_MESSAGE", "Cause", "ExitCode", "Kind", "ProcessStatus", "Stage", "pair",
           "receive", "send"]

MAX_MESSAGE = 256 * 1024  # tracebacks can be long; anything longer is cut, never split


class Kind(StrEnum):
    """The ``"t"`` of a control message."""

    LAUNCH = "launch"
    START = "start"
    STOP = "stop"
    STATUS = "status"
    PROGRESS = "progress"
    STATS = "stats"
    LOG = "log"
    ERROR = "error"
    DONE = "done"
    GARBAGE = "garbage"  # never sent: what receive() makes of bytes that are no message


class Stage(StrEnum):
    """Where an ``error`` arose: the runner's own setup, or a method of the node."""

    SETUP = "setup"
    INITIALIZE = "initialize"
    PROCESS = "process"
    GENERATE = "generate"

    @property
    def in_node_code(self) -> bool:
        return self is not Stage.SETUP


class Cause(StrEnum):
    """An ``error``'s optional ``cause``: what the host reports the failure as."""

    MEMORY = "memory"  # the node hit its memory limit
    SANDBOX = "sandbox"  # the sandbox denied a path (``path`` and the ``grant`` to add)


class ExitCode(IntEnum):
    """How a node process ends. Anything else is a crash (or a signal: a negative code)."""

    OK = 0              # done, or stopped on request
    NODE_ERROR = 1      # node code raised; the error was reported first
    RUNNER_ERROR = 70   # the runner could not set the node up (reported when it could)
    MEMORY_LIMIT = 75   # a MemoryError escaped node code: the memory limit was hit
    PARENT_GONE = 76    # the host died before the parent-death signal was armed


def pair() -> tuple[socket.socket, socket.socket]:
    """(host end, node end)."""
    host_end, node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    host_end.set_inheritable(False)
    node_end.set_inheritable(True)
    return host_end, node_end


def send(sock: socket.socket, kind: Kind, **fields: Any) -> bool:
    """Send one message. False when the peer has gone (its death is reported elsewhere)."""
    fields["t"] = kind
    raw = json.dumps(fields, default=str).encode()
    if len(raw) > MAX_MESSAGE:
        for key in ("traceback", "message", "error"):
            if isinstance(fields.get(key), str):
                fields[key] = fields[key][-MAX_MESSAGE // 4:]
        raw = json.dumps(fields, default=str).encode()[:MAX_MESSAGE]
    try:
        sock.send(raw)
    except (BrokenPipeError, ConnectionResetError, OSError):
        return False
    return True


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """One message, or None at EOF (the peer closed or died). Garbage is reported as such."""
    try:
        raw = sock.recv(MAX_MESSAGE)
    except BlockingIOError:
        raise  # a non-blocking caller asked "anything yet?": no, and the peer is fine
    except OSError:
        return None
    if not raw:
        return None
    try:
        message = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"t": Kind.GARBAGE, "raw": raw[:80].decode("latin-1")}
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        return {"t": Kind.GARBAGE, "raw": str(message)[:80]}
    return message
