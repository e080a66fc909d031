"""Session events in, Prometheus metrics out.

The figures arrive as absolute values in ``stats`` events (a node's messages so far, a
channel's drops so far), so the collector keeps each session's latest event and turns it into
metric families when scraped, rather than incrementing counters of its own. Names follow the
Prometheus conventions: counters end in ``_total``, units are base units in the name
(``_seconds``, ``_bytes``), dimensions are labels (``session``, ``node``, ``channel``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

KEEP_ENDED = 16  # ended sessions whose last figures are still served (then dropped)
STATES = ("Created", "Active", "Draining", "Destroyed")
NODE = ["session", "node", "node_type"]
CHANNEL = ["session", "channel", "to"]


class SessionCollector:
    """A ``prometheus_client`` collector over the sessions of one host process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: OrderedDict[str, dict[str, Any]] = OrderedDict()  # session -> event
        self._running: set[str] = set()
        self._ended = {True: 0, False: 0}

    def observe(self, event: dict[str, Any]) -> None:
        kind, session = event.get("event"), event.get("session")
        if not isinstance(session, str):
            return
        with self._lock:
            if kind == "stats":
                self._stats[session] = event
                self._stats.move_to_end(session)
                if not event.get("final"):
                    self._running.add(session)
            elif kind == "session_end":
                self._running.discard(session)
                self._ended[bool(event.get("ok"))] += 1
                ended = [s for s in self._stats if s not in self._running]
                for old in ended[:-KEEP_ENDED]:
                    del self._stats[old]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            events = list(self._stats.values())
            running = len(self._running)
            ended = dict(self._ended)
        yield GaugeMetricFamily("nodehost_sessions_running", "Sessions running now",
                                value=running)
        sessions = CounterMetricFamily("nodehost_sessions_ended",
                                       "Sessions that ended, by outcome", labels=["ok"])
        for ok, count in ended.items():
            sessions.add_metric([str(ok).lower()], count)
        yield sessions
        yield from _node_metrics(events)
        yield from _channel_metrics(events)


def _node_metrics(events: list[dict[str, Any]]) -> Iterator[Metric]:
    received = CounterMetricFamily("nodehost_node_received_messages",
                                   "Messages the node took from its inputs", labels=NODE)
    sent = CounterMetricFamily("nodehost_node_sent_messages",
                               "Messages the node sent on its outputs", labels=NODE)
    processing = GaugeMetricFamily("nodehost_node_processing_seconds",
                                   "process() time per message over the last interval",
                                   labels=[*NODE, "quantile"])
    age = GaugeMetricFamily("nodehost_node_input_age_seconds",
                            "Age of the node's inputs since their origin (end-to-end latency "
                            "up to this node) over the last interval",
                            labels=[*NODE, "quantile"])
    busy = GaugeMetricFamily("nodehost_node_busy_ratio",
                             "Fraction of the last interval spent in node code", labels=NODE)
    memory = GaugeMetricFamily("nodehost_node_memory_bytes", "Resident memory of the node",
                               labels=NODE)
    for event in events:
        for node, f in event["nodes"].items():
            labels = [event["session"], node, f["node_type"]]
            received.add_metric(labels, f["received"])
            sent.add_metric(labels, f["sent"])
            for family, figures in ((processing, f["processing_s"]), (age, f["input_age_s"])):
                for quantile, key in (("0.5", "p50"), ("0.99", "p99")):
                    if figures.get(key) is not None:
                        family.add_metric([*labels, quantile], figures[key])
            if f.get("busy") is not None:
                busy.add_metric(labels, f["busy"])
            if f.get("memory") is not None:
                memory.add_metric(labels, f["memory"])
    yield from (received, sent, processing, age, busy, memory)


def _channel_metrics(events: list[dict[str, Any]]) -> Iterator[Metric]:
    sent = CounterMetricFamily("nodehost_channel_sent_messages",
                               "Messages written into the channel", labels=CHANNEL)
    dropped = CounterMetricFamily("nodehost_channel_dropped_messages",
                                  "Messages lost: overwritten before a reader took them (drop "
                                  "mode) or sent with no reader", labels=CHANNEL)
    blocked = CounterMetricFamily("nodehost_channel_blocked_seconds",
                                  "Time the writer waited for readers (backpressure)",
                                  labels=CHANNEL)
    occupancy = GaugeMetricFamily("nodehost_channel_occupancy_bytes",
                                  "Payload bytes sent and not yet taken by every reader",
                                  labels=CHANNEL)
    in_flight = GaugeMetricFamily("nodehost_channel_in_flight_messages",
                                  "Messages sent and not yet taken by every reader",
                                  labels=CHANNEL)
    capacity = GaugeMetricFamily("nodehost_channel_capacity_bytes",
                                 "The channel's capacity", labels=CHANNEL)
    ends = GaugeMetricFamily("nodehost_channel_ends", "Bound publishers and subscribers",
                             labels=[*CHANNEL, "role"])
    state = GaugeMetricFamily("nodehost_channel_state",
                              "1 for the channel's lifecycle state, 0 for the others",
                              labels=[*CHANNEL, "state"])
    for event in events:
        for c in event["channels"]:
            labels = [event["session"], c["from"], ",".join(c["to"])]
            sent.add_metric(labels, c["sent"])
            dropped.add_metric(labels, c["dropped"])
            blocked.add_metric(labels, c["blocked_s"])
            if c["occupancy"] is not None:
                occupancy.add_metric(labels, c["occupancy"])
            in_flight.add_metric(labels, c["in_flight"])
            capacity.add_metric(labels, c["capacity"])
            ends.add_metric([*labels, "publisher"], c["publishers"])
            ends.add_metric([*labels, "subscriber"], c["subscribers"])
            for name in STATES:
                state.add_metric([*labels, name], 1 if c["state"] == name else 0)
    yield from (sent, dropped, blocked, occupancy, in_flight, capacity, ends, state)
