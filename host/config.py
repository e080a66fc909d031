"""Pipeline configs: loading (YAML, JSON, TOML), structure, and validation against the
installed node types, with every error located (``nodes[1].params.sample_rate: ...``)."""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nodehost.errors import ConfigError, Issue, pydantic_issues
from nodehost.errors import format_loc as format_loc  # re-exported
from nodehost.manifest import NodeManifest, PortSpec, Resources, SandboxPolicy, check_pattern
from nodehost.sandbox import node_env_problem

if TYPE_CHECKING:
    from nodehost.discovery import NodeType

DEFAULT_CAPACITY = 16 * 1024 * 1024
# libyaml's loader when PyYAML was built with it: several times faster than the pure-Python one
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
NODE_ID = r"^[A-Za-z_][A-Za-z0-9_-]*$"
PIPELINE_NAME = r"^[A-Za-z0-9_.-]+$"
# Placeholder for the node's private temp dir, made only when a session starts: no config can
# name a path inside it.
_NO_TMP_DIR = "/nonexistent/nodehost-node-tmp"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENDPOINT = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?$")
MACHINE_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"
LOCAL_MACHINE = "local"  # the machine running the session; not a name for `machines:`
# A Zenoh locator an agent listens on: "tcp/10.0.0.2:7447", "tls/gpu1.lan:7447", ...
LOCATOR = r"^(tcp|tls|quic|udp)/[^\s/]+:[0-9]{1,5}$"
SESSION_PORT_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _env_name(name: str) -> str:
    check_pattern(name, ENV_NAME, "a valid environment variable name (letters, digits and _, "
                                  "not starting with a digit)")
    problem = node_env_problem(name)
    if problem:
        raise PydanticCustomError("env_name", problem)
    return name


def _env_value(value: Any) -> Any:
    # YAML reads `OMP_NUM_THREADS: 2` as a number: what a user means is the text "2".
    # true/false are refused: a library may expect 1/0, TRUE or yes — the user says which.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise PydanticCustomError("env_value", "{value} is not a string or a number (quote it)",
                                  {"value": repr(value)})
    return value


EnvName = Annotated[str, AfterValidator(_env_name),
                    WithJsonSchema({"type": "string", "pattern": ENV_NAME})]
EnvValue = Annotated[str, BeforeValidator(_env_value),
                     WithJsonSchema({"type": ["string", "integer", "number"]})]


class NodeConfig(_Strict):
    id: str = Field(json_schema_extra={"pattern": NODE_ID})
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    sandbox: SandboxPolicy | None = Field(
        default=None, description="extra grants from the operator, merged with the manifest's"
    )
    resources: Resources | None = Field(
        default=None, description="replaces the manifest's values (e.g. memory_mb, to raise or "
                                  "lower the node's memory limit)"
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        description="environment variables for the node's process (e.g. CT2_USE_MKL, "
                    "OMP_NUM_THREADS); the host's own environment is scrubbed",
    )
    machine: str | None = Field(
        default=None, description="a name from `machines:` (default: the machine running "
                                  "the session)")

    @field_validator("id")
    @classmethod
    def _id(cls, node_id: str) -> str:
        return check_pattern(node_id, NODE_ID, "a valid node id (letters, digits, _ and -, not "
                                               "starting with a digit or -)")


def _check_endpoint(value: str) -> str:
    if not ENDPOINT.match(value):
        raise PydanticCustomError(
            "endpoint", '{value} is not "node" or "node.port"', {"value": repr(value)}
        )
    return value


def _check_session_port_name(name: str) -> str:
    return check_pattern(name, SESSION_PORT_NAME, "a valid session input/output name (letters, "
                                                   "digits and _, not starting with a digit)")


def _as_endpoint_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError("session_input", 'expected "node.port" or a list of them, '
                                                   "got {kind}", {"kind": type(value).__name__})
    return value


EndpointRef = Annotated[str, AfterValidator(_check_endpoint)]
SessionPortName = Annotated[str, AfterValidator(_check_session_port_name)]
# "node.port" or a list of them; held as a list
SessionInputTargets = Annotated[
    list[EndpointRef], Field(min_length=1),
    BeforeValidator(_as_endpoint_list, json_schema_input_type=str | list[str]),
]


