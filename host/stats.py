"""Figures a node runner samples while it works, summarised only when it reports.

The hot path pays one list store and one integer add per figure and message; sorting and
percentiles happen at report time (every ``STATS_INTERVAL_S``), over the newest
``Samples.SIZE`` values of the interval — a bounded reservoir, whatever the message rate.
"""

from __future__ import annotations

import time
from typing import Any

from nodehost.lifecycle import (
    ChannelState,
    NodeFigures,
    NodeProcess,
    ReaderFigures,
    SessionProcessMap,
    SharedMemoryChannel,
)

STATS_INTERVAL_S = 0.5  # how often a runner reports; the host emits ``stats`` events as often


class Samples:
    """A ring of the newest ``SIZE`` values (ints, e.g. nanoseconds).

    Writers do ``s.values[s.count & s.MASK] = v; s.count += 1`` inline; ``take()`` returns
    the values added since the previous ``take()`` (at most ``SIZE`` of them)."""

    SIZE = 1024
    MASK = SIZE - 1
    __slots__ = ("count", "taken", "values")

    def __init__(self) -> None:
        self.values = [0] * self.SIZE
        self.count = 0
        self.taken = 0

    def add(self, value: int) -> None:
        self.values[self.count & self.MASK] = value
        self.count += 1

    def take(self) -> list[int]:
        new = min(self.count - self.taken, self.SIZE)
        self.taken = self.count
        if new <= 0:
            return []
        end = self.count & self.MASK
        start = end - new
        if start >= 0:
            return self.values[start:end]
        return self.values[start:] + self.values[:end]


def percentiles_s(values_ns: list[int]) -> tuple[float | None, float | None]:
    """(p50, p99) in seconds of nanosecond values; (None, None) when there are none."""
    if not values_ns:
        return None, None
    ordered = sorted(values_ns)
    n = len(ordered)
    # nearest rank: the smallest value with at least p % of the values at or below it
    p50, p99 = ordered[(n + 1) // 2 - 1], ordered[(99 * n + 99) // 100 - 1]
    return round(p50 / 1e9, 9), round(p99 / 1e9, 9)


# -- host side: runner reports → the session's records → ``stats`` events ------------------
def apply_report(smap: SessionProcessMap, node_id: str, report: dict[str, Any]) -> None:
    """Fold one runner's ``stats`` report into the session's records."""
    process = smap.processes[node_id]
    last = process.figures
    # An interval without messages has no percentiles: the last ones stand.
    processing = report.get("processing_s") or (None, None)
    if processing[0] is None:
        processing = (last.processing_p50_s, last.processing_p99_s)
    age = report.get("input_age_s") or (None, None)
    if age[0] is None:
        age = (last.input_age_p50_s, last.input_age_p99_s)
    process.figures = NodeFigures(
        received=int(report.get("received", 0)), sent=int(report.get("sent", 0)),
        processing_p50_s=processing[0], processing_p99_s=processing[1],
        input_age_p50_s=age[0], input_age_p99_s=age[1], busy=report.get("busy"),
        first_output_ts=report.get("first_output_ts"), reported_at=time.time())
    for out in report.get("outputs", ()):
        channel = smap.channels.get(out.get("channel", ""))
        if channel is None:
            continue
        channel.sent = int(out["sent"])
        channel.unreached = int(out["unreached"])
        channel.blocked_s = float(out["blocked_s"])
        if channel.backpressure and channel.state is not ChannelState.DESTROYED:
            channel.set_occupancy(min(int(out["occupancy"]), channel.capacity))
            channel.in_flight = int(out["in_flight"])
        if out.get("eos") and channel.state is ChannelState.ACTIVE:
            channel.set_state(ChannelState.DRAINING)
        _account(channel)
    for inp in report.get("inputs", ()):
        channel = smap.channels.get(inp.get("channel", ""))
        if channel is None:
            continue
        channel.readers[f"{node_id}.{inp['port']}"] = ReaderFigures(
            int(inp["received"]), int(inp["dropped"]), int(inp["sent"]))
        _account(channel)


def _account(channel: SharedMemoryChannel) -> None:
    channel.dropped = channel.unreached + sum(r.dropped for r in channel.readers.values())
    if not channel.backpressure:
        channel.occupancy = None
        if channel.state is not ChannelState.DESTROYED:
            # the writer keeps no record: what the slowest reader has not seen yet
            seen = min((r.sent for r in channel.readers.values()), default=channel.sent)
            channel.in_flight = max(0, channel.sent - seen)


def node_entry(process: NodeProcess) -> dict[str, Any]:
    f = process.figures
    return {"node_type": process.node_type, "pid": process.pid, "status": process.status.value,
            "received": f.received, "sent": f.sent,
            "processing_s": {"p50": f.processing_p50_s, "p99": f.processing_p99_s},
            "input_age_s": {"p50": f.input_age_p50_s, "p99": f.input_age_p99_s},
            "busy": f.busy, "memory": process.memory_usage,
            "first_output_ts": f.first_output_ts, "reported_at": f.reported_at}


def channel_entry(channel: SharedMemoryChannel) -> dict[str, Any]:
    return {"name": channel.name, "from": channel.source, "to": list(channel.targets),
            "state": channel.state.value, "force_closed": channel.force_closed,
            "capacity": channel.capacity, "backpressure": channel.backpressure,
            "occupancy": channel.occupancy, "in_flight": channel.in_flight,
            "publishers": channel.publishers, "subscribers": channel.subscribers,
            "sent": channel.sent, "dropped": channel.dropped,
            "blocked_s": channel.blocked_s,
            "readers": {name: {"received": r.received, "dropped": r.dropped, "sent": r.sent}
                        for name, r in channel.readers.items()}}


def stats_fields(smap: SessionProcessMap) -> dict[str, Any]:
    """The body of a ``stats`` event (docs/architecture.md, "Events")."""
    return {"nodes": {node_id: node_entry(p) for node_id, p in smap.processes.items()},
            "channels": [channel_entry(c) for c in smap.channels.values()]}
