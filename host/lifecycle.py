"""The runtime entities of a session and the rules their states follow.

``ProcessStatus`` and ``ChannelState`` carry explicit transition tables; any change not in
the table raises ``IllegalTransition``. Every session keeps one ``SessionProcessMap`` of its
processes, channels and the bindings between them: the records ``Session.processes()`` and
``Session.channels()`` return and the ``stats`` events report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from nodehost.errors import ChannelError, IllegalTransition, SessionError


class ProcessStatus(StrEnum):
    IDLE = "Idle"
    INITIALIZING = "Initializing"
    READY = "Ready"
    PROCESSING = "Processing"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    ERROR = "Error"

    def can_become(self, new: ProcessStatus) -> bool:
        return new in _PROCESS_TRANSITIONS[self]

    @property
    def is_final(self) -> bool:
        return self is ProcessStatus.STOPPED

    @property
    def is_live(self) -> bool:
        """Still running user code (or about to)."""
        return self in (ProcessStatus.IDLE, ProcessStatus.INITIALIZING, ProcessStatus.READY,
                        ProcessStatus.PROCESSING)


_S = ProcessStatus
# Error can be reached from every live state: a process can crash at any moment, not only
# while initializing. Stopping is reachable from every live state: a sibling's failure
# stops a node wherever it is.
_PROCESS_TRANSITIONS: Mapping[ProcessStatus, frozenset[ProcessStatus]] = {
    _S.IDLE: frozenset({_S.INITIALIZING, _S.ERROR, _S.STOPPING}),
    _S.INITIALIZING: frozenset({_S.READY, _S.ERROR, _S.STOPPING}),
    _S.READY: frozenset({_S.PROCESSING, _S.ERROR, _S.STOPPING}),
    _S.PROCESSING: frozenset({_S.READY, _S.ERROR, _S.STOPPING}),
    _S.ERROR: frozenset({_S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
}


class ChannelState(StrEnum):
    CREATED = "Created"
    ACTIVE = "Active"
    DRAINING = "Draining"
    DESTROYED = "Destroyed"


_C = ChannelState
_CHANNEL_TRANSITIONS: Mapping[ChannelState, frozenset[ChannelState]] = {
    _C.CREATED: frozenset({_C.ACTIVE}),
    _C.ACTIVE: frozenset({_C.DRAINING}),
    _C.DRAINING: frozenset({_C.DESTROYED}),
    _C.DESTROYED: frozenset(),
}


class Role(StrEnum):
    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"


@dataclass
class NodeFigures:
    """What a node's runner last reported about its work (times in seconds)."""

    received: int = 0
    sent: int = 0
    processing_p50_s: float | None = None   # process() (or generate()) per message
    processing_p99_s: float | None = None
    input_age_p50_s: float | None = None    # now − the input's origin timestamp
    input_age_p99_s: float | None = None
    busy: float | None = None               # fraction of the last interval spent working
    first_output_ts: float | None = None    # epoch seconds
    reported_at: float | None = None        # epoch seconds of the runner's last report


@dataclass
class NodeProcess:
    """One node's OS process as the host sees it."""

    node_id: str
    node_type: str
    pid: int | None = None
    status: ProcessStatus = ProcessStatus.IDLE
    memory_usage: int | None = None  # RSS bytes, read at every status change and stats event
    error: str | None = None
    exit_code: int | None = None
    history: list[tuple[float, ProcessStatus]] = field(default_factory=list)
    session_id: str = ""
    initialized_at: float | None = None   # epoch seconds: first Ready (initialize() done)
    input_channels: list[str] = field(default_factory=list)
    output_channels: list[str] = field(default_factory=list)
    figures: NodeFigures = field(default_factory=NodeFigures)

    def set_status(self, new: ProcessStatus) -> None:
        if not self.status.can_become(new):
            raise IllegalTransition(
                f"node {self.node_id!r} ({self.node_type}): {self.status} → {new} is not a "
                "legal transition"
            )
        now = time.time()
        self.status = new
        self.history.append((now, new))
        if new is ProcessStatus.READY and self.initialized_at is None:
            self.initialized_at = now


@dataclass
class ReaderFigures:
    """One subscriber's account of a channel: of the ``sent`` messages that reached it so far
    (every message up to the newest one it has seen), ``received`` were taken and ``dropped``
    were overwritten before it took them; ``received + dropped == sent`` always."""

    received: int = 0
    dropped: int = 0
    sent: int = 0


