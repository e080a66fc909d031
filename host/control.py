"""The control channel between the host and one node process.

A ``SOCK_SEQPACKET`` socketpair: message boundaries come free, either side sees the other's
death as EOF, and the fd can sit in a selector or an iceoryx2 WaitSet next to the data
channels. Messages are small JSON objects with a ``"t"`` (type) key. Data never travels here.

node → host: hello, status, progress, stats, done, error
host → node: start, stop
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 256 * 1024  # tracebacks can be long; anything longer is cut, never split


def pair() -> tuple[socket.socket, socket.socket]:
    """(host end, node end)."""
    host_end, node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    host_end.set_inheritable(False)
    node_end.set_inheritable(True)
    return host_end, node_end


def send(sock: socket.socket, kind: str, **fields: Any) -> bool:
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
        return {"t": "garbage", "raw": raw[:80].decode("latin-1")}
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        return {"t": "garbage", "raw": str(message)[:80]}
    return message
