"""Lifecycle rules: process status and channel state tables, bindings, the session map."""

from __future__ import annotations

import itertools
import time

import pytest

from nodehost.errors import ChannelError, IllegalTransition, SessionError
from nodehost.lifecycle import (
    ChannelState,
    NodeProcess,
    ProcessChannelBinding,
    ProcessStatus,
    Role,
    SessionProcessMap,
    SharedMemoryChannel,
)

S = ProcessStatus
C = ChannelState

# The design: Idle → Initializing → Ready ↔ Processing → Stopping → Stopped, and Error.
# Error is reachable from every live state; Stopping from every live state and from Error.
LEGAL_PROCESS = {
    (S.IDLE, S.INITIALIZING), (S.INITIALIZING, S.READY),
    (S.READY, S.PROCESSING), (S.PROCESSING, S.READY),
    (S.STOPPING, S.STOPPED), (S.ERROR, S.STOPPING),
    *((live, S.ERROR) for live in (S.IDLE, S.INITIALIZING, S.READY, S.PROCESSING)),
    *((live, S.STOPPING) for live in (S.IDLE, S.INITIALIZING, S.READY, S.PROCESSING)),
}
ALL_PROCESS_PAIRS = list(itertools.product(ProcessStatus, repeat=2))

LEGAL_CHANNEL = {(C.CREATED, C.ACTIVE), (C.ACTIVE, C.DRAINING), (C.DRAINING, C.DESTROYED)}
ALL_CHANNEL_PAIRS = list(itertools.product(ChannelState, repeat=2))


def process_in(status: ProcessStatus) -> NodeProcess:
    process = NodeProcess("gain", "Gain")
    process.status = status  # arrange: put it there directly, the transition is under test
    return process


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL_PROCESS))
def test_legal_process_transition(old: ProcessStatus, new: ProcessStatus) -> None:
    process = process_in(old)
    assert old.can_become(new)
    process.set_status(new)
    assert process.status is new
    assert [status for _, status in process.history] == [new]


@pytest.mark.parametrize(("old", "new"),
                         [p for p in ALL_PROCESS_PAIRS if p not in LEGAL_PROCESS])
def test_illegal_process_transition(old: ProcessStatus, new: ProcessStatus) -> None:
    process = process_in(old)
    assert not old.can_become(new)
    with pytest.raises(IllegalTransition, match=rf"node 'gain' \(Gain\): {old} → {new} is not "
                                                "a legal transition"):
        process.set_status(new)
    assert process.status is old and process.history == []


def test_the_table_covers_every_pair() -> None:
    assert len(ALL_PROCESS_PAIRS) == 49
    assert sum(a.can_become(b) for a, b in ALL_PROCESS_PAIRS) == len(LEGAL_PROCESS) == 14


def test_a_full_lifecycle_is_recorded_in_order() -> None:
    process = NodeProcess("gain", "Gain", pid=123)
    path = [S.INITIALIZING, S.READY, S.PROCESSING, S.READY, S.PROCESSING, S.STOPPING, S.STOPPED]
    for status in path:
        process.set_status(status)
    assert [status for _, status in process.history] == path
    times = [t for t, _ in process.history]
    assert times == sorted(times)
    assert process.status.is_final and not process.status.is_live


def test_crash_path() -> None:
    process = NodeProcess("gain", "Gain")
    for status in (S.INITIALIZING, S.ERROR, S.STOPPING, S.STOPPED):
        process.set_status(status)
    assert process.status is S.STOPPED


@pytest.mark.parametrize("status", list(ProcessStatus))
def test_live_and_final(status: ProcessStatus) -> None:
    assert status.is_live == (status in {S.IDLE, S.INITIALIZING, S.READY, S.PROCESSING})
    assert status.is_final == (status is S.STOPPED)


def test_status_values_are_the_documented_names() -> None:
    assert [s.value for s in ProcessStatus] == ["Idle", "Initializing", "Ready", "Processing",
                                                 "Stopping", "Stopped", "Error"]


# ------------------------------------------------------------------------------ channels

def channel_in(state: ChannelState) -> SharedMemoryChannel:
    channel = SharedMemoryChannel("s1/gain.out", capacity=1024)
    channel.state = state
    return channel


def test_channel_goes_created_active_draining_destroyed() -> None:
    channel = SharedMemoryChannel("s1/gain.out", capacity=1024)
    assert channel.state is C.CREATED
    for state in (C.ACTIVE, C.DRAINING, C.DESTROYED):
        channel.set_state(state)
        assert channel.state is state