@dataclass
class SharedMemoryChannel:
    """The host's record of one channel: a publisher's output port and its subscribers.

    The figures are the ones the channel's ends last reported (see ``stats`` events).
    ``occupancy`` and ``in_flight`` count what was sent but not yet taken by every reader;
    without backpressure the writer keeps no per-message record, so ``occupancy`` is None
    and ``in_flight`` comes from the readers' sequence numbers.
    """

    name: str
    capacity: int
    backpressure: bool = True
    state: ChannelState = ChannelState.CREATED
    occupancy: int | None = 0
    source: str = ""                       # "node.port"
    targets: list[str] = field(default_factory=list)
    publishers: int = 0                    # ends bound now
    subscribers: int = 0
    in_flight: int = 0
    sent: int = 0
    dropped: int = 0                       # sent with no reader connected + readers' drops
    blocked_s: float = 0.0                 # time the writer waited for readers (backpressure)
    unreached: int = 0
    readers: dict[str, ReaderFigures] = field(default_factory=dict)  # "node.port" -> figures
    force_closed: bool = False
    history: list[tuple[float, ChannelState]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.capacity & (self.capacity - 1):
            raise ChannelError(f"channel {self.name!r}: capacity {self.capacity} is not a "
                               "power of two")
        if not self.backpressure:
            self.occupancy = None
        if not self.history:
            self.history.append((time.time(), self.state))

    def set_occupancy(self, nbytes: int) -> None:
        if not self.backpressure:
            raise ChannelError(f"channel {self.name!r}: without backpressure the occupancy "
                               "is not tracked")
        if not 0 <= nbytes <= self.capacity:
            raise ChannelError(f"channel {self.name!r}: occupancy {nbytes} outside "
                               f"0..{self.capacity}")
        self.occupancy = nbytes

    def set_state(self, new: ChannelState) -> None:
        if new not in _CHANNEL_TRANSITIONS[self.state]:
            raise IllegalTransition(f"channel {self.name!r}: {self.state} → {new} is not a "
                                    "legal transition")
        self.state = new
        self.history.append((time.time(), new))

    def force_close(self) -> None:
        """Destroy from any state: the session is being torn down."""
        if self.state is not ChannelState.DESTROYED:
            self.force_closed = True
            self.history.append((time.time(), ChannelState.DESTROYED))
        self.state = ChannelState.DESTROYED
        self.occupancy = 0 if self.backpressure else None
        self.in_flight = 0


@dataclass(frozen=True)
class ProcessChannelBinding:
    node_id: str
    port: str
    channel: str
    role: Role
    connected_at: float = field(default_factory=time.time)  # epoch seconds
    disconnected_at: float | None = None                     # its process exited

    @property
    def connected(self) -> bool:
        return self.disconnected_at is None


@dataclass
class SessionProcessMap:
    """Which processes a session owns, its channels, and who publishes or subscribes what."""

    session_id: str
    max_processes: int | None = None
    processes: dict[str, NodeProcess] = field(default_factory=dict)
    channels: dict[str, SharedMemoryChannel] = field(default_factory=dict)
    bindings: list[ProcessChannelBinding] = field(default_factory=list)

    def add_process(self, process: NodeProcess) -> None:
        if process.node_id in self.processes:
            raise SessionError(f"session {self.session_id}: node {process.node_id!r} already "
                               "has a process")
        if self.max_processes is not None and len(self.processes) >= self.max_processes:
            raise SessionError(f"session {self.session_id}: max_processes "
                               f"({self.max_processes}) reached")
        self.processes[process.node_id] = process

    def add_channel(self, channel: SharedMemoryChannel) -> None:
        if channel.name in self.channels:
            raise SessionError(f"channel {channel.name!r} already exists")
        self.channels[channel.name] = channel

    def bind(self, binding: ProcessChannelBinding) -> None:
        if binding.node_id not in self.processes:
            raise SessionError(f"unknown node {binding.node_id!r}")
        if binding.channel not in self.channels:
            raise SessionError(f"unknown channel {binding.channel!r}")
        for other in self.bindings:
            if other.node_id == binding.node_id and other.channel == binding.channel:
                if other.role is not binding.role:
                    raise SessionError(
                        f"node {binding.node_id!r} cannot be both publisher and subscriber "
                        f"of channel {binding.channel!r}"
                    )
                if other.port == binding.port:
                    return
        if binding.role is Role.PUBLISHER and any(
            b.channel == binding.channel and b.role is Role.PUBLISHER for b in self.bindings
        ):
            raise SessionError(f"channel {binding.channel!r} already has a publisher")
        self.bindings.append(binding)
        channel = self.channels[binding.channel]
        self._count(channel)
        if channel.state is ChannelState.CREATED:  # the first end bound makes it Active
            channel.set_state(ChannelState.ACTIVE)

    def disconnect(self, node_id: str, at: float | None = None) -> None:
        """``node_id``'s process is gone, and with it its ends of every channel. A channel
        with no end left is Destroyed: in order after Draining, force-closed otherwise."""
        at = time.time() if at is None else at
        touched = set()
        for i, binding in enumerate(self.bindings):
            if binding.node_id == node_id and binding.connected:
                self.bindings[i] = replace(binding, disconnected_at=at)
                touched.add(binding.channel)
        for name in touched:
            channel = self.channels[name]
            self._count(channel)
            if channel.publishers == 0 and channel.subscribers == 0:
                if channel.state is ChannelState.DRAINING:
                    channel.set_state(ChannelState.DESTROYED)
                else:
                    channel.force_close()

    def close_all(self) -> None:
        """Teardown: whatever is not Destroyed yet is force-closed."""
        for channel in self.channels.values():
            channel.force_close()

    def _count(self, channel: SharedMemoryChannel) -> None:
        live = [b for b in self.bindings if b.channel == channel.name and b.connected]
        channel.publishers = sum(b.role is Role.PUBLISHER for b in live)
        channel.subscribers = len(live) - channel.publishers

    def publishers(self, channel: str) -> list[ProcessChannelBinding]:
        return [b for b in self.bindings if b.channel == channel and b.role is Role.PUBLISHER]

    def subscribers(self, channel: str) -> list[ProcessChannelBinding]:
        return [b for b in self.bindings if b.channel == channel and b.role is Role.SUBSCRIBER]

    def bindings_of(self, node_id: str) -> list[ProcessChannelBinding]:
        return [b for b in self.bindings if b.node_id == node_id]
