"""What the operator decides per node in a pipeline config — ``resources`` and ``env`` — and
how a node that meets its memory limit is reported. Real node processes throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import probe_chain

from nodehost.config import load_config, validate_pipeline
from nodehost.errors import ConfigError
from nodehost.plan import plan_session


def run(host: Any, config: dict[str, Any], timeout: float = 120) -> tuple[Any, list[dict]]:
    session = host.start_session(config)
    events = list(session.events(timeout=timeout))
    return session.wait(timeout), events


def sink_with(out: Path, **node: Any) -> dict[str, Any]:
    config = probe_chain(out, count=3)
    config["nodes"][-1].update(node)
    return config


def test_config_env_and_memory_limit_reach_the_node_process(host: Any, tmp_out: Path) -> None:
    out = tmp_out / "summary.json"
    config = sink_with(out, resources={"memory_mb": 700},
                       env={"CT2_USE_MKL": 0, "OMP_NUM_THREADS": "1", "MY_FLAG": "yes"})
    result, _ = run(host, config)
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    env = summary["env"]
    assert (env["CT2_USE_MKL"], env["OMP_NUM_THREADS"], env["MY_FLAG"]) == ("0", "1", "yes")
    assert summary["rlimit_data"] == 700 << 20  # the manifest says 512
    assert env["HOME"] != str(Path.home())  # still the sandbox's private dir


def test_without_overrides_the_manifest_limit_applies(host: Any, tmp_out: Path) -> None:
    out = tmp_out / "summary.json"
    result, _ = run(host, sink_with(out))
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    assert summary["rlimit_data"] == 512 << 20
    assert "CT2_USE_MKL" not in summary["env"]


def test_plan_carries_the_overrides(host: Any, tmp_out: Path) -> None:
    config = sink_with(tmp_out / "s.json", resources={"memory_mb": 1024}, env={"A": "1"})
    pipeline = validate_pipeline(load_config(config), host.registry.node_types)
    launches = {launch.node_id: launch for launch in plan_session(pipeline, "s-1")}
    assert (launches["sink"].memory_mb, launches["sink"].env) == (1024, {"A": "1"})
    assert (launches["src"].memory_mb, launches["src"].env) == (512, {})


@pytest.mark.parametrize(("node", "expected"), [
    ({"resources": {"memory_mb": 0}},
     "nodes[2].resources.memory_mb: Input should be greater than 0"),
    ({"resources": {"memory_gb": 1}},
     "nodes[2].resources.memory_gb: Extra inputs are not permitted"),
    ({"env": {"PATH": "/evil"}},
     "nodes[2].env.PATH: PATH decides which code the node process loads"),
    ({"env": {"LD_PRELOAD": "/x.so"}},
     "nodes[2].env.LD_PRELOAD: LD_PRELOAD decides which code the node process loads"),
    ({"env": {"HOME": "/root"}},
     "nodes[2].env.HOME: HOME is set by the sandbox (the node's private temp dir)"),
    ({"env": {"HF_HUB_OFFLINE": "0"}},
     "nodes[2].env.HF_HUB_OFFLINE: HF_HUB_OFFLINE is set by the sandbox"),
    ({"env": {"2FAST": "1"}},
     "nodes[2].env['2FAST']: '2FAST' is not a valid environment variable name"),
    ({"env": {"FLAG": True}},
     "nodes[2].env.FLAG: True is not a string or a number (quote it)"),
    ({"env": ["A=1"]}, "nodes[2].env: Input should be a valid dictionary"),
], ids=["memory-zero", "unknown-resource", "path", "ld-preload", "home", "hub", "bad-name",
        "bool", "not-a-map"])
def test_bad_resources_and_env_are_located(host: Any, tmp_out: Path, node: dict[str, Any],
                                           expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        host.validate(sink_with(tmp_out / "s.json", **node))
    assert any(str(issue).startswith(expected) for issue in info.value.issues), \
        info.value.issues


# ---------------------------------------------------------------------- memory limit hit

@pytest.mark.parametrize("how", ["python", "native", "abort"])
@pytest.mark.parametrize("stage", ["initialize", "process"])
def test_a_node_that_hits_its_memory_limit_is_reported_as_such(
        host: Any, tmp_out: Path, stage: str, how: str) -> None:
    hog = {"id": "hog", "type": "MemoryHog", "params": {"stage": stage, "how": how},
           "resources": {"memory_mb": 192}}
    config = probe_chain(tmp_out / "s.json", count=5, middle=[hog])
    result, events = run(host, config)
    assert not result.ok
    assert result.failed_node == "hog"
    assert result.reason.startswith(
        f"node 'hog' (MemoryHog) hit its memory limit of 192 MiB in {stage}() "
        "(raise nodes[1].resources.memory_mb)"), result.reason
    native = {"native": "RuntimeError: hog_malloc: failed to allocate memory",
              "python": "MemoryError",
              "abort": "it was killed by SIGABRT: memory allocation of 16777216 bytes failed"}
    assert native[how] in result.reason  # the library's own words stay, as detail
    failed = [e for e in events if e["event"] == "status" and e["node"] == "hog"
              and e["status"] == "Error"]
    assert failed, events
    # The figure shown beside the error is the private memory at the limit, not a small RSS.
    assert failed[0]["memory_limit"] == 192 << 20
    assert failed[0]["memory_usage"] >= 0.5 * (192 << 20), failed[0]


def test_the_same_node_runs_once_the_config_raises_its_limit(host: Any, tmp_out: Path) -> None:
    hog = {"id": "hog", "type": "MemoryHog",
           "params": {"stage": "initialize", "how": "native", "total_mb": 320}}
    out = tmp_out / "s.json"
    result, _ = run(host, probe_chain(out, count=5, middle=[hog]))
    assert not result.ok and "hit its memory limit of 256 MiB" in result.reason  # manifest's
    hog["resources"] = {"memory_mb": 640}
    result, _ = run(host, probe_chain(out, count=5, middle=[hog]))
    assert result.ok, result.reason
    assert json.loads(out.read_text())["count"] == 5