@pytest.mark.parametrize(("old", "new"),
                         [p for p in ALL_CHANNEL_PAIRS if p not in LEGAL_CHANNEL])
def test_illegal_channel_transition(old: ChannelState, new: ChannelState) -> None:
    channel = channel_in(old)
    with pytest.raises(IllegalTransition, match=f"channel 's1/gain.out': {old} → {new}"):
        channel.set_state(new)
    assert channel.state is old


@pytest.mark.parametrize("state", list(ChannelState))
def test_force_close_from_any_state(state: ChannelState) -> None:
    channel = channel_in(state)
    channel.occupancy = 512
    channel.force_close()
    assert channel.state is C.DESTROYED and channel.occupancy == 0


@pytest.mark.parametrize("capacity", [1, 2, 1024, 16 * 1024 * 1024])
def test_capacity_power_of_two_accepted(capacity: int) -> None:
    assert SharedMemoryChannel("c", capacity).capacity == capacity


@pytest.mark.parametrize("capacity", [0, -1, -1024, 3, 1000, 1025])
def test_capacity_not_power_of_two_rejected(capacity: int) -> None:
    with pytest.raises(ChannelError, match=f"capacity {capacity} is not a power of two"):
        SharedMemoryChannel("c", capacity)


@pytest.mark.parametrize("occupancy", [0, 1, 1024])
def test_occupancy_within_bounds(occupancy: int) -> None:
    channel = SharedMemoryChannel("c", 1024)
    channel.set_occupancy(occupancy)
    assert channel.occupancy == occupancy


@pytest.mark.parametrize("occupancy", [-1, 1025])
def test_occupancy_out_of_bounds(occupancy: int) -> None:
    channel = SharedMemoryChannel("c", 1024)
    with pytest.raises(ChannelError, match=rf"occupancy {occupancy} outside 0\.\.1024"):
        channel.set_occupancy(occupancy)
    assert channel.occupancy == 0


# ------------------------------------------------------------------------------ session map

def session_map(max_processes: int | None = None) -> SessionProcessMap:
    smap = SessionProcessMap("s1", max_processes=max_processes)
    for node_id in ("src", "gain", "sink"):
        smap.add_process(NodeProcess(node_id, node_id.title()))
    for name in ("src.out", "gain.out"):
        smap.add_channel(SharedMemoryChannel(name, 1024))
    return smap


def bind(smap: SessionProcessMap, node: str, port: str, channel: str, role: Role) -> None:
    smap.bind(ProcessChannelBinding(node, port, channel, role))


def test_bindings_of_a_linear_pipeline() -> None:
    smap = session_map()
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    bind(smap, "gain", "in", "src.out", Role.SUBSCRIBER)
    bind(smap, "gain", "out", "gain.out", Role.PUBLISHER)
    bind(smap, "sink", "in", "gain.out", Role.SUBSCRIBER)
    assert [b.node_id for b in smap.publishers("src.out")] == ["src"]
    assert [b.node_id for b in smap.subscribers("src.out")] == ["gain"]
    assert {b.channel for b in smap.bindings_of("gain")} == {"src.out", "gain.out"}


def test_a_channel_may_have_many_subscribers() -> None:
    smap = session_map()
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    bind(smap, "gain", "in", "src.out", Role.SUBSCRIBER)
    bind(smap, "sink", "in", "src.out", Role.SUBSCRIBER)
    assert len(smap.subscribers("src.out")) == 2


@pytest.mark.parametrize("first", [Role.PUBLISHER, Role.SUBSCRIBER])
def test_a_node_is_never_publisher_and_subscriber_of_one_channel(first: Role) -> None:
    smap = session_map()
    second = Role.SUBSCRIBER if first is Role.PUBLISHER else Role.PUBLISHER
    bind(smap, "gain", "out" if first is Role.PUBLISHER else "in", "gain.out", first)
    with pytest.raises(SessionError, match=r"node 'gain' cannot be both publisher and "
                                           r"subscriber of channel 'gain\.out'"):
        bind(smap, "gain", "in" if first is Role.PUBLISHER else "out", "gain.out", second)
    assert len(smap.bindings) == 1


def test_one_publisher_per_channel() -> None:
    smap = session_map()
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    with pytest.raises(SessionError, match=r"channel 'src\.out' already has a publisher"):
        bind(smap, "gain", "out", "src.out", Role.PUBLISHER)


def test_binding_the_same_port_twice_is_idempotent() -> None:
    smap = session_map()
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    bind(smap, "gain", "in", "src.out", Role.SUBSCRIBER)
    bind(smap, "gain", "in", "src.out", Role.SUBSCRIBER)
    assert len(smap.bindings) == 2


