"""Pipeline configs shared by the unit tests (test_config) and the CLI tests (test_cli).

The node types are those of the ``nodehost-fixture-catalog`` fixture plugin: the unit tests
build them in memory from its manifest files, the CLI tests install the plugin for real.
Each bad config comes with the located messages it must produce.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodehost.discovery import NodeType
from nodehost.manifest import NodeManifest

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"
CATALOG_MANIFESTS = FIXTURE_PLUGINS / "catalog" / "nodehost_fixture_catalog" / "manifests"


def catalog_types() -> dict[str, NodeType]:
    types = {}
    for path in sorted(CATALOG_MANIFESTS.glob("*.yaml")):
        manifest = NodeManifest.model_validate(yaml.safe_load(path.read_text()))
        types[manifest.node_type] = NodeType(manifest, "nodehost-fixture-catalog", "0.1.0",
                                             str(path))
    return types


# mic (16 kHz) → gain → resample (to 48 kHz, rate from its param) → speaker (48 kHz only)
VALID: dict[str, Any] = {
    "name": "catalog-demo",
    "max_processes": 4,
    "nodes": [
        {"id": "mic", "type": "Mic", "params": {"count": 3}},
        {"id": "gain", "type": "Gain", "params": {"gain": 2.0, "mode": "db"}},
        {"id": "resample", "type": "Resample", "params": {"rate": 48000}},
        {"id": "speaker", "type": "Speaker48k", "sandbox": {"fs_write": ["/tmp/out.wav"]}},
    ],
    "connections": [
        {"from": "mic", "to": "gain"},
        {"from": "gain.out", "to": "resample.in", "capacity": 1024},
        {"from": "resample", "to": "speaker.in", "backpressure": False},
    ],
}

Edit = Callable[[dict[str, Any]], None]


def edited(edit: Edit) -> dict[str, Any]:
    config = copy.deepcopy(VALID)
    edit(config)
    return config


def _set(path: str, value: Any) -> Edit:
    """An edit setting ``nodes.1.params.gain``-style paths (list indexes as numbers)."""
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return edit


def _delete(path: str) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[int(last) if isinstance(target, list) else last]
    return edit


def _add_connection(**conn: str) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        config["connections"].append({"from" if k == "from_" else k: v for k, v in conn.items()})
    return edit


def _pipeline(nodes: list[tuple[str, str]], connections: list[tuple[str, str]]) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        config.pop("max_processes")
        config["nodes"] = [{"id": i, "type": t} for i, t in nodes]
        config["connections"] = [{"from": a, "to": b} for a, b in connections]
    return edit


RESAMPLE_HINT = "insert a Resample node between them"

# id, edit of VALID, expected fragments of the error (the located one first)
BAD_CONFIGS: list[Any] = [
    pytest.param(_set("nodes.1.type", "Gian"),
                 ["nodes[1].type: unknown node type 'Gian' (did you mean 'Gain'",
                  "`nodehost nodes` lists the installed ones"], id="unknown-type"),
    pytest.param(_set("nodes.1.params.gain", "loud"),
                 ["nodes[1].params.gain: Input should be a valid number"], id="param-type"),
    pytest.param(_set("nodes.1.params.gain", -1),
                 ["nodes[1].params.gain: Input should be greater than or equal to 0"],
                 id="param-below-minimum"),
    pytest.param(_set("nodes.1.params.gain", 11),
                 ["nodes[1].params.gain: Input should be less than or equal to 10"],
                 id="param-above-maximum"),
    pytest.param(_set("nodes.1.params.mode", "cubic"),
                 ["nodes[1].params.mode: Input should be 'linear' or 'db'"], id="param-enum"),
    pytest.param(_set("nodes.0.params.count", 2.5),
                 ["nodes[0].params.count: Input should be a valid integer"],
                 id="param-integer"),
    pytest.param(_set("nodes.2.params", {}),
                 ["nodes[2].params.rate: Field required"], id="param-required-missing"),
    pytest.param(_set("nodes.1.params.gian", 2),
                 ["nodes[1].params.gian: Extra inputs are not permitted"], id="param-unknown"),
    pytest.param(_set("nodes.1.params", 5),
                 ["nodes[1].params: Input should be a valid dictionary"], id="params-not-map"),
    pytest.param(_set("nodes.3.id", "gain"),
                 ["nodes[3].id: duplicate node id 'gain' (first used at nodes[1])"],
                 id="duplicate-id"),
    pytest.param(_set("nodes.0.id", "1mic"),
                 ["nodes[0].id: '1mic' is not a valid node id (letters, digits, _ and -, not "
                  "starting with a digit or -)"], id="bad-node-id"),
    pytest.param(_set("name", "my demo"),
                 ["name: 'my demo' is not a valid pipeline name"], id="bad-pipeline-name"),
    pytest.param(_set("nodes.3.sandbox", {"fs_write": ["out.wav"]}),
                 ["nodes[3].sandbox.fs_write: sandbox paths must be absolute: 'out.wav'"],
                 id="sandbox-relative-path"),
    pytest.param(_set("connections.0.from", "mik"),
                 ["connections[0].from: unknown node 'mik' (did you mean 'mic'"],
                 id="connection-unknown-node"),
    pytest.param(_set("connections.0.to", "gain.input"),
                 ["connections[0].to: node 'gain' (Gain) has no input port 'input' "
                  "(its input ports: in)"], id="connection-unknown-port"),
    pytest.param(_set("connections.1.from", "speaker"),
                 ["connections[1].from: node 'speaker' (Speaker48k) has 0 output ports (none);"
                  " name one as 'speaker.<port>'"], id="shorthand-no-port"),
    pytest.param(_pipeline([("mic", "Mic"), ("split", "Splitter"), ("mix", "Mixer"),
                            ("gain", "Gain")],
                           [("mic", "split"), ("split", "mix.left"), ("split.right", "mix"),
                            ("mix", "gain")]),
                 ["connections[1].from: node 'split' (Splitter) has 2 output ports "
                  "(left, right); name one as 'split.<port>'",
                  "connections[2].to: node 'mix' (Mixer) has 2 input ports (left, right)"],
                 id="shorthand-two-ports"),
    pytest.param(_set("connections.1.from", "gain.out.x"),
                 ["connections[1].from: 'gain.out.x' is not \"node\" or \"node.port\""],
                 id="endpoint-syntax"),
    pytest.param(_pipeline([("mic", "Mic"), ("printer", "Printer")], [("mic", "printer")]),
                 ["connections[0]: mic.out (Mic) → printer.text (Printer): audio cannot flow "
                  "into a text port"], id="data-type-mismatch"),
    pytest.param(_pipeline([("mic", "Mic"), ("speaker", "Speaker48k")], [("mic", "speaker")]),
                 ["connections[0]: mic.out (Mic) → speaker.in (Speaker48k): sample rate 16000 "
                  "is not accepted by the input, which takes 48000; " + RESAMPLE_HINT],
                 id="sample-rate-mismatch"),
    pytest.param(_set("nodes.2.params.rate", 16000),
                 ["connections[2]: resample.out (Resample) → speaker.in (Speaker48k): sample "
                  "rate 16000 is not accepted by the input, which takes 48000; "
                  + RESAMPLE_HINT], id="derived-sample-rate-mismatch"),
    pytest.param(_set("connections.1.capacity", 1000),
                 ["connections[1].capacity: 1000 is not a power of two (try 512 or 1024)"],
                 id="capacity-not-power-of-two"),
    pytest.param(_set("connections.1.capacity", 0),
                 ["connections[1].capacity: Input should be greater than 0"], id="capacity-zero"),
    pytest.param(_add_connection(from_="resample.out", to="resample.in"),
                 ["connections[3]: node 'resample' is wired to itself (resample.out → "
                  "resample.in)"], id="self-wired"),
    pytest.param(_pipeline([("mic", "Mic"), ("mix", "Mixer"), ("gain", "Gain")],
                           [("mic", "mix.left"), ("mix", "gain"), ("gain", "mix.right")]),
                 ["connections: the connections form a cycle through gain, mix; pipelines "
                  "must be acyclic"], id="cycle"),
    pytest.param(_add_connection(from_="mic", to="gain.in"),
                 ["connections[3].to: input gain.in is already fed by connections[0]"],
                 id="input-fed-twice"),
    pytest.param(_delete("connections.2"),
                 ["nodes[3]: input port speaker.in is not connected"], id="input-unconnected"),
    pytest.param(_set("max_processes", 3),
                 ["max_processes: the pipeline has 4 nodes, each its own process, but "
                  "max_processes is 3"], id="max-processes"),
    pytest.param(_set("max_processes", 0),
                 ["max_processes: Input should be greater than 0"], id="max-processes-zero"),
    pytest.param(_set("nodes", []),
                 ["nodes: List should have at least 1 item"], id="no-nodes"),
    pytest.param(_delete("nodes"), ["nodes: Field required"], id="nodes-missing"),
    pytest.param(_set("nodez", []), ["nodez: Extra inputs are not permitted"],
                 id="unknown-top-level-key"),
    pytest.param(_set("connections.0.capasity", 1024),
                 ["connections[0].capasity: Extra inputs are not permitted"],
                 id="unknown-connection-key"),
]

# Files that cannot be read as a config: (file name, content, expected fragments).
# ``None`` as content: nothing is created (a missing file); ``"<dir>"``: a directory.
BAD_FILES: list[Any] = [
    pytest.param("bad.yaml", "name: x\nnodes: [\n  {id: a\n", ["line 4, column 1",
                 "invalid YAML"], id="yaml-syntax"),
    pytest.param("bad.yaml", "name: x\n  nodes: 1\n", ["line 2, column 8", "invalid YAML"],
                 id="yaml-indentation"),
    pytest.param("bad.json", '{\n  "name": "x",\n  "nodes": [,]\n}\n',
                 ["line 3, column 13", "invalid JSON"], id="json-syntax"),
    pytest.param("bad.toml", 'name = "x"\nnodes = [\n{ id = "a" type = "Mic" }]\n',
                 ["bad.toml: line 3, column 12: invalid TOML: "], id="toml-syntax"),
    pytest.param("missing.yaml", None, ["file not found:", "missing.yaml"], id="missing-file"),
    pytest.param("adir.yaml", "<dir>", ["is a directory, not a config file"], id="directory"),
    pytest.param("empty.yaml", "", ["a pipeline config must be a mapping, got an empty "
                                    "document"], id="empty-document"),
    pytest.param("comments.yaml", "# nothing here\n", ["got an empty document"],
                 id="only-comments"),
    pytest.param("list.yaml", "- id: a\n  type: Mic\n", ["a pipeline config must be a "
                                                          "mapping, got list"], id="list-document"),
    pytest.param("scalar.json", "42", ["must be a mapping, got int"], id="scalar-document"),
    pytest.param("binary.yaml", b"\xff\xfe\x00garbage", ["cannot read"], id="not-utf8"),
]


def make_file(tmp_path: Path, name: str, content: str | bytes | None) -> Path:
    path = tmp_path / name
    if content == "<dir>":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path
