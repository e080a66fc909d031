"""The coordinator side of a session spread over machines.

A pipeline whose nodes name ``machine:`` entries is cut into one part per machine: the nodes
placed there, their connections, and for every connection that crosses machines a bridge
node at each end (``nodehost.bridge``). The local part runs as an ordinary ``Session``; each
remote part is launched on its machine's agent (``nodehost agent``), which runs it as an
ordinary session too. The ``DistributedSession`` owns them all:

- its events are the parts' events, each status event carrying the node's ``machine``;
- the first failure anywhere (a node's, or a machine's agent vanishing — seen through its
  Zenoh liveliness token) ends every part, and the result names node, machine and cause;
- it succeeds when every part reached end of stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost import bridge, zlink
from nodehost.config import (
    LOCAL_MACHINE,
    PipelineConfig,
    ValidatedPipeline,
    load_config,
    placement_issues,
    validate_pipeline,
)
from nodehost.discovery import NodeType
from nodehost.errors import ConfigError, Issue, MachineError, SessionError
from nodehost.lifecycle import (
    NodeProcess,
    ProcessChannelBinding,
    ProcessStatus,
    SharedMemoryChannel,
)
from nodehost.manifest import NodeManifest
from nodehost.plan import new_session_id
from nodehost.session import _HOST_ONLY, _LIVE_SESSIONS, Session, SessionResult

if TYPE_CHECKING:
    from nodehost.discovery import Registry
    from nodehost.session import Host
    from nodehost.spawn import Zygote

log = logging.getLogger("nodehost.remote")

REPLY_TIMEOUT_S = 10.0  # a launch builds node environments on first use: be patient
PROBE_TIMEOUT_S = 2.0  # `nodehost validate`: an agent that does not answer by then is skipped
END_TIMEOUT_S = 15.0  # after a stop, how long a live machine gets to report its end


def placed(config: PipelineConfig) -> bool:
    """True when any node runs on another machine."""
    return any(n.machine not in (None, LOCAL_MACHINE) for n in config.nodes)


def machine_of(config: PipelineConfig, node_id: str) -> str:
    for node in config.nodes:
        if node.id == node_id:
            return node.machine or LOCAL_MACHINE
    raise KeyError(node_id)


def token_for(config: PipelineConfig, machine: str) -> str:
    entry = config.machines[machine]
    token = os.environ.get(entry.token_env)
    if not token:
        raise SessionError(f"machines.{machine}.token_env: the environment variable "
                           f"{entry.token_env} is not set (it must hold the token of the "
                           f"agent on {machine})")
    return token


# --------------------------------------------------------------------------- split

@dataclass
class Part:
    """What one machine runs: a pipeline config (a dict, as the agent receives it)."""

    machine: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    connections: list[dict[str, Any]] = field(default_factory=list)
    origin: list[int | None] = field(default_factory=list)  # part node index → config index

    def config(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"name": pipeline.name, "init_timeout_s": pipeline.init_timeout_s,
                "nodes": self.nodes, "connections": self.connections}


def split(pipeline: ValidatedPipeline, session_id: str) -> dict[str, Part]:
    """One part per machine; crossing connections become LinkOut → Zenoh → LinkIn."""
    config = pipeline.config
    parts: dict[str, Part] = {}

    def part(machine: str) -> Part:
        return parts.setdefault(machine, Part(machine))

    for node in sorted(pipeline.nodes.values(), key=lambda n: n.index):
        target = part(node.config.machine or LOCAL_MACHINE)
        entry = node.config.model_dump(mode="json", by_alias=True, exclude_none=True,
                                       exclude={"machine"})
        entry["params"] = node.params.model_dump(mode="json")  # paths resolved here
        target.nodes.append(entry)
        target.origin.append(node.index)
    for conn in pipeline.connections:
        src = machine_of(config, conn.source.node)
        dst = machine_of(config, conn.target.node)
        settings = {"capacity": conn.capacity, "backpressure": conn.backpressure}
        if src == dst:
            part(src).connections.append({"from": str(conn.source), "to": str(conn.target),
                                          **settings})
            continue
        data_type = pipeline.nodes[conn.source.node].manifest.outputs[
            conn.source.port].data_type.value
        hub = src if src != LOCAL_MACHINE else dst  # both ends meet at one agent
        params = {"link": zlink.link_key(session_id, conn.index),
                  "connect": config.machines[hub].connect, "capacity": conn.capacity}
        out_id, in_id = f"__link{conn.index}_out", f"__link{conn.index}_in"
        part(src).nodes.append({"id": out_id, "type": bridge.node_type("out", data_type),
                                "params": params})
        part(src).origin.append(None)
        part(src).connections.append({"from": str(conn.source), "to": f"{out_id}.in",
                                      **settings, "backpressure": True})
        part(dst).nodes.append({"id": in_id, "type": bridge.node_type("in", data_type),
                                "params": params})
        part(dst).origin.append(None)
        part(dst).connections.append({"from": f"{in_id}.out", "to": str(conn.target),
                                      **settings, "backpressure": True})
    return parts


def relocate(issues: list[Issue], part: Part) -> list[Issue]:
    """A part's ``nodes[k]`` locations, as the user's config numbers them."""
    out = []
    for issue in issues:
        loc = issue.loc
        match = re.match(r"^nodes\[(\d+)\]", loc)
        if match and int(match[1]) < len(part.origin):
            origin = part.origin[int(match[1])]
            if origin is not None:
                loc = f"nodes[{origin}]{loc[match.end():]}"
        out.append(Issue(loc, f"on machine {part.machine!r}: {issue.message}"))
    return out


# --------------------------------------------------------------------------- agents

class AgentClient:
    """One machine's agent, seen from the coordinator: a Zenoh client session to it."""

    def __init__(self, machine: str, connect: str, token: str) -> None:
        self.machine = machine
        self.connect = connect
        self.token = token
        self.zenoh = zlink.open_client(connect, f"machine {machine!r}")
        self._verifier = zlink.Verifier(token)
        self._watch: Any = None
        self._events: Any = None
        self._presence: Any = None

    def request(self, op: str, timeout: float = REPLY_TIMEOUT_S, **fields: Any
                ) -> dict[str, Any]:
        """A signed request; the agent's signed reply (raises MachineError when none)."""
        payload = zlink.sign(self.token, op=op, **fields)
        replies = self.zenoh.get(zlink.control_key(self.machine), payload=payload,
                                 timeout=timeout)
        for reply in replies:
            if reply.ok is None:
                text = reply.err.payload.to_string() if reply.err is not None else "?"
                raise MachineError(f"machine {self.machine!r} refused {op}: {text}")
            try:
                return self._verifier.verify(reply.ok.payload.to_bytes())
            except zlink.AuthError as exc:
                raise MachineError(f"machine {self.machine!r}: reply to {op} not signed "
                                      f"with its token ({exc})") from exc
        raise MachineError(f"machine {self.machine!r}: no agent named {self.machine!r} "
                              f"answered at {self.connect} within {timeout:g} s (is "
                              f"`nodehost agent --name {self.machine}` running there?)")

    def manifests(self, types: set[str], timeout: float = REPLY_TIMEOUT_S
                  ) -> dict[str, NodeType]:
        reply = self.request("describe", timeout, types=sorted(types))
        found = {}
        for name, manifest in reply.get("manifests", {}).items():
            found[name] = NodeType(NodeManifest.model_validate(manifest),
                                   f"agent {self.machine}", str(reply.get("version", "?")),
                                   f"machine {self.machine}")
        return found

    def watch(self, session_id: str, on_event: Any, on_lost: Any) -> None:
        """Events of this session on the machine, and the agent's presence."""
        import zenoh

        self._presence = self.zenoh.liveliness().declare_token(
            zlink.coordinator_key(session_id))
        self._events = self.zenoh.declare_subscriber(
            zlink.events_key(session_id, self.machine),
            lambda sample: on_event(self.machine, json.loads(sample.payload.to_bytes())))

        def presence(sample: Any) -> None:
            if sample.kind == zenoh.SampleKind.DELETE:
                on_lost(self.machine)
        self._watch = self.zenoh.liveliness().declare_subscriber(
            zlink.agent_key(self.machine), presence, history=True)

    def undeclare(self) -> None:
        """Drop our subscriptions and token: no callback of ours runs after this."""
        for entity in (self._events, self._watch, self._presence):
            if entity is not None:
                with contextlib.suppress(Exception):
                    entity.undeclare()
        self._events = self._watch = self._presence = None

    def close(self) -> None:
        self.undeclare()
        with contextlib.suppress(Exception):
            self.zenoh.close()


