"""What ``nodehost run`` shows: JSON lines, plain log lines, or a live terminal table."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost.errors import HostClosed

if TYPE_CHECKING:  # imported when used: the signal handlers go in before anything heavy
    from nodehost.session import Host, Session

EXIT_OK, EXIT_FAILED = 0, 1


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f} MiB" if isinstance(value, int | float) else "-"


def format_event(event: dict[str, Any]) -> str | None:
    kind = event["event"]
    if kind == "status":
        text = f"{event['node']:<14} {event['status']:<12} pid={event['pid']} " \
               f"mem={_mib(event.get('memory_usage'))}"
        if event.get("status") == "Initializing" and event.get("sandbox"):
            text += f" sandbox={','.join(event['sandbox'])}"
        if event.get("error"):
            text += f"  error: {event['error']}"
        return text
    if kind == "progress":
        return f"{event['node']:<14} {100 * (event.get('fraction') or 0):5.1f}% " \
               f"{event.get('message', '')}"
    if kind == "log":
        return f"{event['node']:<14} {event.get('message', '')}"
    return None


class Timeline:
    """Per-node timing gathered from events: spawn → Ready, first output, messages."""

    def __init__(self) -> None:
        self.spawned: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, event: dict[str, Any]) -> None:
        if event["event"] != "status":
            return
        node = event["node"]
        row = self.rows.setdefault(node, {"type": event["node_type"]})
        row.update(status=event["status"], pid=event["pid"])
        if event.get("memory_usage"):
            row["memory"] = max(row.get("memory", 0), event["memory_usage"])
        if event.get("stats"):
            row["stats"] = event["stats"]
        self.spawned.setdefault(node, event["ts"])
        if event["status"] == "Ready" and node not in self.ready:
            self.ready[node] = event["ts"]
        if event.get("error"):
            row["error"] = event["error"]

    def summary(self) -> list[str]:
        lines = [f"{'NODE':<14} {'TYPE':<14} {'READY AFTER':>11} {'IN':>7} {'OUT':>7} "
                 f"{'FIRST OUT':>10} {'MEM PEAK':>9}"]
        for node, row in self.rows.items():
            stats = row.get("stats") or {}
            ready = self.ready.get(node)
            init = f"{ready - self.spawned[node]:.2f} s" if ready else "-"
            first = stats.get("first_output_ts")
            first_s = f"{first - self.spawned[node]:.2f} s" if first else "-"
            lines.append(f"{node:<14} {row['type']:<14} {init:>11} "
                         f"{stats.get('received', 0):>7} {stats.get('sent', 0):>7} "
                         f"{first_s:>10} {_mib(row.get('memory')):>9}")
        return lines


def _live(session: Session, timeline: Timeline) -> Iterator[dict[str, Any]]:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        t = Table(title=f"nodehost session {session.id}", expand=False)
        for col in ("node", "type", "pid", "status", "memory", "in", "out", "latency p50"):
            t.add_column(col)
        for node, row in timeline.rows.items():
            stats = row.get("stats") or {}
            lat = stats.get("latency_p50_us")
            t.add_row(node, row["type"], str(row.get("pid", "")), row.get("status", ""),
                      _mib(row.get("memory")), str(stats.get("received", 0)),
                      str(stats.get("sent", 0)), f"{lat:.0f} µs" if lat else "-")
        return t

    console = Console(stderr=False)
    with Live(table(), console=console, refresh_per_second=8, transient=False) as live:
        for event in session.events():
            timeline.add(event)
            if event["event"] == "log":
                live.console.print(format_event(event))
            live.update(table())
            yield event


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM while ``nodehost run`` runs.

    Installed before anything else. A signal never raises into the main thread (which may
    be anywhere, e.g. between starting a session and registering it): it cancels the host
    (or, during plugin discovery, the host about to exist). The session stops, nodes get
    the pipeline's ``stop_grace_s`` to run ``cleanup()``, and a second signal kills them at
    once. The command exits 128 + the signal number with one line on stderr.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.host: Host | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        # Installed explicitly: a shell starts background jobs with SIGINT ignored.
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(signum)
        if self.host is not None:
            self.host.cancel(self.reason, graceful=first)

    def attach(self, host: Host) -> None:
        self.host = host
        if self.received is not None:  # arrived while the host was being made
            host.cancel(self.reason)

    @property
    def what(self) -> str:
        return "terminated" if self.received == signal.SIGTERM else "interrupted"

    @property
    def reason(self) -> str:
        return f"{self.what} ({self.received.name if self.received else 'no signal'})"

    def exit(self, session: Session | None) -> int:
        """Say what happened, in one line, and return the exit code."""
        assert self.received is not None
        done = f"session {session.id} stopped, every node process reaped" if session \
            else "stopped before the session started"
        print(f"{self.reason}: {done}", file=sys.stderr)
        return 128 + self.received.value


def run_pipeline(config: str | Path, events: str | None = None) -> int:
    mode = events or ("live" if sys.stdout.isatty() else "log")
    timeline = Timeline()
    session: Session | None = None
    with StopSignals() as signals:
        try:
            from nodehost.session import Host

            host = Host()
            signals.attach(host)
            session = host.start_session(config)
            started = time.monotonic()
            stream = _live(session, timeline) if mode == "live" else session.events()
            for event in stream:
                if mode == "json":
                    print(json.dumps(event), flush=True)
                    continue
                if mode == "log":
                    timeline.add(event)
                    line = format_event(event)
                    if line:
                        print(line, flush=True)
            result = session.wait()
        except HostClosed:  # a signal closed the host before the session was started
            if signals.received is None:
                raise
        if signals.received is not None:
            return signals.exit(session)
    assert session is not None
    if mode != "json":
        print()
        print("\n".join(timeline.summary()))
        print(f"session {session.id}: {'ok' if result.ok else 'FAILED'} in "
              f"{time.monotonic() - started:.2f} s")
    if not result.ok:
        print(f"error: session failed: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
