"""Bridge nodes: a connection between two machines, carried by Zenoh.

A connection whose ends sit on different machines is cut in two. On the writer's machine a
``LinkOut_<type>`` node reads the local iceoryx2 channel like any sink; on the reader's
machine a ``LinkIn_<type>`` node writes a local iceoryx2 channel like any source. Between
them, one Zenoh key carries the messages in the RuntimeData wire format (``docs/wire-format.md``;
the header's sequence number counts the link's messages, end of stream is the ``EOS`` header)
and a second key carries credits back: ``LinkIn`` reports how many messages it has handed
to its channel, and ``LinkOut`` keeps at most ``window`` messages (and ``capacity`` payload
bytes) unacknowledged. A slow reader therefore fills its own channel, then stops the credits,
then blocks ``LinkOut`` in ``process()``, which fills the writer's channel and blocks the
writer: backpressure end to end, and every queue on the way is bounded.

Bridge nodes are ordinary nodes: same runner, same sandbox (network granted by their
manifest), same lifecycle. They are added by the coordinator, never written in a config.
"""

from __future__ import annotations

import contextlib
import queue
import struct
import threading
from collections import deque
from typing import Any

from nodehost import wire
from nodehost.data import RuntimeData, monotonic_stamp
from nodehost.hookspecs import hookimpl
from nodehost.node import Node

DATA_TYPES = ("audio", "video", "text", "tensor")
WINDOW = 8
HELLO_S = 0.2  # LinkIn repeats its first credit until data flows (LinkOut may start later)
CREDIT = struct.Struct("<Q")
_PARAMS = {
    "link": {"type": "string", "description": "the link's Zenoh key prefix"},
    "connect": {"type": "string", "description": "the agent both ends meet at"},
    "window": {"type": "integer", "default": WINDOW, "minimum": 1},
    "capacity": {"type": "integer", "default": 16 * 1024 * 1024, "minimum": 1,
                 "description": "payload bytes in flight"},
}


def node_type(direction: str, data_type: str) -> str:
    return f"Link{direction.capitalize()}_{data_type}"


def manifests() -> list[dict[str, Any]]:
    items = []
    for data_type in DATA_TYPES:
        common = {"version": "1.0.0", "params": _PARAMS, "resources": {"memory_mb": 4096},
                  "sandbox": {"network": True}}
        items.append({"node_type": node_type("out", data_type), **common,
                      "description": f"sends a {data_type} stream to another machine",
                      "entrypoint": "nodehost.bridge:LinkOut",
                      "inputs": {"in": {"data_type": data_type}}})
        items.append({"node_type": node_type("in", data_type), **common,
                      "description": f"receives a {data_type} stream from another machine",
                      "entrypoint": "nodehost.bridge:LinkIn",
                      "outputs": {"out": {"data_type": data_type}}})
    return items


class BridgePlugin:
    """The bridge node types, registered by the coordinator and by agents (not listed by
    ``nodehost nodes``: no config names them)."""

    __name__ = "nodehost.bridge"

    @hookimpl
    def nodehost_node_manifests(self) -> list[dict[str, Any]]:
        return manifests()


plugin = BridgePlugin()


def _open(params: Any) -> Any:
    from nodehost.zlink import open_client

    return open_client(params.connect, "link")


class LinkOut(Node):
    """Reads the local channel, publishes on Zenoh while the receiver grants credit."""

    params: Any

    def initialize(self) -> None:
        import zenoh

        self._zenoh = _open(self.params)
        self._consumed = 0
        self._credited = threading.Condition()
        self._inflight: deque[tuple[int, int]] = deque()
        self._inflight_bytes = 0
        self._seq = 0
        self._pub = self._zenoh.declare_publisher(
            f"{self.params.link}/data", congestion_control=zenoh.CongestionControl.BLOCK,
            reliability=zenoh.Reliability.RELIABLE)
        self._sub = self._zenoh.declare_subscriber(f"{self.params.link}/credit",
                                                   self._on_credit)
        # Nothing is sent before the receiver has granted credit (it is listening) *and* our
        # Zenoh session knows its subscription: a client drops what matches no subscriber.
        self._hello = False
        self._matching = False
        self._listener = self._pub.declare_matching_listener(self._on_matching)
        self._on_matching(self._pub.matching_status)

    def _on_matching(self, status: Any) -> None:
        with self._credited:
            self._matching = self._matching or bool(status.matching)
            self._credited.notify_all()

    def _on_credit(self, sample: Any) -> None:
        (consumed,) = CREDIT.unpack(sample.payload.to_bytes())
        with self._credited:
            self._hello = True
            self._consumed = max(self._consumed, consumed)
            while self._inflight and self._inflight[0][0] <= self._consumed:
                self._inflight_bytes -= self._inflight.popleft()[1]
            self._credited.notify_all()

    def _send(self, raw: bytes, nbytes: int) -> None:
        with self._credited:
            while not (self._hello and self._matching) or (self._inflight and (
                    len(self._inflight) >= self.params.window
                    or self._inflight_bytes + nbytes > self.params.capacity)):
                self._credited.wait(1.0)
            self._inflight.append((self._seq, nbytes))
            self._inflight_bytes += nbytes
        self._pub.put(raw)

    def process(self, data: RuntimeData, port: str) -> None:
        self._seq += 1
        self._send(data.to_bytes(seq=self._seq), data.payload_size)

    def end_of_stream(self, port: str) -> None:
        self._seq += 1
        eos = wire.pack_header(wire.EOS, 0, 0, monotonic_stamp(), self._seq, self.session_id,
                               wire.EosMetadata())
        self._send(eos, 0)
        with self._credited:  # the receiver has it: our publisher may go
            while self._consumed < self._seq:
                self._credited.wait(1.0)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._zenoh.close()


class LinkIn(Node):
    """Receives a link's messages and writes them into the local channel, granting credit
    as they are taken."""

    params: Any

    def initialize(self) -> None:
        # Bounded: the sender never has more than `window` messages unacknowledged, so this
        # queue never holds more; a sender that breaks the rule fails the link loudly.
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=self.params.window + 1)
        self._overflow = False
        self._zenoh = _open(self.params)
        self._credit = self._zenoh.declare_publisher(f"{self.params.link}/credit")
        self._sub = self._zenoh.declare_subscriber(f"{self.params.link}/data", self._on_data)

    def _on_data(self, sample: Any) -> None:
        try:
            self._queue.put_nowait(sample.payload.to_bytes())
        except queue.Full:
            self._overflow = True

    def _grant(self, consumed: int) -> None:
        self._credit.put(CREDIT.pack(consumed))

    def generate(self) -> Any:
        expected = 1
        granted = 0
        batch = max(1, self.params.window // 2)
        while True:
            try:
                raw = self._queue.get(timeout=HELLO_S)
            except queue.Empty as exc:
                if self._overflow:
                    raise RuntimeError("link sender ignored its credit window") from exc
                self._grant(expected - 1)  # hello, or a repeat of the last credit
                continue
            header = wire.unpack_header(raw[:wire.HEADER_SIZE], len(raw) - wire.HEADER_SIZE)
            if header.seq != expected:
                raise RuntimeError(f"link message {header.seq} where {expected} was due: "
                                   "messages lost between machines")
            if header.kind == wire.EOS:
                self._grant(header.seq)
                return
            yield RuntimeData.from_bytes(raw)
            if expected - granted >= batch or self._queue.empty():
                self._grant(expected)
                granted = expected
            expected += 1

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._zenoh.close()