def connect_agents(config: PipelineConfig, machines: set[str]) -> dict[str, AgentClient]:
    agents: dict[str, AgentClient] = {}
    try:
        for machine in sorted(machines):
            agents[machine] = AgentClient(machine, config.machines[machine].connect,
                                          token_for(config, machine))
    except BaseException:
        for agent in agents.values():
            agent.close()
        raise
    return agents


def node_types_for(config: PipelineConfig, registry: Registry,
                   agents: Mapping[str, AgentClient], timeout: float = REPLY_TIMEOUT_S
                   ) -> dict[str, NodeType]:
    """The node types to validate against: each remote node's from its own machine."""
    types = dict(registry.node_types)
    wanted: dict[str, set[str]] = {}
    for node in config.nodes:
        machine = node.machine or LOCAL_MACHINE
        if machine in agents:
            wanted.setdefault(machine, set()).add(node.type)
    for machine, names in wanted.items():
        types.update(agents[machine].manifests(names, timeout))
    return types


def validate_placed(config: str | Path | Mapping[str, Any] | PipelineConfig,
                    registry: Registry, *,
                    probe_timeout: float = PROBE_TIMEOUT_S) -> tuple[ValidatedPipeline,
                                                                     list[str]]:
    """``nodehost validate`` for a pipeline with placements: the placements themselves, and
    each remote node against its machine's installed node types when the agent answers.
    Returns the validated pipeline and notes about machines that could not be asked."""
    parsed = load_config(config)
    issues = placement_issues(parsed)
    if issues:
        raise ConfigError(issues)
    notes: list[str] = []
    types = dict(registry.node_types)
    for machine in sorted({n.machine for n in parsed.nodes
                           if n.machine not in (None, LOCAL_MACHINE)}):
        assert machine is not None
        names = {n.type for n in parsed.nodes if n.machine == machine}
        try:
            agent = AgentClient(machine, parsed.machines[machine].connect,
                                token_for(parsed, machine))
            try:
                found = agent.manifests(names, probe_timeout)
            finally:
                agent.close()
        except SessionError as exc:
            notes.append(f"{exc}; node types on {machine!r} checked against this machine's")
            continue
        for index, node in enumerate(parsed.nodes):
            if node.machine == machine and node.type not in found:
                issues.append(Issue(f"nodes[{index}].type", f"machine {machine!r} has no node "
                                    f"type {node.type!r} installed"))
        types.update(found)
    if issues:
        raise ConfigError(issues)
    return validate_pipeline(parsed, types), notes


