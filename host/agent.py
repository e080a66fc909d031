"""``nodehost agent``: runs the parts of sessions that a coordinator places on this machine.

    NODEHOST_AGENT_TOKEN=... nodehost agent --listen tcp/0.0.0.0:7447 --name gpu1

The agent is a Zenoh router. It declares a liveliness token (``nodehost/agent/<name>``) that
coordinators watch, and answers signed control requests on ``nodehost/agent/<name>/control``:

- ``describe``: the manifests of the node types asked for that are installed *here*;
- ``launch``: a pipeline config (this machine's part of a session, bridge nodes included),
  checked against this machine's own node types and its operator's grant limits, then run
  as an ordinary ``Session`` (same runner, sandbox and lifecycle as a local run) whose events
  go back on ``nodehost/session/<id>/<name>/events``;
- ``stop``: end one session.

A session also ends when its coordinator's liveliness token goes (the coordinator died or
the network to it was cut). Every launched session leaves a marker in the state directory
until it ends; an agent that was killed cleans what the sessions of its previous life left.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodehost import zlink
from nodehost.config import PipelineConfig, parse_config, validate_pipeline
from nodehost.errors import ConfigError, Issue, NodehostError
from nodehost.session import Host, Session

log = logging.getLogger("nodehost.agent")
DEFAULT_LISTEN = "tcp/127.0.0.1:7447"  # loopback unless told: --listen tcp/0.0.0.0:7447


@dataclass(frozen=True)
class GrantLimits:
    """What this machine's operator lets a coordinator grant beyond a node's manifest."""

    network: bool = False
    fs_read: tuple[str, ...] = ()
    fs_write: tuple[str, ...] = ()

    def issues(self, config: PipelineConfig) -> list[Issue]:
        issues = []
        for index, node in enumerate(config.nodes):
            grant = node.sandbox
            if grant is None:
                continue
            loc = f"nodes[{index}].sandbox"
            if grant.network and not self.network:
                issues.append(Issue(f"{loc}.network", "this agent's operator does not allow "
                                                      "granting network (--allow-network)"))
            for key, allowed, flag in (("fs_read", self.fs_read, "--allow-read"),
                                       ("fs_write", self.fs_write, "--allow-write")):
                for position, path in enumerate(getattr(grant, key)):
                    if not any(_within(str(path), root) for root in allowed):
                        issues.append(Issue(f"{loc}.{key}[{position}]", f"{path} is outside "
                                            f"what this agent's operator allows ({flag})"))
        return issues


def _within(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


class Agent:
    def __init__(self, name: str, listen: str, token: str, limits: GrantLimits,
                 state_dir: Path) -> None:
        import zenoh

        self.name = name
        self.token = token
        self.limits = limits
        self.state_dir = state_dir
        self.cleaned = clean_dead_sessions(state_dir)
        from nodehost.remote import with_bridges

        self.host = Host(on_event=self._on_event)
        with_bridges(self.host.registry)
        self.verifier = zlink.Verifier(token)
        self.sessions: dict[str, Session] = {}
        self._watches: dict[str, Any] = {}
        self._lock = threading.Lock()
        try:
            self.zenoh: Any = zenoh.open(zlink.session_config("router", listen=[listen]))
        except zenoh.ZError as exc:
            raise NodehostError(f"cannot listen on {listen}: {exc}") from exc
        self._token = self.zenoh.liveliness().declare_token(zlink.agent_key(name))
        self._queryable = self.zenoh.declare_queryable(zlink.control_key(name), self._on_query)

    # -- control -------------------------------------------------------------------------
    def _on_query(self, query: Any) -> None:
        raw = query.payload.to_bytes() if query.payload is not None else b""
        try:
            fields = self.verifier.verify(raw)
        except zlink.AuthError as exc:
            log.warning("refused a control request: %s", exc)
            query.reply_err(f"refused: {exc}")
            return
        op = fields.get("op")
        try:
            if op == "describe":
                reply = self._describe(fields)
            elif op == "launch":
                reply = self._launch(fields)
            elif op == "stop":
                reply = self._stop(fields)
            else:
                reply = {"ok": False, "error": f"unknown operation {op!r}"}
        except Exception as exc:  # an agent outlives any one bad request
            log.exception("%s failed", op)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        query.reply(query.key_expr, zlink.sign(self.token, **reply))

    def _describe(self, fields: dict[str, Any]) -> dict[str, Any]:
        from nodehost import __version__

        types = self.host.registry.node_types
        return {"ok": True, "version": __version__, "manifests": {
            name: types[name].manifest.model_dump(mode="json", exclude_unset=True)
            for name in fields.get("types", []) if name in types}}

    def _launch(self, fields: dict[str, Any]) -> dict[str, Any]:
        session_id = str(fields["session"])
        try:
            config = parse_config(fields["config"])
            issues = self.limits.issues(config)
            if issues:
                raise ConfigError(issues)
            pipeline = validate_pipeline(config, self.host.registry.node_types)
        except ConfigError as exc:
            return {"ok": False, "issues": [[i.loc, i.message] for i in exc.issues]}
        with self._lock:
            if session_id in self.sessions:
                return {"ok": False, "error": f"session {session_id} is already running here"}
            (self.state_dir / session_id).touch()
            self._watches[session_id] = self.zenoh.liveliness().declare_subscriber(
                zlink.coordinator_key(session_id),
                lambda sample: self._on_coordinator(session_id, sample), history=True)
        try:
            session = self.host.start_validated(pipeline, session_id=session_id)
        except NodehostError as exc:
            self._forget(session_id)
            return {"ok": False, "error": str(exc)}
        with self._lock:
            if not session._finished.is_set():
                self.sessions[session_id] = session
        log.info("session %s: %d node(s) started", session_id, len(config.nodes))
        return {"ok": True}

    def _stop(self, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            session = self.sessions.get(str(fields.get("session")))
        if session is None:
            return {"ok": True, "running": False}
        reason = str(fields.get("reason", "stopped by the coordinator"))
        threading.Thread(target=session.stop, args=(reason,), daemon=True).start()
        return {"ok": True, "running": True}

    def _on_coordinator(self, session_id: str, sample: Any) -> None:
        import zenoh

        if sample.kind != zenoh.SampleKind.DELETE:
            return
        with self._lock:
            session = self.sessions.get(session_id)
        if session is not None:
            log.warning("session %s: its coordinator is gone; stopping it", session_id)
            threading.Thread(target=session.stop, args=("the coordinator is gone",),
                             daemon=True).start()

    # -- events --------------------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        import zenoh

        session_id = str(event.get("session"))
        with contextlib.suppress(Exception):  # a closed Zenoh session at shutdown
            self.zenoh.put(zlink.events_key(session_id, self.name),
                           json.dumps(event, default=str).encode(),
                           congestion_control=zenoh.CongestionControl.BLOCK)
        if event.get("event") == "session_end":
            self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        with self._lock:
            self.sessions.pop(session_id, None)
            watch = self._watches.pop(session_id, None)
        if watch is not None:
            with contextlib.suppress(Exception):
                watch.undeclare()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / session_id).unlink()

    def close(self) -> None:
        with self._lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            session.stop("the agent is shutting down")
        with contextlib.suppress(Exception):
            self.zenoh.close()


def clean_dead_sessions(state_dir: Path) -> list[str]:
    """What sessions of an agent that was killed left: node temp dirs and shared memory (the
    node processes died with the agent: parent-death signal)."""
    from nodehost.channels import cleanup_dead_nodes

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cleaned = []
    for marker in sorted(state_dir.iterdir()):
        for path in glob.glob(os.path.join(tempfile.gettempdir(),
                                           f"nodehost-{glob.escape(marker.name)}-*")):
            shutil.rmtree(path, ignore_errors=True)
        marker.unlink()
        cleaned.append(marker.name)
    cleanup_dead_nodes()
    return cleaned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nodehost agent", description="run nodes that coordinators on other machines "
        "place here (token from NODEHOST_AGENT_TOKEN)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="Zenoh locator to listen on "
                        f"(default {DEFAULT_LISTEN})")
    parser.add_argument("--name", default=socket.gethostname(),
                        help="this machine's name in configs' `machines:` (default: hostname)")
    parser.add_argument("--allow-network", action="store_true",
                        help="let configs grant network to nodes beyond their manifests")
    parser.add_argument("--allow-read", action="append", default=[], metavar="PATH",
                        help="let configs grant reading under PATH (repeatable)")
    parser.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                        help="let configs grant writing under PATH (repeatable)")
    parser.add_argument("--state-dir", default=None,
                        help="where running sessions are recorded (default "
                             "$TMPDIR/nodehost-agent-NAME)")
    args = parser.parse_args(argv)
    token = os.environ.get(zlink.TOKEN_ENV)
    if not token:
        print(f"error: set {zlink.TOKEN_ENV} to this agent's token (coordinators sign their "
              "requests with it)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state_dir = Path(args.state_dir or os.path.join(tempfile.gettempdir(),
                                                     f"nodehost-agent-{args.name}"))
    limits = GrantLimits(args.allow_network, tuple(args.allow_read), tuple(args.allow_write))
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        agent = Agent(args.name, args.listen, token, limits, state_dir)
    except NodehostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if agent.cleaned:
        log.info("cleaned what %d dead session(s) left: %s", len(agent.cleaned),
                 ", ".join(agent.cleaned))
    print(f"nodehost agent {args.name!r} listening on {args.listen}", flush=True)
    try:
        done.wait()
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