@pytest.mark.parametrize(("node", "channel", "message"), [
    ("ghost", "src.out", "unknown node 'ghost'"),
    ("src", "ghost.out", "unknown channel 'ghost.out'"),
])
def test_bind_needs_a_known_node_and_channel(node: str, channel: str, message: str) -> None:
    with pytest.raises(SessionError, match=message):
        bind(session_map(), node, "out", channel, Role.PUBLISHER)


def test_max_processes_is_enforced() -> None:
    smap = session_map(max_processes=3)
    with pytest.raises(SessionError, match=r"max_processes \(3\) reached"):
        smap.add_process(NodeProcess("extra", "Extra"))
    assert list(smap.processes) == ["src", "gain", "sink"]


def test_no_limit_by_default() -> None:
    smap = SessionProcessMap("s1")
    for i in range(50):
        smap.add_process(NodeProcess(f"n{i}", "N"))
    assert len(smap.processes) == 50


def test_duplicate_process_and_channel_rejected() -> None:
    smap = session_map()
    with pytest.raises(SessionError, match="node 'gain' already has a process"):
        smap.add_process(NodeProcess("gain", "Gain"))
    with pytest.raises(SessionError, match=r"channel 'src\.out' already exists"):
        smap.add_channel(SharedMemoryChannel("src.out", 1024))


# ------------------------------------------------------------- the map as the live record

def wired() -> SessionProcessMap:
    smap = session_map()
    smap.channels["src.out"].source = "src.out"
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    bind(smap, "gain", "in", "src.out", Role.SUBSCRIBER)
    return smap


def test_first_bind_makes_a_channel_active_and_counts_its_ends() -> None:
    smap = session_map()
    channel = smap.channels["src.out"]
    assert channel.state is C.CREATED and (channel.publishers, channel.subscribers) == (0, 0)
    bind(smap, "gain", "in", "src.out", Role.SUBSCRIBER)
    assert channel.state is C.ACTIVE and (channel.publishers, channel.subscribers) == (0, 1)
    bind(smap, "src", "out", "src.out", Role.PUBLISHER)
    assert (channel.publishers, channel.subscribers) == (1, 1)
    assert [s for _, s in channel.history] == [C.CREATED, C.ACTIVE]
    assert all(b.connected and b.connected_at <= time.time() for b in smap.bindings)


def test_draining_channel_is_destroyed_in_order_when_both_ends_are_gone() -> None:
    smap = wired()
    channel = smap.channels["src.out"]
    channel.set_state(C.DRAINING)  # the writer sent end of stream
    smap.disconnect("src")
    assert channel.state is C.DRAINING and (channel.publishers, channel.subscribers) == (0, 1)
    smap.disconnect("gain")
    assert channel.state is C.DESTROYED and not channel.force_closed
    assert [s for _, s in channel.history] == [C.CREATED, C.ACTIVE, C.DRAINING, C.DESTROYED]
    assert all(b.disconnected_at is not None for b in smap.bindings)


def test_active_channel_whose_ends_died_is_force_closed() -> None:
    smap = wired()
    channel = smap.channels["src.out"]
    smap.disconnect("gain")
    smap.disconnect("src")
    assert channel.state is C.DESTROYED and channel.force_closed
    assert [s for _, s in channel.history] == [C.CREATED, C.ACTIVE, C.DESTROYED]


def test_close_all_force_closes_what_is_left_and_keeps_the_destroyed() -> None:
    smap = wired()
    done = smap.channels["src.out"]
    done.set_state(C.DRAINING)
    smap.disconnect("src")
    smap.disconnect("gain")
    smap.close_all()
    assert not done.force_closed  # destroyed in order before teardown
    never_bound = smap.channels["gain.out"]
    assert never_bound.state is C.DESTROYED and never_bound.force_closed


def test_ready_stamps_initialized_at_once() -> None:
    process = NodeProcess("gain", "Gain", session_id="s1", input_channels=["src.out"],
                          output_channels=["gain.out"])
    process.set_status(S.INITIALIZING)
    assert process.initialized_at is None
    process.set_status(S.READY)
    first = process.initialized_at
    assert first is not None
    process.set_status(S.PROCESSING)
    process.set_status(S.READY)
    assert process.initialized_at == first


def test_drop_mode_channel_tracks_no_occupancy() -> None:
    channel = SharedMemoryChannel("c", 1024, backpressure=False)
    assert channel.occupancy is None
    with pytest.raises(ChannelError, match="without backpressure the occupancy is not tracked"):
        channel.set_occupancy(1)
    channel.force_close()
    assert channel.occupancy is None and channel.force_closed
