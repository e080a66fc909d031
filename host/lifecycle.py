"""The runtime entities of a session and the rules their states follow.

``ProcessStatus`` and ``ChannelState`` carry explicit transition tables; any change not in
the table raises ``IllegalTransition``. The session keeps one ``SessionProcessMap`` of its
processes, channels and the bindings between them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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
class NodeProcess:
    """One node's OS process as the host sees it."""

    node_id: str
    node_type: str
    pid: int | None = None
    status: ProcessStatus = ProcessStatus.IDLE
    memory_usage: int | None = None  # RSS bytes, read at every status change
    error: str | None = None
    exit_code: int | None = None
    history: list[tuple[float, ProcessStatus]] = field(default_factory=list)

    def set_status(self, new: ProcessStatus) -> None:
        if not self.status.can_become(new):
            raise IllegalTransition(
                f"node {self.node_id!r} ({self.node_type}): {self.status} → {new} is not a "
                "legal transition"
            )
        self.status = new
        self.history.append((time.time(), new))


@dataclass
class SharedMemoryChannel:
    """The host's record of one channel: a publisher's output port and its subscribers."""

    name: str
    capacity: int
    backpressure: bool = True
    state: ChannelState = ChannelState.CREATED
    occupancy: int = 0

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.capacity & (self.capacity - 1):
            raise ChannelError(f"channel {self.name!r}: capacity {self.capacity} is not a "
                               "power of two")

    def set_occupancy(self, nbytes: int) -> None:
        if not 0 <= nbytes <= self.capacity:
            raise ChannelError(f"channel {self.name!r}: occupancy {nbytes} outside "
                               f"0..{self.capacity}")
        self.occupancy = nbytes

    def set_state(self, new: ChannelState) -> None:
        if new not in _CHANNEL_TRANSITIONS[self.state]:
            raise IllegalTransition(f"channel {self.name!r}: {self.state} → {new} is not a "
                                    "legal transition")
        self.state = new

    def force_close(self) -> None:
        """Destroy from any state: the session is being torn down."""
        self.state = ChannelState.DESTROYED
        self.occupancy = 0


@dataclass(frozen=True)
class ProcessChannelBinding:
    node_id: str
    port: str
    channel: str
    role: Role


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

    def publishers(self, channel: str) -> list[ProcessChannelBinding]:
        return [b for b in self.bindings if b.channel == channel and b.role is Role.PUBLISHER]

    def subscribers(self, channel: str) -> list[ProcessChannelBinding]:
        return [b for b in self.bindings if b.channel == channel and b.role is Role.SUBSCRIBER]

    def bindings_of(self, node_id: str) -> list[ProcessChannelBinding]:
        return [b for b in self.bindings if b.node_id == node_id]
