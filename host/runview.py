"""What ``nodehost run`` shows: JSON lines, plain log lines, or a live terminal table."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost.errors import ConfigError, HostClosed, Issue, NodehostError

if TYPE_CHECKING:  # imported when used: the signal handlers go in before anything heavy
    from nodehost.config import PipelineConfig
    from nodehost.session import Host, Session

EXIT_OK, EXIT_FAILED = 0, 1


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f} MiB" if isinstance(value, int | float) else "-"


def format_event(event: dict[str, Any]) -> str | None:
    kind = event["event"]
    if kind == "status":
        text = f"{event['node']:<14} {event['status']:<12} pid={event['pid']} " \
               f"mem={_mib(event.get('memory_usage'))}"
        if event.get("memory_limit"):
            text += f" of {_mib(event['memory_limit'])}"
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


def sandbox_warning(event: dict[str, Any]) -> str | None:
    """For a node's first sandboxed status: which layers it did not get, and why."""
    if event["event"] != "status" or event.get("status") != "Initializing" or \
            not event.get("sandbox"):
        return None
    from nodehost.doctor import missing_layers

    missing = missing_layers(event["sandbox"])
    if not missing:
        return None
    needs = "; ".join(f"{layer}: {need}" for layer, need in missing.items())
    return f"{event['node']:<14} sandbox without {', '.join(missing)} ({needs}; " \
           "`nodehost doctor` says more)"


def quiet_line(event: dict[str, Any]) -> str | None:
    """What a non-terminal ``nodehost run`` prints: the nodes' logs, errors and missing
    sandbox layers, not every state change (``--events log`` prints those)."""
    if event["event"] == "log":
        return format_event(event)
    if event["event"] == "status" and event.get("error"):
        return f"{event['node']:<14} {event['status']:<12} error: {event['error']}"
    return sandbox_warning(event)


class Timeline:
    """Per-node timing gathered from events: spawn → Ready, first output, messages."""

    def __init__(self) -> None:
        self.spawned: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, event: dict[str, Any]) -> None:
        if event["event"] == "stats":
            for node, figures in event["nodes"].items():
                if node in self.rows:
                    self.rows[node]["stats"] = figures
            return
        if event["event"] != "status":
            return
        node = event["node"]
        row = self.rows.setdefault(node, {"type": event["node_type"]})
        row.update(status=event["status"], pid=event["pid"])
        if event.get("memory_usage"):
            row["memory"] = max(row.get("memory", 0), event["memory_usage"])
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


class LiveView:
    """The terminal view of a running session, rebuilt from its events: start-up progress
    bars until every node is Ready, then per-node rates and a channel table."""

    BAR = 12

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.nodes: dict[str, dict[str, Any]] = {}
        self.channels: list[dict[str, Any]] = []
        self.last_stats: dict[str, Any] | None = None
        self.rates: dict[str, tuple[float, float]] = {}  # node -> (in/s, out/s)

    def add(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "status":
            row = self.nodes.setdefault(event["node"], {"type": event["node_type"]})
            row["status"] = event["status"]
            if event["status"] in ("Ready", "Processing"):
                row["fraction"] = 1.0
        elif kind == "progress":
            row = self.nodes.setdefault(event["node"], {"type": event["node_type"]})
            row["fraction"] = event.get("fraction") or 0.0
            row["message"] = event.get("message", "")
        elif kind == "stats":
            previous, self.last_stats = self.last_stats, event
            self.channels = event["channels"]
            for node, figures in event["nodes"].items():
                row = self.nodes.setdefault(node, {"type": figures["node_type"]})
                row["figures"] = figures
                before = previous["nodes"].get(node) if previous else None
                dt = event["ts"] - previous["ts"] if previous else 0.0
                if before is not None and dt > 0:
                    self.rates[node] = ((figures["received"] - before["received"]) / dt,
                                        (figures["sent"] - before["sent"]) / dt)

    def _bar(self, fraction: float) -> str:
        filled = max(0, min(self.BAR, round(fraction * self.BAR)))
        return "█" * filled + "░" * (self.BAR - filled)

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = []
        starting = [n for n, r in self.nodes.items()
                    if r.get("status") in (None, "Idle", "Initializing")]
        if starting:
            init = Table(title="starting", title_justify="left", box=None)
            for col in ("node", "type", "progress", ""):
                init.add_column(col)
            for node in starting:
                row = self.nodes[node]
                fraction = row.get("fraction", 0.0)
                init.add_row(node, row["type"], f"{self._bar(fraction)} {fraction:4.0%}",
                             row.get("message", row.get("status") or ""))
            parts.append(init)
        nodes = Table(title=f"nodehost session {self.session_id}", title_justify="left")
        for col in ("node", "type", "status", "in", "out", "in/s", "out/s", "process p50",
                    "age p50", "age p99", "busy", "memory"):
            nodes.add_column(col, justify="left" if col in ("node", "type", "status")
                             else "right")
        for node, row in self.nodes.items():
            f = row.get("figures") or {}
            rate_in, rate_out = self.rates.get(node, (0.0, 0.0))
            nodes.add_row(node, row["type"], row.get("status", ""), str(f.get("received", 0)),
                          str(f.get("sent", 0)), f"{rate_in:.0f}", f"{rate_out:.0f}",
                          _ms((f.get("processing_s") or {}).get("p50")),
                          _ms((f.get("input_age_s") or {}).get("p50")),
                          _ms((f.get("input_age_s") or {}).get("p99")),
                          "-" if f.get("busy") is None else f"{f['busy']:.0%}",
                          _mib(f.get("memory")))
        parts.append(nodes)
        if self.channels:
            table = Table(title="channels", title_justify="left")
            for col in ("from", "to", "state", "occupancy", "in flight", "sent", "dropped",
                        "blocked"):
                table.add_column(col, justify="right" if col in (
                    "in flight", "sent", "dropped", "blocked") else "left")
            for c in self.channels:
                table.add_row(c["from"], ", ".join(c["to"]), c["state"], self._occupancy(c),
                              str(c["in_flight"]), str(c["sent"]),
                              f"[red]{c['dropped']}[/red]" if c["dropped"] else "0",
                              f"{c['blocked_s']:.2f} s")
            parts.append(table)
        return Group(*parts)

    def _occupancy(self, channel: dict[str, Any]) -> str:
        if channel["occupancy"] is None:  # drop mode: messages in flight of the queue depth
            from nodehost.channels import DEPTH

            return f"{self._bar(channel['in_flight'] / DEPTH)} {channel['in_flight']}/{DEPTH}"
        fraction = channel["occupancy"] / channel["capacity"]
        return f"{self._bar(fraction)} {_kib(channel['occupancy'])}"


def _ms(seconds: Any) -> str:
    return f"{seconds * 1e3:.1f} ms" if isinstance(seconds, int | float) else "-"


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:.0f} KiB" if nbytes >= 1024 else f"{nbytes} B"


