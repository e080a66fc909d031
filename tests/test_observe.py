"""Seeing inside a running session: stats events, the session's records, end-to-end age.

Every figure is checked against what really happened in a real session of real processes:
the sink's own count of what it received, the source's count of what it sent, the order in
which the channel really went through its states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import probe_chain

from nodehost.lifecycle import ChannelState, Role
from nodehost.session import Host

STATES = [s.value for s in ChannelState]  # Created, Active, Draining, Destroyed
TIMEOUT = 120


def collect(host: Host, config: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    session = host.start_session(config)
    events = list(session.events(timeout=TIMEOUT))
    return session, events


def stats_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "stats"]


def only_channel(event: dict[str, Any], source: str) -> dict[str, Any]:
    [channel] = [c for c in event["channels"] if c["from"] == source]
    return channel


def assert_states_follow_the_diagram(events: list[dict[str, Any]], source: str) -> None:
    seen = [only_channel(e, source)["state"] for e in stats_events(events)]
    positions = [STATES.index(s) for s in seen]
    assert positions == sorted(positions), seen  # never backwards
    assert seen[-1] == "Destroyed"


def test_drop_mode_slow_reader_reports_drops_that_add_up(host: Host, tmp_out: Path) -> None:
    count = 800  # at least 2.4 s of stream: several stats events while it runs
    config = probe_chain(tmp_out / "sum.json", count=count, middle=[], name="drops")
    config["nodes"][0]["params"]["interval_ms"] = 3.0
    config["nodes"][-1]["params"]["delay_ms"] = 10.0
    config["connections"][0]["backpressure"] = False
    session, events = collect(host, config)
    assert session.wait(TIMEOUT).ok
    summary = json.loads((tmp_out / "sum.json").read_text())
    every = stats_events(events)
    assert every[-1]["final"] and not any(e["final"] for e in every[:-1])
    assert events[-1]["event"] == "session_end" and events[-2] is every[-1]
    for event in every:  # at every stats event, per reader: received + dropped = sent
        channel = only_channel(event, "src.out")
        assert channel["occupancy"] is None  # not tracked without backpressure
        for reader in channel["readers"].values():
            assert reader["received"] + reader["dropped"] == reader["sent"], event
        assert channel["dropped"] == sum(r["dropped"] for r in channel["readers"].values())
    final = only_channel(every[-1], "src.out")
    reader = final["readers"]["sink.in"]
    assert final["sent"] == count == reader["sent"]
    assert reader["received"] == summary["count"] < count  # what the sink really got
    assert reader["dropped"] == count - summary["count"] == final["dropped"]
    assert every[-1]["nodes"]["sink"]["received"] == summary["count"]
    assert every[-1]["nodes"]["src"]["sent"] == count
    # Figures moved while the stream ran, not only at status changes.
    live = [only_channel(e, "src.out")["readers"].get("sink.in", {}).get("received", 0)
            for e in every[:-1]]
    assert len({n for n in live if 0 < n < summary["count"]}) >= 2, live
    assert_states_follow_the_diagram(events, "src.out")


def test_waiting_for_the_stream_to_drain_is_not_blocked_time(host: Host,
                                                              tmp_out: Path) -> None:
    """A source whose few messages all fit the channel is never held back: its wait for the
    slow sink to take them at end of stream is not backpressure (graph, live view)."""
    count, delay_ms = 8, 60.0
    config = probe_chain(tmp_out / "sum.json", count=count, middle=[], name="drain")
    config["nodes"][-1]["params"]["delay_ms"] = delay_ms
    session, events = collect(host, config)
    assert session.wait(TIMEOUT).ok
    final = only_channel(stats_events(events)[-1], "src.out")
    assert final["sent"] == count
    assert final["blocked_s"] < 0.25 * count * delay_ms / 1000, final


def test_blocked_writer_reports_blocked_time_and_occupancy(host: Host, tmp_out: Path) -> None:
    count, delay_ms, payload = 150, 8.0, 4096
    config = probe_chain(tmp_out / "sum.json", count=count, payload=payload, middle=[],
                         name="blocked")
    config["nodes"][-1]["params"]["delay_ms"] = delay_ms
    session, events = collect(host, config)
    assert session.wait(TIMEOUT).ok
    summary = json.loads((tmp_out / "sum.json").read_text())
    assert summary["count"] == count
    every = stats_events(events)
    final = only_channel(every[-1], "src.out")
    assert final["dropped"] == 0 and final["sent"] == count
    assert final["readers"]["sink.in"] == {"received": count, "dropped": 0, "sent": count}
    # The sink needs count × delay; the source, unblocked, would take a fraction of that:
    # most of the source's life was spent waiting for credit.
    assert final["blocked_s"] > 0.5 * count * delay_ms / 1000, final
    running = [only_channel(e, "src.out") for e in every
               if only_channel(e, "src.out")["state"] == "Active"
               and only_channel(e, "src.out")["sent"] > 0]
    assert running, "no stats event while the stream ran"
    assert any(c["occupancy"] > 0 and c["in_flight"] > 0 for c in running), running
    for c in running:
        assert 0 <= c["occupancy"] <= c["capacity"]
        assert c["occupancy"] <= c["in_flight"] * payload
        assert (c["publishers"], c["subscribers"]) == (1, 1)
    sink = [e["nodes"]["sink"] for e in every if e["nodes"]["sink"]["received"]]
    assert any(n["busy"] is not None and n["busy"] > 0.5 for n in sink), sink  # it sleeps
    p50, p99 = sink[-1]["processing_s"]["p50"], sink[-1]["processing_s"]["p99"]
    assert delay_ms / 1000 <= p50 <= p99


def test_normal_end_goes_created_active_draining_destroyed(host: Host, tmp_out: Path) -> None:
    session, events = collect(host, probe_chain(tmp_out / "sum.json", count=200, name="states"))
    assert session.wait(TIMEOUT).ok
    channels = session.channels()
    assert len(channels) == 2
    for channel in channels.values():
        assert [s.value for _, s in channel.history] == STATES
        assert not channel.force_closed
        assert (channel.publishers, channel.subscribers) == (0, 0)
    for source in ("src.out", "fwd.out"):
        assert_states_follow_the_diagram(events, source)
    # The records are what the last event says.
    final = stats_events(events)[-1]
    from nodehost.stats import channel_entry, node_entry

    assert [channel_entry(c) for c in channels.values()] == final["channels"]
    assert {n: node_entry(p) for n, p in session.processes().items()} == final["nodes"]


@pytest.mark.parametrize("how", ["failure", "stop"])
def test_teardown_force_closes_channels(host: Host, tmp_out: Path, how: str) -> None:
    middle = [{"id": "fwd", "type": "Faulty",
               "params": {"mode": "process_exception" if how == "failure" else "none",
                          "after": 20}}]
    config = probe_chain(tmp_out / "sum.json", count=10**9, middle=middle, name=how)
    config["nodes"][0]["params"]["interval_ms"] = 1.0
    session = host.start_session(config)
    events = []
    for event in session.events(timeout=TIMEOUT):
        events.append(event)
        if how == "stop" and event["event"] == "stats" and \
                only_channel(event, "fwd.out")["sent"] >= 20:
            session.stop("test stop")
    result = session.wait(TIMEOUT)
    assert not result.ok
    for channel in session.channels().values():
        history = [s.value for _, s in channel.history]
        assert history == ["Created", "Active", "Destroyed"], history
        assert channel.force_closed and channel.state is ChannelState.DESTROYED
    for source in ("src.out", "fwd.out"):
        assert_states_follow_the_diagram(events, source)
        assert only_channel(events[-2], source)["force_closed"]


def test_processes_and_bindings_are_the_seed_records(host: Host, tmp_out: Path) -> None:
    session, events = collect(host, probe_chain(tmp_out / "sum.json", count=20, name="records"))
    assert session.wait(TIMEOUT).ok
    processes = session.processes()
    channels = session.channels()
    src_out = next(n for n, c in channels.items() if c.source == "src.out")
    fwd_out = next(n for n, c in channels.items() if c.source == "fwd.out")
    fwd = processes["fwd"]
    assert fwd.session_id == session.id
    assert fwd.input_channels == [src_out] and fwd.output_channels == [fwd_out]
    ready = next(e["ts"] for e in events if e["event"] == "status" and e["node"] == "fwd"
                 and e["status"] == "Ready")
    assert fwd.initialized_at == pytest.approx(ready, abs=0.5)
    assert channels[src_out].targets == ["fwd.in"]
    bindings = {(b.node_id, b.port, b.channel, b.role) for b in session.bindings()}
    assert bindings == {("src", "out", src_out, Role.PUBLISHER),
                        ("fwd", "in", src_out, Role.SUBSCRIBER),
                        ("fwd", "out", fwd_out, Role.PUBLISHER),
                        ("sink", "in", fwd_out, Role.SUBSCRIBER)}
    for binding in session.bindings():
        assert binding.disconnected_at is not None
        assert session.started_at <= binding.connected_at <= binding.disconnected_at


def test_input_age_grows_along_the_pipeline(host: Host, tmp_out: Path) -> None:
    """Forward passes its input on, so the sink's input is as old as the source's message:
    older than Forward's input by Forward's processing time (20 ms of work a message)."""
    middle = [{"id": "fwd", "type": "Forward", "params": {"work_ms": 20.0}}]
    config = probe_chain(tmp_out / "sum.json", count=40, middle=middle, name="age")
    config["nodes"][0]["params"]["interval_ms"] = 60.0  # paced: no queueing in front of fwd
    session, events = collect(host, config)
    assert session.wait(TIMEOUT).ok
    nodes = stats_events(events)[-1]["nodes"]
    fwd, sink = nodes["fwd"], nodes["sink"]
    assert fwd["processing_s"]["p50"] > 0
    # Each message reaches the sink after fwd finished it; the figures of the two nodes
    # cover different intervals, hence the margin.
    assert sink["input_age_s"]["p50"] >= 0.5 * fwd["processing_s"]["p50"]
    assert sink["input_age_s"]["p50"] > fwd["input_age_s"]["p50"] + \
        0.5 * fwd["processing_s"]["p50"]
    assert sink["input_age_s"]["p99"] >= sink["input_age_s"]["p50"]


# ------------------------------------------------------------------ the pieces, one by one

def test_samples_keep_the_newest_values_of_an_interval() -> None:
    from nodehost.stats import Samples

    s = Samples()
    assert s.take() == []
    for v in range(10):
        s.add(v)
    assert s.take() == list(range(10))
    assert s.take() == []
    for v in range(3 * Samples.SIZE + 5):  # wraps round: only the newest SIZE remain
        s.add(v)
    newest = s.take()
    assert newest == list(range(2 * Samples.SIZE + 5, 3 * Samples.SIZE + 5))


@pytest.mark.parametrize(("values", "p50", "p99"), [
    ([], None, None),
    ([7], 7e-9, 7e-9),
    ([1, 2], 1e-9, 2e-9),
    (list(range(1, 101)), 50e-9, 99e-9),
    (list(range(1, 1001)), 500e-9, 990e-9),
])
def test_percentiles_are_nearest_rank(values: list[int], p50: float | None,
                                      p99: float | None) -> None:
    from nodehost.stats import percentiles_s

    assert percentiles_s(list(reversed(values))) == (p50, p99)


def test_origin_travels_in_the_header() -> None:
    from nodehost import wire
    from nodehost.data import RuntimeData

    data = RuntimeData.text("hi")
    assert data.origin_ns == data.timestamp_ns  # created here, from nothing: its own stamp
    back = RuntimeData.from_bytes(data.to_bytes(seq=1))
    assert back.origin_ns == data.origin_ns
    raw = bytearray(wire.pack_header(wire.TEXT, 0, 0, 1000, 1, "s",
                                     wire.TextMetadata("utf-8", None), origin_ns=999))
    assert wire.unpack_header(bytes(raw), 0).origin_ns == 999
    assert raw[wire.ORIGIN_OFFSET:wire.ORIGIN_OFFSET + 8] == (999).to_bytes(8, "little")
    with pytest.raises(wire.WireFormatError, match="origin_ns 1001 after timestamp_ns 1000"):
        wire.unpack_header(wire.pack_header(wire.TEXT, 0, 0, 1000, 1, "s",
                                            wire.TextMetadata("utf-8", None), origin_ns=1001),
                           0)


def test_data_made_while_processing_an_input_inherits_its_origin() -> None:
    from nodehost.data import RuntimeData, inherited_origin

    inherited_origin.ns = 12345
    try:
        derived = RuntimeData.text("derived")
    finally:
        inherited_origin.ns = 0
    assert derived.origin_ns == 12345 and derived.timestamp_ns > 12345
    assert RuntimeData.text("fresh").origin_ns > 12345


# ------------------------------------------------------------------------ logs and the view

def chatty_chain(out: Path, count: int, **params: Any) -> dict[str, Any]:
    middle = [{"id": "talk", "type": "Chatty", "params": params}]
    return probe_chain(out, count=count, middle=middle, name="chatty")


def test_output_lines_become_log_events_and_files(tmp_out: Path) -> None:
    log_dir = tmp_out / "logs"
    with Host(log_dir=log_dir) as host:
        session, events = collect(host, chatty_chain(tmp_out / "sum.json", 10, lines=2))
        assert session.wait(TIMEOUT).ok
    lines = [e["message"] for e in events if e["event"] == "log" and e["node"] == "talk"
             and e["level"] == "OUTPUT"]
    # both streams, every line, in order (20 lines are within the budget)
    assert lines == [f"chatty line {i}" for i in range(1, 21)]
    text = (log_dir / "talk.log").read_text().splitlines()
    assert text == [f"chatty line {i}" for i in range(1, 21)]
    assert {p.name for p in log_dir.iterdir()} == {"src.log", "talk.log", "sink.log"}


def test_a_flood_of_output_is_rate_limited_not_lost_in_the_file(tmp_out: Path) -> None:
    from nodehost.nodelog import BURST

    log_dir = tmp_out / "logs"
    with Host(log_dir=log_dir) as host:
        session, events = collect(host, chatty_chain(tmp_out / "sum.json", 20, lines=200))
        assert session.wait(TIMEOUT).ok
    lines = [e["message"] for e in events if e["event"] == "log" and e["node"] == "talk"]
    assert len(lines) < 4000
    assert lines[:BURST] == [f"chatty line {i}" for i in range(1, BURST + 1)]
    notices = [line for line in lines if "more output lines not shown" in line]
    shown = len(lines) - len(notices)
    hidden = sum(int(n.split()[1]) for n in notices)
    assert notices and shown + hidden == 4000  # every line is either shown or counted
    assert len((log_dir / "talk.log").read_text().splitlines()) == 4000


def test_a_crash_shows_the_nodes_last_lines(host: Host, tmp_out: Path) -> None:
    config = chatty_chain(tmp_out / "sum.json", 1000, lines=3, crash_after=5)
    session, _events = collect(host, config)
    result = session.wait(TIMEOUT)
    assert not result.ok and result.failed_node == "talk"
    assert "exited with code 3; its last output:" in result.reason
    quoted = [line.removeprefix("    | ") for line in result.reason.splitlines()[1:]]
    assert quoted == [*(f"chatty line {i}" for i in range(7, 16)),
                      "chatty dies after 5 messages"]


def test_live_view_shows_progress_rates_and_channels(host: Host, tmp_out: Path) -> None:
    from rich.console import Console

    from nodehost.runview import LiveView

    def render(view: LiveView) -> str:
        console = Console(record=True, width=200, color_system=None)
        console.print(view.render())
        return console.export_text()

    middle = [{"id": "warm", "type": "SlowInit", "params": {"init_s": 1.0}}]
    config = probe_chain(tmp_out / "sum.json", count=600, middle=middle, name="view")
    config["nodes"][0]["params"]["interval_ms"] = 3.0
    config["nodes"][-1]["params"]["delay_ms"] = 6.0
    config["connections"][1]["backpressure"] = False
    session = host.start_session(config)
    view = LiveView(session.id)
    during_init = during_run = ""
    rate = 0.0
    for event in session.events(timeout=TIMEOUT):
        view.add(event)
        if event["event"] == "progress" and event["node"] == "warm" and not during_init:
            during_init = render(view)
        if event["event"] == "stats" and event["nodes"]["sink"]["received"] > 100 \
                and not during_run:
            during_run = render(view)
            rate = view.rates["sink"][0]  # messages/s between the last two events
    assert session.wait(TIMEOUT).ok
    assert "starting" in during_init and "warming up" in during_init and "░" in during_init
    assert "starting" not in during_run
    assert "channels" in during_run and "warm.out" in during_run and "█" in during_run
    assert rate > 0
    final = render(view)
    summary = json.loads((tmp_out / "sum.json").read_text())
    dropped = 600 - summary["count"]
    row = next(line for line in final.splitlines() if line.lstrip("│ ").startswith("warm.out"))
    assert "Destroyed" in row and f" {dropped} " in row


def test_run_log_dir_writes_one_file_per_node(tmp_out: Path) -> None:
    import subprocess
    import sys

    import yaml

    config = tmp_out / "chatty.yaml"
    config.write_text(yaml.safe_dump(chatty_chain(tmp_out / "sum.json", 3, lines=1)))
    log_dir = tmp_out / "logs"
    done = subprocess.run([sys.executable, "-m", "nodehost.cli", "run", str(config),
                           "--log-dir", str(log_dir)], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    assert "chatty line 3" in done.stdout  # output lines are shown outside a terminal too
    assert (log_dir / "talk.log").read_text().splitlines() == \
        ["chatty line 1", "chatty line 2", "chatty line 3"]
    assert {p.name for p in log_dir.iterdir()} == {"src.log", "talk.log", "sink.log"}