class Connection(_Strict):
    from_: str = Field(alias="from", description='"node.port", or "node" for its only port')
    to: str
    capacity: int = Field(default=DEFAULT_CAPACITY, gt=0, description="bytes, a power of two")
    backpressure: bool = Field(default=True, description="a full channel blocks the writer")

    @field_validator("from_", "to")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _check_endpoint(value)

    @field_validator("capacity")
    @classmethod
    def _power_of_two(cls, capacity: int) -> int:
        if capacity & (capacity - 1):
            lower = 1 << (capacity.bit_length() - 1)
            raise PydanticCustomError(
                "power_of_two",
                "{capacity} is not a power of two (try {lower} or {upper})",
                {"capacity": capacity, "lower": lower, "upper": lower * 2},
            )
        return capacity


class MachineConfig(_Strict):
    """A host running `nodehost agent`, reachable over Zenoh."""

    connect: str = Field(json_schema_extra={"pattern": LOCATOR},
                         description='the agent\'s Zenoh locator, e.g. "tcp/10.0.0.2:7447"')
    token_env: str = Field(json_schema_extra={"pattern": ENV_NAME},
                           description="the environment variable holding the agent's token "
                                       "(never the token itself)")

    @field_validator("connect")
    @classmethod
    def _connect(cls, connect: str) -> str:
        return check_pattern(connect, LOCATOR, 'a Zenoh locator like "tcp/10.0.0.2:7447"')

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, name: str) -> str:
        return check_pattern(name, ENV_NAME, "an environment variable name (the variable "
                                             "holds the token; the token never goes in the "
                                             "config)")


class PipelineConfig(_Strict):
    # Where relative paths (sandbox grants, params with format "path") are resolved from:
    # the config file's folder, or the working directory for configs built in code.
    _base_dir: Path | None = PrivateAttr(default=None)

    name: str = Field(default="pipeline", json_schema_extra={"pattern": PIPELINE_NAME})
    max_processes: int | None = Field(default=None, gt=0)
    init_timeout_s: float = Field(default=300.0, gt=0)
    # A stop the user asked for (Ctrl-C, Session.stop) gives nodes this long to finish
    # cleanup() before they are terminated; a failure tears the session down at once.
    stop_grace_s: float = Field(default=5.0, ge=0)
    nodes: list[NodeConfig] = Field(min_length=1)
    connections: list[Connection] = Field(default_factory=list)
    inputs: dict[SessionPortName, SessionInputTargets] = Field(
        default_factory=dict,
        description='session inputs, fed by the application: name -> "node.port", or a list '
                    "of them (one input fanned out to several ports)",
        json_schema_extra={"propertyNames": {"pattern": SESSION_PORT_NAME}},
    )
    outputs: dict[SessionPortName, EndpointRef] = Field(
        default_factory=dict,
        description='session outputs, read by the application: name -> "node.port" (an '
                    "output port)",
        json_schema_extra={"propertyNames": {"pattern": SESSION_PORT_NAME}},
    )
    machines: dict[str, MachineConfig] = Field(
        default_factory=dict, description="hosts running `nodehost agent`, by name")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_pattern(name, PIPELINE_NAME, "a valid pipeline name (letters, digits, "
                                                  "_ . and -)")

    @field_validator("machines")
    @classmethod
    def _machine_names(cls, machines: dict[str, MachineConfig]) -> dict[str, MachineConfig]:
        for name in machines:
            if name == LOCAL_MACHINE:
                raise PydanticCustomError(
                    "machine_name", "{name} is reserved for the machine running the session; "
                    "nodes without `machine:` run there", {"name": repr(name)})
            check_pattern(name, MACHINE_NAME, "a machine name (letters, digits, _ and -)")
        return machines


# --------------------------------------------------------------------------- loading

