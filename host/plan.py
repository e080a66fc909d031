"""From a validated pipeline to what each node process needs to start: the session plan.

Each output port is one shared-memory channel named after the session, so sessions never
collide; fan-out is several subscribers on that channel. The launch spec is plain JSON: it
travels to the node process over the control socket.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the node runner imports this module: keep its start-up light
    from nodehost.config import ValidatedPipeline


MAX_FAN_OUT = 16  # readers of one output: the channel is created for exactly this many at most


def new_session_id(name: str) -> str:
    return f"{name[:24]}-{secrets.token_hex(4)}"


def channel_name(session_id: str, node_id: str, port: str) -> str:
    return f"nodehost/{session_id}/{node_id}/{port}"


def input_channel_name(session_id: str, name: str) -> str:
    """The channel of a session input ("@" keeps it apart from node ids)."""
    return f"nodehost/{session_id}/@inputs/{name}"


# A session input's channel: the same default as a connection's
SESSION_INPUT_CAPACITY = 16 * 1024 * 1024


@dataclass(frozen=True)
class PortBinding:
    port: str
    channel: str
    capacity: int
    backpressure: bool
    subscribers: int = 1  # for outputs: how many readers the channel feeds
    host_reads: bool = False  # for outputs: the application reads it (a session output)


@dataclass
class NodeLaunch:
    session_id: str
    node_id: str
    node_type: str
    entrypoint: str
    manifest: dict[str, Any]
    params: dict[str, Any]
    inputs: list[PortBinding]
    outputs: list[PortBinding]
    network: bool
    fs_read: list[str]
    fs_write: list[str]
    memory_mb: int | None
    plugin_paths: list[str]
    env: dict[str, str] = field(default_factory=dict)  # the config's, added to the scrubbed one
    tmp_dir: str = ""
    host_pid: int = field(default_factory=os.getpid)
    stats_interval_s: float = 0.5  # how often the runner reports its figures

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeLaunch:
        data = dict(data)
        data["inputs"] = [PortBinding(**p) for p in data["inputs"]]
        data["outputs"] = [PortBinding(**p) for p in data["outputs"]]
        return cls(**data)


def package_paths(entrypoint: str) -> list[str]:
    """Where a node's code lives, found without importing it (only the top-level package
    name is looked up, which runs no code of the plugin)."""
    top = entrypoint.split(":", 1)[0].split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [os.path.realpath(p) for p in spec.submodule_search_locations]
    return [os.path.realpath(spec.origin)] if spec.origin else []


@dataclass(frozen=True)
class HostEnds:
    """The host's own ends of a session's channels: it writes each session input and reads
    each session output (as one more subscriber of the node's output channel)."""

    inputs: dict[str, PortBinding]
    outputs: dict[str, PortBinding]


def plan_host_ends(pipeline: ValidatedPipeline, launches: list[NodeLaunch]) -> HostEnds:
    """The host side of ``plan_session``'s bindings (read from them, so both ends agree)."""
    by_node = {launch.node_id: launch for launch in launches}
    inputs = {}
    for name, session_input in pipeline.inputs.items():
        target = session_input.ports[0]
        inputs[name] = next(b for b in by_node[target.node].inputs if b.port == target.port)
    outputs = {}
    for name, session_output in pipeline.outputs.items():
        source = session_output.ports[0]
        outputs[name] = next(b for b in by_node[source.node].outputs if b.port == source.port)
    return HostEnds(inputs, outputs)


def plan_session(pipeline: ValidatedPipeline, session_id: str) -> list[NodeLaunch]:
    outputs: dict[str, dict[str, PortBinding]] = {node_id: {} for node_id in pipeline.nodes}
    inputs: dict[str, list[PortBinding]] = {node_id: [] for node_id in pipeline.nodes}
    for name, session_input in pipeline.inputs.items():
        fan_out = len(session_input.ports)
        for target in session_input.ports:
            inputs[target.node].append(PortBinding(
                target.port, input_channel_name(session_id, name), SESSION_INPUT_CAPACITY,
                True, fan_out))
    for session_output in pipeline.outputs.values():
        # the host is one more reader of the node's output channel
        source = session_output.ports[0]
        outputs[source.node][source.port] = PortBinding(
            source.port, channel_name(session_id, source.node, source.port),
            SESSION_INPUT_CAPACITY, True, 1, host_reads=True)
    for conn in pipeline.connections:
        name = channel_name(session_id, conn.source.node, conn.source.port)
        current = outputs[conn.source.node].get(conn.source.port)
        if current is None:
            merged = PortBinding(conn.source.port, name, conn.capacity, conn.backpressure, 1)
        else:  # fan-out: one channel. Its connections agree (validation saw to it); the
            # reader of a session output adapts to them.
            merged = PortBinding(conn.source.port, name, max(current.capacity, conn.capacity),
                                 current.backpressure or conn.backpressure,
                                 current.subscribers + 1, current.host_reads)
        outputs[conn.source.node][conn.source.port] = merged
    for conn in pipeline.connections:
        out = outputs[conn.source.node][conn.source.port]
        inputs[conn.target.node].append(
            PortBinding(conn.target.port, out.channel, out.capacity, out.backpressure,
                        out.subscribers)
        )
    launches = []
    for node_id in pipeline.order:
        node = pipeline.nodes[node_id]
        manifest = node.manifest
        launches.append(NodeLaunch(
            session_id=session_id,
            node_id=node_id,
            node_type=manifest.node_type,
            entrypoint=manifest.entrypoint,
            manifest=manifest.model_dump(mode="json", exclude_unset=True),
            params=node.params.model_dump(mode="json"),
            inputs=inputs[node_id],
            outputs=list(outputs[node_id].values()),
            network=node.sandbox.network,
            fs_read=list(node.sandbox.fs_read),
            fs_write=list(node.sandbox.fs_write),
            memory_mb=node.memory_mb,
            plugin_paths=package_paths(manifest.entrypoint),
            env=node.env,
        ))
    return launches