# --------------------------------------------------------------------------- session

class _PartHost:
    """What the local part's ``Session`` sees as its host: the real host's registry and
    node environment, with events routed to the distributed session instead of out."""

    def __init__(self, host: Host, registry: Registry, on_event: Any) -> None:
        self._host = host
        self.registry = _QuietRegistry(registry)
        self.on_event = on_event
        self.stats_interval_s = host.stats_interval_s
        self.log_dir = host.log_dir  # Session writes node output there (run --log-dir)

    def node_env(self, tmp_dir: str, node_env: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
        return self._host.node_env(tmp_dir, node_env)

    def zygote_for(self, python: str) -> Zygote | None:
        return self._host.zygote_for(python)

    def _forget(self, session: Session) -> None:
        pass


class _QuietRegistry:
    """Node types of the registry; plugin event hooks see the distributed session's events
    only (once each), not the local part's."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.node_types = registry.node_types

    def get(self, node_type: str) -> NodeType:
        return self._registry.get(node_type)

    def notify(self, event: Mapping[str, Any]) -> None:
        pass


def with_bridges(registry: Registry) -> Registry:
    if bridge.plugin.__name__ not in registry.plugins:
        registry.add_plugin(bridge.plugin, bridge.plugin.__name__)
    return registry


class DistributedSession(Session):
    """A session whose nodes run on several machines. Same surface as ``Session``."""

    def __init__(self, host: Host, config: PipelineConfig) -> None:
        self.host = host
        self.name = config.name
        self.id = new_session_id(config.name)
        self.started_at = time.time()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        # SimpleQueue: its put() is safe in a signal handler (cancel() on Ctrl-C)
        self._inbox: queue.SimpleQueue[tuple[str, str, dict[str, Any]]] = queue.SimpleQueue()
        self._status: dict[str, NodeProcess] = {}
        self._lock = threading.Lock()
        self._result: SessionResult | None = None
        self._finished = threading.Event()
        self._stop_requested: str | None = None
        self._ends = None  # no session inputs/outputs (refused below)
        self._ended: dict[str, dict[str, Any] | None] = {}  # machine → its part's end
        self._ready = threading.Event()
        self._ready_or_ended = threading.Event()
        if config.inputs or config.outputs:
            raise SessionError("session inputs and outputs are not available yet for "
                               "pipelines placed on several machines (docs/distributed.md)")
        remote = {n.machine for n in config.nodes if n.machine not in (None, LOCAL_MACHINE)}
        self._agents = connect_agents(config, {m for m in remote if m is not None})
        self._local: Session | None = None
        try:
            registry = with_bridges(host.registry)
            self.pipeline = validate_pipeline(
                config, node_types_for(config, registry, self._agents))
            self.parts = split(self.pipeline, self.id)
            self._ended.update(dict.fromkeys(self.parts))
            for agent in self._agents.values():
                agent.watch(self.id, self._on_remote_event, self._on_lost)
            for machine, part in self.parts.items():
                if machine == LOCAL_MACHINE:
                    continue
                reply = self._agents[machine].request("launch", session=self.id,
                                                      config=part.config(config))
                if not reply.get("ok"):
                    raise _launch_error(reply, part)
            local = self.parts.get(LOCAL_MACHINE)
            if local is not None:
                local_pipeline = validate_pipeline(load_config(local.config(config)),
                                                   registry.node_types)
                self._local = Session(_PartHost(host, registry, self._on_local_event),  # type: ignore[arg-type]
                                      local_pipeline, session_id=self.id, _owner=_HOST_ONLY)
                self._local._start()
        except BaseException:
            self._stop_parts("the session could not start")
            self._close_agents()
            raise
        self._thread = threading.Thread(target=self._supervise, name=f"nodehost-{self.id}",
                                        daemon=True)

    def _start(self) -> None:
        """Start the supervisor (``Host.start_session`` calls it once it registered us)."""
        self._thread.start()

    def cancel(self, reason: str = "stopped by request", *, graceful: bool = True) -> None:
        """Ask every machine's part to stop; returns at once (safe in a signal handler)."""
        if self._finished.is_set():
            return
        if self._stop_requested is None:
            self._stop_requested = reason
        if not graceful and self._local is not None:
            self._local.cancel(reason, graceful=False)
        self._inbox.put(("stop", "", {}))

    # -- public API ----------------------------------------------------------------------
    def status(self) -> dict[str, ProcessStatus]:
        with self._lock:
            return {node: p.status for node, p in self._status.items()}

    def processes(self) -> dict[str, NodeProcess]:
        """Every node's record as its machine last reported it (bridge nodes left out)."""
        with self._lock:
            return dict(self._status)

    def channels(self) -> dict[str, SharedMemoryChannel]:
        """This machine's channels (each machine has its own shared memory)."""
        return self._local.channels() if self._local is not None else {}

    def bindings(self) -> list[ProcessChannelBinding]:
        return self._local.bindings() if self._local is not None else []

    def stop(self, reason: str = "stopped by request", timeout: float | None = None
             ) -> SessionResult:
        self.cancel(reason)
        return self.wait(timeout)

    # -- events from the parts -----------------------------------------------------------
    def _on_local_event(self, event: dict[str, Any]) -> None:
        self._inbox.put(("event", LOCAL_MACHINE, event))

    def _on_remote_event(self, machine: str, event: dict[str, Any]) -> None:
        self._inbox.put(("event", machine, event))

    def _on_lost(self, machine: str) -> None:
        self._inbox.put(("lost", machine, {}))

    def _relay(self, machine: str, event: dict[str, Any]) -> None:
        fields = {k: v for k, v in event.items() if k not in ("event", "ts", "session")}
        if event["event"] == "status":
            fields["machine"] = machine
            self._track(fields)
        self._emit(event["event"], **fields)

    def _track(self, fields: dict[str, Any]) -> None:
        node = fields.get("node")
        if not node or node.startswith("__link"):
            return
        with self._lock:
            proc = self._status.get(node)
            if proc is None:
                proc = self._status[node] = NodeProcess(node, fields.get("node_type", ""),
                                                        pid=fields.get("pid"))
            with contextlib.suppress(ValueError):
                proc.status = ProcessStatus(fields["status"])
            proc.memory_usage = fields.get("memory_usage")
            proc.error = fields.get("error")
            live = (ProcessStatus.READY, ProcessStatus.PROCESSING)
            if len(self._status) == len(self.pipeline.nodes) and \
                    all(p.status in live for p in self._status.values()):
                self._ready.set()
                self._ready_or_ended.set()

    # -- supervisor ----------------------------------------------------------------------
    def _supervise(self) -> None:
        failure: tuple[str | None, str | None, str | None, str] | None = None
        deadline: float | None = None
        try:
            while any(end is None for end in self._ended.values()):
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    kind, machine, event = self._inbox.get(timeout=timeout)
                except queue.Empty:
                    for machine, end in self._ended.items():
                        if end is None:
                            self._ended[machine] = {"ok": False, "reason": "no end reported"}
                    break
                if kind == "event" and event.get("event") == "session_end":
                    self._ended[machine] = event
                    if not event.get("ok") and failure is None and \
                            self._stop_requested is None:
                        failure = self._failure_of(machine, event)
                elif kind == "event":
                    self._relay(machine, event)
                elif kind == "lost" and self._ended.get(machine) is None:
                    self._ended[machine] = {"ok": False, "reason": "machine lost"}
                    reason = (f"machine {machine!r} disappeared: its agent stopped "
                              "answering (killed, or the network to it was cut)")
                    self._emit("machine_lost", machine=machine, reason=reason)
                    if failure is None:
                        failure = (None, None, machine, reason)
                if (failure is not None or self._stop_requested is not None) and \
                        deadline is None:
                    reason = failure[3] if failure else str(self._stop_requested)
                    self._stop_parts(reason)
                    deadline = time.monotonic() + END_TIMEOUT_S
        except BaseException as exc:
            log.exception("distributed session supervisor failed")
            failure = failure or (None, None, None, f"nodehost supervisor error: {exc!r}")
            self._stop_parts("supervisor error")
        finally:
            if self._local is not None:
                self._local.wait()
            self._close_agents()
            self._finish_with(failure)

    def _failure_of(self, machine: str, end: dict[str, Any]
                    ) -> tuple[str | None, str | None, str | None, str]:
        node, node_type = end.get("failed_node"), end.get("failed_node_type")
        reason = str(end.get("reason", "failed"))
        if node and node.startswith("__link"):
            return (None, None, machine,
                    f"the link to or from machine {machine!r} failed: {reason}")
        label = f"node {node!r} ({node_type})"
        if node and reason.startswith(label):
            reason = f"{label} on machine {machine!r}{reason[len(label):]}"
        else:
            reason = f"on machine {machine!r}: {reason}"
        return node, node_type, machine, reason

    def _stop_parts(self, reason: str) -> None:
        if self._local is not None:
            self._local.cancel(reason)
        for machine, agent in self._agents.items():
            if self._ended.get(machine) is not None:
                continue
            try:
                agent.request("stop", timeout=2.0, session=self.id, reason=reason)
            except MachineError as exc:
                log.info("%s", exc)

    def _close_agents(self) -> None:
        # Synchronous, even for a lost machine (whose close waits out Zenoh's reconnection
        # attempt, seconds): no Zenoh thread may still hold our callbacks when the
        # interpreter exits, or it aborts the process. `machine_lost` was reported already.
        for agent in self._agents.values():
            agent.close()

    def _finish_with(self, failure: tuple[str | None, str | None, str | None, str] | None
                     ) -> None:
        duration = time.time() - self.started_at
        if failure is not None:
            node, node_type, machine, reason = failure
            result = SessionResult(False, reason, node, node_type, duration,
                                   failed_machine=machine)
        elif self._stop_requested is not None:
            result = SessionResult(False, self._stop_requested, duration_s=duration)
        else:
            result = SessionResult(True, "every sink reached end of stream",
                                   duration_s=duration)
        self._result = result
        self._emit("session_end", ok=result.ok, reason=result.reason,
                   failed_node=result.failed_node, failed_node_type=result.failed_node_type,
                   failed_machine=result.failed_machine, duration_s=round(duration, 6))
        self.host._forget(self)
        _LIVE_SESSIONS.discard(self)
        self._ready_or_ended.set()
        self._finished.set()


def _launch_error(reply: dict[str, Any], part: Part) -> Exception:
    issues = [Issue(str(loc), str(message)) for loc, message in reply.get("issues", [])]
    if issues:
        return ConfigError(relocate(issues, part))
    return SessionError(f"machine {part.machine!r} refused the launch: "
                        f"{reply.get('error', 'no reason given')}")