def _live(session: Session, timeline: Timeline) -> Iterator[dict[str, Any]]:
    from rich.console import Console
    from rich.live import Live

    view = LiveView(session.id)
    console = Console(stderr=False)
    with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
        for event in session.events():
            timeline.add(event)
            view.add(event)
            line = format_event(event) if event["event"] == "log" else sandbox_warning(event)
            if line:
                live.console.print(line, markup=False, highlight=False)
            if event["event"] in ("status", "progress", "stats"):
                live.update(view.render())
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


def _drop_outputs(session: Session) -> None:
    with contextlib.suppress(NodehostError):  # a failure is reported by session.wait()
        for _name, data in session.outputs():
            data.release()


def run_pipeline(config: str | Path, events: str | None = None,
                 log_dir: str | Path | None = None, overrides: Sequence[str] = (),
                 metrics_port: int | None = None) -> int:
    mode = events or ("live" if sys.stdout.isatty() else "quiet")
    timeline = Timeline()
    session: Session | None = None
    exporter: Any = None
    with StopSignals() as signals:
        try:
            from nodehost.session import Host

            host = Host(log_dir=log_dir)
            signals.attach(host)
            if metrics_port is not None:  # `--metrics-port`: served until the session ended
                exporter = host.start_metrics(metrics_port)
                print(f"metrics: {exporter.url}", file=sys.stderr, flush=True)
            target: str | Path | PipelineConfig = config
            if overrides:  # `--set node.param=value`
                from nodehost.config import apply_overrides, load_config

                try:
                    target = apply_overrides(load_config(config), overrides,
                                             host.registry.node_types)
                except ConfigError as exc:
                    raise ConfigError(exc.issues, source=str(config)) from exc
            pipeline = host.validate(target)
            if pipeline.inputs:
                raise ConfigError(Issue("inputs", f"session inputs ({', '.join(pipeline.inputs)}) "
                                                  "are fed by an application: embed the pipeline "
                                                  "(Session.send) or serve it; `nodehost run` has "
                                                  "nothing to feed them with"), source=str(config))
            session = host.start_session(pipeline.config)
            if pipeline.outputs:  # nobody here reads them: take and drop, so nodes can finish
                threading.Thread(target=_drop_outputs, args=(session,), daemon=True).start()
            started = time.monotonic()
            stream = _live(session, timeline) if mode == "live" else session.events()
            for event in stream:
                if mode == "json":
                    print(json.dumps(event), flush=True)
                    continue
                if mode in ("log", "quiet"):
                    timeline.add(event)
                    line = format_event(event) if mode == "log" else quiet_line(event)
                    if line:
                        print(line, flush=True)
            result = session.wait()
        except HostClosed:  # a signal closed the host before the session was started
            if signals.received is None:
                raise
        finally:
            if exporter is not None:
                exporter.close()
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