def load_document(path: str | Path) -> Any:
    """Read a YAML, JSON or TOML file; any problem becomes a ConfigError naming the file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a directory, not a config file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        return yaml.load(text, Loader=YAML_LOADER)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            Issue(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}"),
            source=source,
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts the position at the end of its message: "... (at line 3, column 12)"
        at = re.search(r"^(.*) \(at (line \d+, column \d+)\)$", str(exc))
        issue = Issue(at[2], f"invalid TOML: {at[1]}") if at else Issue("", f"invalid TOML: {exc}")
        raise ConfigError(issue, source=source) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(Issue(where, f"invalid YAML: {problem}"), source=source) from exc
    except RecursionError as exc:  # json, tomllib (and pure-Python YAML) parse nesting recursively
        raise ConfigError(Issue("", "the document is nested too deeply to be a pipeline "
                                    "config"), source=source) from exc
    except ValueError as exc:  # after the decode errors above, which are ValueErrors too;
        # e.g. an integer literal longer than Python's 4300-digit conversion limit
        raise ConfigError(Issue("", f"invalid value: {exc}"), source=source) from exc


def parse_config(data: Any, *, source: str | None = None) -> PipelineConfig:
    """Structure-check a config document (no node types needed)."""
    if isinstance(data, PipelineConfig):
        return data
    if not isinstance(data, Mapping):
        kind = type(data).__name__ if data is not None else "an empty document"
        raise ConfigError(f"a pipeline config must be a mapping, got {kind}", source=source)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(pydantic_issues(exc), source=source) from exc


def _resolve_grants(data: Any, base: Path) -> Any:
    """Relative sandbox paths in a config file mean "next to the config file"."""
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
        return data
    nodes = []
    for node in data["nodes"]:
        grant = node.get("sandbox") if isinstance(node, Mapping) else None
        if isinstance(grant, Mapping):
            grant = dict(grant)
            for key in ("fs_read", "fs_write"):
                if isinstance(grant.get(key), list):
                    grant[key] = [str(base / p) if isinstance(p, str) and p and
                                  not p.startswith("/") else p for p in grant[key]]
            node = {**node, "sandbox": grant}
        nodes.append(node)
    return {**data, "nodes": nodes}


def load_config(config: str | Path | Mapping[str, Any] | PipelineConfig) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(config)
    base = Path(config).resolve().parent
    parsed = parse_config(_resolve_grants(load_document(config), base), source=str(config))
    parsed._base_dir = base
    return parsed


def _resolve_path_params(params: Mapping[str, Any], manifest: NodeManifest,
                         base: Path | None) -> dict[str, Any]:
    resolved = dict(params)
    for name, spec in manifest.params.items():
        value = resolved.get(name)
        if spec.format == "path" and isinstance(value, str) and value and \
                not value.startswith("/"):
            resolved[name] = str((base or Path.cwd()) / value)
    return resolved


# --------------------------------------------------------------------------- validation

def _path_param_issues(node: ResolvedNode) -> list[Issue]:
    """Files a node is given in its params exist and lie inside its grants: a config that
    points a node at a missing file, or at one its sandbox will deny, fails here instead of
    deep inside a library at run time ("System error.")."""
    from nodehost.plan import package_paths
    from nodehost.sandbox import SandboxPlan, may_access

    plan = SandboxPlan(tmp_dir=_NO_TMP_DIR, network=node.sandbox.network,
                       fs_read=tuple(node.sandbox.fs_read), fs_write=tuple(node.sandbox.fs_write),
                       plugin_paths=tuple(package_paths(node.manifest.entrypoint)))
    loc = f"nodes[{node.index}]"
    issues = []
    for name, spec in node.manifest.params.items():
        value = getattr(node.params, name, None)
        access = spec.path_access
        if access is None or name not in node.config.params or not isinstance(value, str):
            continue
        where = f"{loc}.params.{name}"
        if access == "write":
            folder = os.path.dirname(value) or "."
            if not os.path.isdir(folder):
                issues.append(Issue(where, f"{value}: folder {folder} does not exist"))
            elif not may_access(value, plan, write=True):
                issues.append(Issue(where, f"{value} is outside what the node may write; add "
                                           f"it (or its folder) to {loc}.sandbox.fs_write"))
            continue
        if not os.path.exists(value):
            if access == "read":
                issues.append(Issue(where, f"{value} does not exist"))
        elif not may_access(value, plan):
            issues.append(Issue(where, f"{value} is outside what the node may read; add its "
                                       f"folder to {loc}.sandbox.fs_read"))
    return issues


@dataclass(frozen=True)
class Endpoint:
    node: str
    port: str

    def __str__(self) -> str:
        return f"{self.node}.{self.port}"


@dataclass(frozen=True)
class ResolvedConnection:
    index: int
    source: Endpoint
    target: Endpoint
    capacity: int
    backpressure: bool


@dataclass(frozen=True)
class ResolvedNode:
    index: int
    config: NodeConfig
    node_type: NodeType
    params: BaseModel
    sandbox: SandboxPolicy

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def memory_mb_from_config(self) -> bool:
        override = self.config.resources
        return override is not None and "memory_mb" in override.model_fields_set

    @property
    def memory_mb(self) -> int | None:
        """The memory limit: the config's ``resources.memory_mb``, else the manifest's."""
        if self.memory_mb_from_config:
            assert self.config.resources is not None
            return self.config.resources.memory_mb
        return self.manifest.resources.memory_mb

    @property
    def env(self) -> dict[str, str]:
        return dict(self.config.env)

    @property
    def manifest(self) -> NodeManifest:
        return self.node_type.manifest


@dataclass(frozen=True)
class SessionPort:
    """A session input (the application writes, ``ports`` read) or output (``ports[0]``
    writes, the application reads). ``spec`` is what flows through it, derived from the
    ports: their data type and the constraints every one of them accepts."""

    name: str
    direction: str  # "input" or "output"
    ports: tuple[Endpoint, ...]
    spec: PortSpec

    def describe(self) -> str:
        spec = self.spec.model_dump(exclude_defaults=True,
                                    exclude={"description", "sample_rate_from_param"})
        kind = spec.pop("data_type").value
        extra = "".join(f", {key} {_fmt(values)}" for key, values in spec.items())
        arrow = "→" if self.direction == "input" else "←"
        return f"{self.name} {arrow} {', '.join(map(str, self.ports))} ({kind}{extra})"


@dataclass(frozen=True)
class ValidatedPipeline:
    """A config checked against the installed node types: ready to plan a session from."""

    config: PipelineConfig
    nodes: dict[str, ResolvedNode]
    connections: list[ResolvedConnection]
    order: list[str]  # topological: sources first
    inputs: dict[str, SessionPort] = field(default_factory=dict)
    outputs: dict[str, SessionPort] = field(default_factory=dict)


def _closest(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def _resolve_port(
    endpoint: str, loc: str, nodes: Mapping[str, ResolvedNode], declared: Mapping[str, int],
    direction: str, issues: list[Issue],
) -> Endpoint | None:
    match = ENDPOINT.match(endpoint)
    assert match is not None  # checked by Connection
    node_id, port = match.group(1), match.group(2)
    node = nodes.get(node_id)
    if node is None:
        if node_id not in declared:  # else the node itself is invalid and already reported
            issues.append(Issue(loc, f"unknown node {node_id!r}{_closest(node_id, declared)}"))
        return None
    ports = node.manifest.outputs if direction == "from" else node.manifest.inputs
    kind = "output" if direction == "from" else "input"
    if port is None:
        if len(ports) != 1:
            names = ", ".join(sorted(ports)) or "none"
            issues.append(Issue(loc, f"node {node_id!r} ({node.manifest.node_type}) has "
                                     f"{len(ports)} {kind} ports ({names}); name one as "
                                     f"'{node_id}.<port>'"))
            return None
        port = next(iter(ports))
    elif port not in ports:
        names = ", ".join(sorted(ports)) or "none"
        other = node.manifest.inputs if direction == "from" else node.manifest.outputs
        hint = f"; {node_id}.{port} is an {'input' if kind == 'output' else 'output'} port" \
            if port in other else ""
        issues.append(Issue(loc, f"node {node_id!r} ({node.manifest.node_type}) has no {kind} "
                                 f"port {port!r} (its {kind} ports: {names}){hint}"))
        return None
    return Endpoint(node_id, port)


def _fan_out_problem(conn: ResolvedConnection,
                     siblings: list[ResolvedConnection]) -> Issue | None:
    """Every connection from one output shares its channel: one set of settings, and at most
    MAX_FAN_OUT readers."""
    from nodehost.plan import MAX_FAN_OUT

    loc = f"connections[{conn.index}]"
    if len(siblings) >= MAX_FAN_OUT:
        return Issue(f"{loc}.from", f"output {conn.source} already feeds {MAX_FAN_OUT} inputs "
                                    f"(connections[{siblings[0].index}] and on), the most one "
                                    "channel has; fan out in two stages (e.g. through a "
                                    "pass-through node)")
    if not siblings:
        return None
    first = siblings[0]
    for what, mine, theirs in (("backpressure", conn.backpressure, first.backpressure),
                               ("capacity", conn.capacity, first.capacity)):
        if mine != theirs:
            return Issue(f"{loc}.{what}",
                         f"{what} {json.dumps(mine)} differs from connections[{first.index}] "
                         f"({json.dumps(theirs)}), which reads the same output {conn.source}: "
                         f"the connections of one output share one channel, so they need the "
                         f"same {what}")
    return None


def output_rates(node: ResolvedNode, port: PortSpec) -> list[int] | None:
    return _derived(node, port.sample_rate_from_param, port.sample_rate)


def output_channels(node: ResolvedNode, port: PortSpec) -> list[int] | None:
    return _derived(node, port.channels_from_param, port.channels)


def _derived(node: ResolvedNode, param: str | None, declared: list[int] | None
             ) -> list[int] | None:
    """What an output produces when a param decides it (unset: anything), else what its
    manifest declares."""
    if param is not None:
        value = getattr(node.params, param, None)
        return [int(value)] if value is not None else None
    return declared


def _compatibility(
    src: ResolvedNode, src_port: PortSpec, dst: ResolvedNode, dst_port: PortSpec,
    src_ep: Endpoint, dst_ep: Endpoint,
) -> str | None:
    ends = (f"{src_ep} ({src.manifest.node_type}) → {dst_ep} ({dst.manifest.node_type})")
    if src_port.data_type != dst_port.data_type:
        return (f"{ends}: {src_port.data_type.value} cannot flow into a "
                f"{dst_port.data_type.value} port")
    checks: list[tuple[str, list[Any] | None, list[Any] | None, str]] = [
        ("sample rate", output_rates(src, src_port), dst_port.sample_rate,
         "insert a Resample node between them"),
        ("channel count", output_channels(src, src_port), dst_port.channels,
         "insert a Resample node with channels set between them"),
        ("sample format", src_port.sample_format, dst_port.sample_format,
         "convert the samples between them"),
        ("pixel format", src_port.format, dst_port.format, "insert a pixel-format converter"),
        ("dtype", src_port.dtype, dst_port.dtype, "cast the tensor between them"),
        ("language", src_port.language, dst_port.language, "insert a translation node"),
    ]
    for what, produced, accepted, fix in checks:
        if produced is None or accepted is None:
            continue
        if not set(produced) & set(accepted):
            return (f"{ends}: {what} {_fmt(produced)} is not accepted by the input, "
                    f"which takes {_fmt(accepted)}; {fix}")
    return None


def _fmt(values: list[Any]) -> str:
    return str(values[0]) if len(values) == 1 else "one of " + ", ".join(map(str, values))


def validate_pipeline(
    config: PipelineConfig, node_types: Mapping[str, NodeType]
) -> ValidatedPipeline:
    """Check a structurally valid config against the installed node types.

    Collects every problem before raising, so the user fixes a config in one pass.
    """
    issues: list[Issue] = []
    nodes: dict[str, ResolvedNode] = {}
    declared: dict[str, int] = {}  # every node id → its first index, valid or not
    for index, node_cfg in enumerate(config.nodes):
        loc = f"nodes[{index}]"
        if node_cfg.id in declared:
            issues.append(Issue(f"{loc}.id", f"duplicate node id {node_cfg.id!r} (first used "
                                             f"at nodes[{declared[node_cfg.id]}])"))
            continue
        declared[node_cfg.id] = index
        node_type = node_types.get(node_cfg.type)
        if node_type is None:
            from nodehost.discovery import unknown_type_hint

            issues.append(Issue(f"{loc}.type", f"unknown node type {node_cfg.type!r}"
                                               f"{unknown_type_hint(node_cfg.type, node_types)}"))
            continue
        manifest = node_type.manifest
        try:
            params = manifest.params_model.model_validate(
                _resolve_path_params(node_cfg.params, manifest, config._base_dir))
        except ValidationError as exc:
            issues.extend(pydantic_issues(exc, f"{loc}.params"))
            continue
        node = nodes[node_cfg.id] = ResolvedNode(
            index, node_cfg, node_type, params, manifest.sandbox.merged(node_cfg.sandbox)
        )
        issues.extend(_path_param_issues(node))

    issues.extend(placement_issues(config))
    if config.max_processes is not None and len(config.nodes) > config.max_processes:
        issues.append(Issue("max_processes", f"the pipeline has {len(config.nodes)} nodes, each "
                                             f"its own process, but max_processes is "
                                             f"{config.max_processes}"))

    connections: list[ResolvedConnection] = []
    branches: dict[Endpoint, list[ResolvedConnection]] = {}  # fan-out: connections per output
    seen_inputs: dict[Endpoint, int] = {}
    for index, conn in enumerate(config.connections):
        loc = f"connections[{index}]"
        src = _resolve_port(conn.from_, f"{loc}.from", nodes, declared, "from", issues)
        dst = _resolve_port(conn.to, f"{loc}.to", nodes, declared, "to", issues)
        if src is None or dst is None:
            continue
        if src.node == dst.node:
            issues.append(Issue(loc, f"node {src.node!r} is wired to itself ({src} → {dst}); "
                                     "a node cannot publish and subscribe the same channel"))
            continue
        if dst in seen_inputs:
            issues.append(Issue(f"{loc}.to", f"input {dst} is already fed by "
                                             f"connections[{seen_inputs[dst]}]; an input port "
                                             "takes one connection (merge upstream)"))
            continue
        seen_inputs[dst] = index
        src_node, dst_node = nodes[src.node], nodes[dst.node]
        problem = _compatibility(
            src_node, src_node.manifest.outputs[src.port],
            dst_node, dst_node.manifest.inputs[dst.port], src, dst,
        )
        if problem:
            issues.append(Issue(loc, problem))
            continue
        resolved = ResolvedConnection(index, src, dst, conn.capacity, conn.backpressure)
        fan_out_issue = _fan_out_problem(resolved, branches.setdefault(src, []))
        if fan_out_issue:
            issues.append(fan_out_issue)
            continue
        branches[src].append(resolved)
        connections.append(resolved)

    inputs, outputs = _resolve_session_ports(config, nodes, declared, seen_inputs, issues)
    issues.extend(_session_fan_out_issues(inputs, outputs, branches))
    if len(nodes) == len(config.nodes) and not issues:
        fed_by_session = {ep for session_input in inputs.values() for ep in session_input.ports}
        for node in nodes.values():
            for port in node.manifest.inputs:
                if Endpoint(node.id, port) not in seen_inputs and \
                        Endpoint(node.id, port) not in fed_by_session:
                    issues.append(Issue(f"nodes[{node.index}]", f"input port {node.id}.{port} "
                                                                "is not connected (wire "
                                                                "it, or feed it from a "
                                                                "session input)"))
    order = _topological_order(nodes, connections, issues)
    if issues:
        raise ConfigError(issues)
    return ValidatedPipeline(config, nodes, connections, order, inputs, outputs)


# --------------------------------------------------------------- session inputs and outputs

_CONSTRAINTS = ("sample_rate", "channels", "sample_format", "format", "dtype", "language")


def _resolve_session_ports(
    config: PipelineConfig, nodes: Mapping[str, ResolvedNode], declared: Mapping[str, int],
    connected: Mapping[Endpoint, int], issues: list[Issue],
) -> tuple[dict[str, SessionPort], dict[str, SessionPort]]:
    """Check ``inputs`` and ``outputs`` like connections: every port exists and points the
    right way, an input port is fed once (by a connection or a session input), one output
    port is read by one session output, and a fanned-out input's ports agree on what they
    accept."""
    inputs: dict[str, SessionPort] = {}
    fed: dict[Endpoint, str] = {}
    for name, targets in config.inputs.items():
        loc = f"inputs.{name}"
        if name in config.outputs:
            issues.append(Issue(loc, f"{name!r} names both a session input and a session "
                                     "output; give them different names"))
            continue
        refs = targets
        ports: list[Endpoint] = []
        for i, ref in enumerate(refs):
            where = loc if len(refs) == 1 else f"{loc}[{i}]"
            port = _resolve_port(ref, where, nodes, declared, "to", issues)
            if port is None:
                continue
            if port in connected:
                issues.append(Issue(where, f"input {port} is already fed by "
                                           f"connections[{connected[port]}]; an input port "
                                           "takes one feed (merge upstream)"))
            elif port in fed:
                issues.append(Issue(where, f"input {port} is already fed by {fed[port]}; an "
                                           "input port takes one feed"))
            else:
                fed[port] = where
                ports.append(port)
        if ports and len(ports) == len(refs):
            spec = _common_spec([(p, nodes[p.node].manifest.inputs[p.port]) for p in ports],
                                loc, issues)
            if spec is not None:
                inputs[name] = SessionPort(name, "input", tuple(ports), spec)
    outputs: dict[str, SessionPort] = {}
    read: dict[Endpoint, str] = {}
    for name, ref in config.outputs.items():
        loc = f"outputs.{name}"
        port = _resolve_port(ref, loc, nodes, declared, "from", issues)
        if port is None:
            continue
        if port in read:
            issues.append(Issue(loc, f"output port {port} is already read as session output "
                                     f"{read[port]!r}; read it once"))
            continue
        read[port] = name
        node = nodes[port.node]
        spec = node.manifest.outputs[port.port]
        spec = spec.model_copy(update={
            "sample_rate": output_rates(node, spec), "sample_rate_from_param": None,
            "channels": output_channels(node, spec), "channels_from_param": None})
        outputs[name] = SessionPort(name, "output", (port,), spec)
    return inputs, outputs


def _session_fan_out_issues(inputs: Mapping[str, SessionPort], outputs: Mapping[str, SessionPort],
                            branches: Mapping[Endpoint, list[ResolvedConnection]]) -> list[Issue]:
    """A session input's channel and a read output's channel hold MAX_FAN_OUT readers too
    (the application's reader of an output is one of them)."""
    from nodehost.plan import MAX_FAN_OUT

    issues = []
    for name, session_input in inputs.items():
        if len(session_input.ports) > MAX_FAN_OUT:
            issues.append(Issue(f"inputs.{name}", f"feeds {len(session_input.ports)} ports, "
                                                  f"more than the {MAX_FAN_OUT} one channel "
                                                  "has; use several session inputs"))
    for name, session_output in outputs.items():
        port = session_output.ports[0]
        if len(branches.get(port, [])) >= MAX_FAN_OUT:
            issues.append(Issue(f"outputs.{name}", f"output {port} already feeds "
                                                   f"{MAX_FAN_OUT} inputs, the most one channel "
                                                   "has with the session's own reader; fan "
                                                   "out in two stages"))
    return issues


def _common_spec(ports: list[tuple[Endpoint, PortSpec]], loc: str,
                 issues: list[Issue]) -> PortSpec | None:
    """What one session input may carry so that every port it feeds accepts it."""
    first, spec = ports[0]
    update: dict[str, Any] = {}
    for port, other in ports[1:]:
        if other.data_type != spec.data_type:
            issues.append(Issue(loc, f"fans out to {first} ({spec.data_type.value}) and {port} "
                                     f"({other.data_type.value}): one input carries one data "
                                     "type; use two session inputs"))
            return None
        for what in _CONSTRAINTS:
            mine = update.get(what, getattr(spec, what))
            theirs = getattr(other, what)
            if mine is None or theirs is None:
                update[what] = theirs if mine is None else mine
                continue
            common = [value for value in mine if value in theirs]
            if not common:
                label = what.replace("_", " ")
                issues.append(Issue(loc, f"fans out to {first} and {port}, which accept no "
                                         f"{label} in common ({first} takes {_fmt(mine)}, "
                                         f"{port} takes {_fmt(theirs)}); use two session "
                                         "inputs or insert a converter before one of them"))
                return None
            update[what] = common
    return spec.model_copy(update={**update, "description": ""})


def placement_issues(config: PipelineConfig) -> list[Issue]:
    """Every ``nodes[i].machine`` must name an entry of ``machines:``."""
    issues = []
    for index, node in enumerate(config.nodes):
        if node.machine not in (None, LOCAL_MACHINE) and node.machine not in config.machines:
            known = ", ".join(sorted(config.machines)) or "none declared"
            issues.append(Issue(f"nodes[{index}].machine", f"unknown machine {node.machine!r}"
                                f"{_closest(node.machine, config.machines)} (machines: "
                                f"{known}); declare it under `machines:`"))
    return issues


def _topological_order(
    nodes: Mapping[str, ResolvedNode], connections: list[ResolvedConnection],
    issues: list[Issue],
) -> list[str]:
    downstream: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    indegree = dict.fromkeys(nodes, 0)
    for conn in connections:
        downstream[conn.source.node].append(conn.target.node)
        indegree[conn.target.node] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    order: list[str] = []
    while ready:
        node_id = ready.pop(0)
        order.append(node_id)
        for nxt in downstream[node_id]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) < len(nodes):
        cyclic = sorted(n for n in nodes if n not in order)
        issues.append(Issue("connections", f"the connections form a cycle through "
                                           f"{', '.join(cyclic)}; pipelines must be acyclic"))
    return order



