"""Fan-out, fan-in and diamonds: every shape that validates runs, with real processes; more
readers than a channel has, or branches that disagree, are located validation errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodehost.errors import ConfigError
from nodehost.plan import MAX_FAN_OUT

COUNT = 40


def source(node_id: str = "src", seed: int = 0) -> dict[str, Any]:
    return {"id": node_id, "type": "ProbeSource",
            "params": {"count": COUNT, "payload_bytes": 256, "seed": seed}}


def sink(node_id: str, out: Path, node_type: str = "ProbeSink") -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "params": {"out_path": str(out)},
            "sandbox": {"fs_write": [str(out)]}}


def fan_out(readers: int, tmp: Path) -> dict[str, Any]:
    sinks = [sink(f"sink{i}", tmp / f"sink{i}.json") for i in range(readers)]
    return {"name": f"fanout{readers}", "init_timeout_s": 600,
            "nodes": [source(), *sinks],
            "connections": [{"from": "src", "to": s["id"]} for s in sinks]}


@pytest.mark.parametrize("readers", [1, 2, 5, MAX_FAN_OUT])
def test_every_reader_of_a_fan_out_gets_every_message(host: Any, tmp_out: Path,
                                                      readers: int) -> None:
    result = host.run(fan_out(readers, tmp_out), timeout=900)
    assert result.ok, result.reason
    for i in range(readers):
        summary = json.loads((tmp_out / f"sink{i}.json").read_text())
        assert (summary["count"], summary["in_order"], summary["intact"]) == \
            (COUNT, True, True), (i, summary)


def test_fan_in_two_sources_into_one_node(host: Any, tmp_out: Path) -> None:
    out = tmp_out / "merge.json"
    config = {"nodes": [source("a", seed=1), source("b", seed=2), sink("merge", out,
                                                                        "ProbeMerge")],
              "connections": [{"from": "a", "to": "merge.left"},
                              {"from": "b", "to": "merge.right"}]}
    result = host.run(config, timeout=300)
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    assert summary["left"]["seeds"] == {"1": COUNT} and summary["right"]["seeds"] == {"2": COUNT}
    assert all(summary[p]["in_order"] and summary[p]["intact"] for p in ("left", "right"))


def test_diamond(host: Any, tmp_out: Path) -> None:
    out = tmp_out / "merge.json"
    config = {"nodes": [source(), {"id": "a", "type": "Forward"}, {"id": "b", "type": "Forward"},
                        sink("merge", out, "ProbeMerge")],
              "connections": [{"from": "src", "to": "a"}, {"from": "src", "to": "b"},
                              {"from": "a", "to": "merge.left"},
                              {"from": "b", "to": "merge.right"}]}
    result = host.run(config, timeout=300)
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    for port in ("left", "right"):
        assert summary[port]["count"] == COUNT and summary[port]["in_order"], summary


def test_more_readers_than_a_channel_has_is_a_located_error(host: Any, tmp_out: Path) -> None:
    with pytest.raises(ConfigError) as info:
        host.validate(fan_out(MAX_FAN_OUT + 1, tmp_out))
    assert [str(i) for i in info.value.issues] == [
        f"connections[{MAX_FAN_OUT}].from: output src.out already feeds {MAX_FAN_OUT} inputs "
        "(connections[0] and on), the most one channel has; fan out in two stages (e.g. "
        "through a pass-through node)"]


@pytest.mark.parametrize(("setting", "value", "shown"),
                         [("backpressure", False, "false"), ("capacity", 4096, "4096")])
def test_branches_of_one_output_must_agree(host: Any, tmp_out: Path, setting: str,
                                           value: Any, shown: str) -> None:
    config = fan_out(3, tmp_out)
    config["connections"][2][setting] = value
    with pytest.raises(ConfigError) as info:
        host.validate(config)
    default = {"backpressure": "true", "capacity": str(16 * 1024 * 1024)}[setting]
    assert [str(i) for i in info.value.issues] == [
        f"connections[2].{setting}: {setting} {shown} differs from connections[0] "
        f"({default}), which reads the same output src.out: the connections of one output "
        f"share one channel, so they need the same {setting}"]
    for conn in config["connections"]:  # the same setting everywhere is fine
        conn[setting] = value
    host.validate(config)
