"""Placement in configs (`machines:`, `nodes[].machine`) and how a placed pipeline is cut
into one part per machine. No network here: tests/distributed/ runs real agents."""

from __future__ import annotations

from typing import Any

import pytest

from nodehost.config import load_config, validate_pipeline
from nodehost.discovery import discover
from nodehost.errors import ConfigError
from nodehost.remote import placed, split, with_bridges


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "p",
        "machines": {"gpu1": {"connect": "tcp/10.0.0.2:7447", "token_env": "GPU1_TOKEN"},
                     "gpu2": {"connect": "tcp/10.0.0.3:7447", "token_env": "GPU2_TOKEN"}},
        "nodes": [{"id": "src", "type": "ProbeSource"},
                  {"id": "a", "type": "Forward", "machine": "gpu1"},
                  {"id": "b", "type": "Forward", "machine": "gpu2"},
                  {"id": "sink", "type": "ProbeSink", "params": {"out_path": "/tmp/x.json"},
                   "sandbox": {"fs_write": ["/tmp/x.json"]}}],
        "connections": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"},
                        {"from": "b", "to": "sink"}],
    }
    base.update(overrides)
    return base


def issues(data: dict[str, Any]) -> str:
    registry = discover()
    with pytest.raises(ConfigError) as info:
        validate_pipeline(load_config(data), registry.node_types)
    return str(info.value)


def test_unknown_machine_is_a_located_error():
    data = config()
    data["nodes"][2]["machine"] = "gpu3"
    assert "nodes[2].machine: unknown machine 'gpu3'" in issues(data)


@pytest.mark.parametrize(("machines", "expected"), [
    ({"local": {"connect": "tcp/1.2.3.4:7447", "token_env": "T"}}, "reserved"),
    ({"gpu1": {"connect": "10.0.0.2", "token_env": "T"}}, "machines.gpu1.connect"),
    ({"gpu1": {"connect": "tcp/10.0.0.2:7447", "token_env": "s3cr3t-token!"}},
     "machines.gpu1.token_env"),
    ({"gpu1": {"connect": "tcp/10.0.0.2:7447", "token": "s3cr3t"}}, "machines.gpu1.token"),
])
def test_machine_entries_are_checked(machines, expected):
    with pytest.raises(ConfigError) as info:
        load_config(config(machines=machines, nodes=[{"id": "src", "type": "ProbeSource"}],
                           connections=[]))
    assert expected in str(info.value)


def test_a_placed_pipeline_is_cut_into_parts_joined_by_bridges():
    registry = with_bridges(discover())
    parsed = load_config(config())
    assert placed(parsed)
    parts = split(validate_pipeline(parsed, registry.node_types), "p-1234")
    assert sorted(parts) == ["gpu1", "gpu2", "local"]
    local = {n["id"]: n["type"] for n in parts["local"].nodes}
    assert local == {"src": "ProbeSource", "sink": "ProbeSink",
                     "__link0_out": "LinkOut_tensor", "__link2_in": "LinkIn_tensor"}
    gpu1 = {n["id"]: n for n in parts["gpu1"].nodes}
    assert set(gpu1) == {"a", "__link0_in", "__link1_out"}
    # src (local) → a (gpu1): both ends meet at gpu1's agent; a → b: at the writer's, gpu1
    assert gpu1["__link0_in"]["params"]["connect"] == "tcp/10.0.0.2:7447"
    assert {n["id"]: n["params"]["connect"] for n in parts["gpu2"].nodes
            if n["id"].startswith("__")} == {"__link1_in": "tcp/10.0.0.2:7447",
                                             "__link2_out": "tcp/10.0.0.3:7447"}
    assert "machine" not in gpu1["a"]
    assert parts["gpu1"].origin == [1, None, None]
    for part in parts.values():  # each part is a valid pipeline on its own
        validate_pipeline(load_config(part.config(parsed)), registry.node_types)