# --------------------------------------------------------------------------- --set overrides

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _typed_value(raw: str, kind: str) -> Any:
    """``raw`` (command-line text) as the manifest's param type; ValueError says why not."""
    if kind == "string":
        return raw
    if kind == "integer":
        return int(raw)
    if kind == "number":
        return float(raw)
    if kind == "boolean":
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"{raw!r} is not a boolean (true/false, yes/no, on/off, 1/0)")
    value = yaml.safe_load(raw)  # array / object: YAML flow syntax, e.g. [1, 2] or {a: 1}
    expected = list if kind == "array" else dict
    if not isinstance(value, expected):
        raise ValueError(f"{raw!r} is not an {kind} (write it in YAML: "
                         f"{'[1, 2]' if kind == 'array' else '{a: 1}'})")
    return value


def apply_overrides(config: PipelineConfig, overrides: Iterable[str],
                    node_types: Mapping[str, Any]) -> PipelineConfig:
    """``config`` with ``NODE.PARAM=VALUE`` overrides (``nodehost run --set``) applied, each
    value typed by the node type's manifest. Ranges and enums are checked afterwards by
    ``validate_pipeline``, like any param, at ``nodes[i].params.PARAM``."""
    issues: list[Issue] = []
    nodes = [n.model_copy(deep=True) for n in config.nodes]
    by_id = {n.id: n for n in nodes}
    for item in overrides:
        loc = f"--set {item}"
        target, eq, raw = item.partition("=")
        node_id, dot, param = target.partition(".")
        if not eq or not dot or not node_id or not param:
            issues.append(Issue(loc, "expected NODE.PARAM=VALUE, e.g. asr.beam_size=2"))
            continue
        node = by_id.get(node_id)
        if node is None:
            issues.append(Issue(loc, f"no node {node_id!r} in the config"
                                     f"{_closest(node_id, by_id)}"))
            continue
        node_type = node_types.get(node.type)
        if node_type is None:  # validate_pipeline reports the unknown type itself
            node.params[param] = raw
            continue
        spec = node_type.manifest.params.get(param)
        if spec is None:
            known = ", ".join(node_type.manifest.params) or "none"
            issues.append(Issue(loc, f"{node.type} has no param {param!r}"
                                     f"{_closest(param, node_type.manifest.params)}; its "
                                     f"params: {known}"))
            continue
        try:
            node.params[param] = _typed_value(raw, spec.type)
        except ValueError as exc:
            why = str(exc) if spec.type in ("boolean", "array", "object") else \
                f"{raw!r} is not an {spec.type}" if spec.type == "integer" else \
                f"{raw!r} is not a {spec.type}"
            issues.append(Issue(loc, f"{node.type}.{param}: {why}"))
    if issues:
        raise ConfigError(issues)
    updated = config.model_copy(update={"nodes": nodes})
    updated._base_dir = config._base_dir
    return updated
