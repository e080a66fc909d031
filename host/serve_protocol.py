"""The WebSocket protocol of ``nodehost serve``: frame layout and message names, shared by the
server (``nodehost.serve``), the reference client (``nodehost.client``) and documented in
``docs/serve.md``. The browser page (``web/wire.js``) implements the same layout.

A binary frame carries one RuntimeData message for one named session input or output::

    name_len (u8, 1..255) | name (UTF-8) | zero padding to a multiple of 8 | wire message

The wire message is exactly what travels through shared memory (``docs/wire-format.md``: the
256-byte header, then the payload), so one format holds from a node to the browser; the
padding puts the header, and so the payload, at an 8-byte-aligned offset, where a client can
view samples in place (``Float32Array``, ``np.frombuffer``) without a copy.

JSON text frames carry everything else: events from the server (``{"event": ...}``) and
control messages from the client (``{"control": ...}``).
"""

from __future__ import annotations

from nodehost import wire
from nodehost.data import RuntimeData
from nodehost.errors import FrameError as FrameError

ALIGN = 8
MAX_NAME = 255

# server -> client events of the protocol itself (session events are forwarded as they are)
READY = "ready"             # the session is Ready: send inputs now
REFUSED = "refused"         # no session for this client (e.g. --max-sessions reached)
ERROR = "error"             # a protocol error; the server closes the connection after it
DROPPED = "dropped"         # events this slow client missed (stats, progress, logs)
SESSION_END = "session_end"

# client -> server control messages
CLOSE = "close"             # end of input: {"control": "close", "input": "mic"} (all if omitted)

# close codes (RFC 6455 and the IANA registry)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003    # a text message that is not a known control
CLOSE_INVALID_DATA = 1007   # a binary frame that is not a valid framed RuntimeData
CLOSE_POLICY = 1008         # e.g. data for an unknown input
CLOSE_TOO_BIG = 1009        # a frame over the server's size limit
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013      # refused: too many sessions


def prefix(name: str) -> bytes:
    """The frame prefix for a stream ``name``: length byte, name, zero padding."""
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= MAX_NAME:
        raise FrameError(f"stream name {name[:20]!r} must be 1 to {MAX_NAME} bytes of UTF-8")
    size = -(-(1 + len(raw)) // ALIGN) * ALIGN
    return bytes([len(raw)]) + raw + bytes(size - 1 - len(raw))


def encode(name: str, data: RuntimeData, seq: int = 0) -> bytes:
    """One binary frame: ``data`` for the input or output ``name``."""
    return prefix(name) + data.to_bytes(seq)


def end_of_stream(name: str, session_id: str = "", seq: int = 0) -> bytes:
    """A binary end-of-stream frame for ``name`` (the same as a JSON ``close``)."""
    header = wire.pack_header(wire.EOS, 0, 0, 0, seq, session_id, wire.EosMetadata())
    return prefix(name) + header


def split(frame: bytes) -> tuple[str, memoryview]:
    """``(name, wire message)`` of a binary frame; the message is a view, not a copy."""
    if not frame:
        raise FrameError("empty binary frame")
    length = frame[0]
    size = -(-(1 + length) // ALIGN) * ALIGN
    if length == 0 or len(frame) < size + wire.HEADER_SIZE:
        raise FrameError(f"binary frame of {len(frame)} bytes is too short for a name of "
                         f"{length} bytes and a {wire.HEADER_SIZE}-byte header")
    if any(frame[1 + length:size]):
        raise FrameError("non-zero padding after the stream name")
    try:
        name = frame[1:1 + length].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("stream name is not UTF-8") from exc
    return name, memoryview(frame)[size:]


def decode(frame: bytes) -> tuple[str, RuntimeData | None]:
    """``(name, data)`` of a binary frame, every header field verified; ``data`` is None for
    an end-of-stream frame. Raises ``FrameError`` or ``WireFormatError``."""
    name, message = split(frame)
    header = wire.unpack_header(bytes(message[:wire.HEADER_SIZE]),
                                len(message) - wire.HEADER_SIZE)
    if header.kind == wire.EOS:
        return name, None
    return name, RuntimeData.from_bytes(message)
