"""Plugin discovery.

Entry-point discovery is tested with real distributions: the projects under
tests/fixture_plugins are pip-installed once per session and the host runs in a subprocess
that finds them through importlib.metadata. Hook dispatch and manifest sources are tested
in-process with plugin objects registered directly (no entry points).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ManifestsPlugin
from fixture_dists import FIXTURE_PLUGINS, Installed, installed

import nodehost
from nodehost.discovery import (
    DISABLE_ENV,
    HOOK_TIMEOUT_S,
    TIMEOUT_ENV,
    discover,
    hook_timeout,
)
from nodehost.errors import DiscoveryError
from nodehost.manifest import NodeManifest

__all__ = ["installed"]  # the session fixture, used by name

GOOD = "nodehost-fixture-good"
GOOD_TYPES = {"FixtureGain", "FixtureTone"}
ALL_BUT_HANGS = [p for p in sorted(p.name for p in FIXTURE_PLUGINS.iterdir())
                 if (FIXTURE_PLUGINS / p / "pyproject.toml").exists() and p != "hangs"]


def nodes_json(installed: Installed, *projects: str, **env: str) -> dict[str, Any]:
    result = installed.run(["nodes", "--json"], *projects, **env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def types_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["node_type"]: node for node in data["nodes"]}


def failures_of(data: dict[str, Any], plugin: str) -> list[str]:
    return [f["reason"] for f in data["failures"] if f["plugin"] == plugin]


# ------------------------------------------------------------------------------ real dists

def test_good_plugin_types_are_listed_with_distribution_and_version(
    installed: Installed,
) -> None:
    data = nodes_json(installed, "good")
    types = types_of(data)
    assert set(types) == GOOD_TYPES
    gain, tone = types["FixtureGain"], types["FixtureTone"]
    assert (gain["plugin"], gain["plugin_version"], gain["version"]) == (GOOD, "1.2.3", "2.0.1")
    assert (tone["plugin"], tone["plugin_version"], tone["version"]) == (GOOD, "1.2.3", "0.3.0")
    assert gain["inputs"] == {"in": "audio"} and tone["outputs"] == {"out": "audio"}
    assert data["failures"] == []
    (plugin,) = data["plugins"]
    assert plugin == {"name": GOOD, "version": "1.2.3", "entry_point": "good",
                      "hooks": ["nodehost_node_manifests"],
                      "node_types": ["FixtureGain", "FixtureTone"]}


def test_manifest_sources_are_the_packaged_yaml_file_and_a_dict(installed: Installed) -> None:
    code = ("from nodehost.discovery import discover\n"
            "r = discover()\n"
            "print(r.node_types['FixtureGain'].source)\n"
            "print(r.node_types['FixtureTone'].source)\n")
    result = installed.python(code, "good")
    assert result.returncode == 0, result.stderr
    gain_source, tone_source = result.stdout.splitlines()
    assert gain_source.endswith("nodehost_fixture_good/manifests/fixture_gain.yaml")
    assert str(installed.targets["good"]) in gain_source  # read from the installed copy
    assert tone_source == "<dict>"


def test_the_host_never_imports_a_node_implementation(installed: Installed,
                                                      tmp_path: Path) -> None:
    code = ("import sys\n"
            "from nodehost.discovery import discover\n"
            "r = discover()\n"
            "assert set(r.node_types) == {'FixtureGain', 'FixtureTone'}, r.node_types\n"
            "print('nodehost_fixture_good.plugin' in sys.modules)\n"
            "print('nodehost_fixture_good.nodes' in sys.modules)\n")
    result = installed.python(code, "good")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]

    marker = tmp_path / "imported"
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({
        "nodes": [{"id": "tone", "type": "FixtureTone"}, {"id": "gain", "type": "FixtureGain"}],
        "connections": [{"from": "tone", "to": "gain"}],
    }))
    for args in (["nodes"], ["nodes", "--json"], ["inspect", "FixtureGain"],
                 ["validate", str(config)]):
        result = installed.run(args, "good", NODEHOST_FIXTURE_IMPORT_MARKER=str(marker))
        assert result.returncode == 0, (args, result.stderr)
    assert not marker.exists()
    # the marker works: importing the implementation does create it
    result = installed.python("import nodehost_fixture_good.nodes", "good",
                              NODEHOST_FIXTURE_IMPORT_MARKER=str(marker))
    assert result.returncode == 0, result.stderr
    assert marker.exists()


BROKEN = [
    pytest.param("broken-import", "nodehost-fixture-broken-import",
                 ["import of 'nodehost_fixture_broken_import.plugin' failed: "
                  "ModuleNotFoundError: No module named 'nodehost_fixture_no_such_dependency'"],
                 set(), id="broken-import"),
    pytest.param("bad-hook", "nodehost-fixture-bad-hook",
                 ["invalid plugin: PluginValidationError: Argument(s) {'evt'} are declared in "
                  "the hookimpl but can not be found in the hookspec"], set(), id="bad-hook"),
    pytest.param("unknown-hook", "nodehost-fixture-unknown-hook",
                 ["implements unknown hook(s) nodehost_frobnicate; known hooks: "
                  "nodehost_node_manifests, nodehost_session_event, "
                  "nodehost_metrics_exporter"], set(), id="unknown-hook"),
    pytest.param("bad-manifest", "nodehost-fixture-bad-manifest",
                 ["invalid manifest #0 (FixtureBroken): version: 'one' is not a semantic "
                  "version (e.g. 1.0.0); entrypoint: 'not an entrypoint' is not of the form "
                  '"package.module:Class"'], {"FixtureStillFine"}, id="bad-manifest"),
    pytest.param("garbage", "nodehost-fixture-garbage",
                 ["invalid manifest #0: TypeError: expected a NodeManifest, a dict or a "
                  "manifest path, got int",
                  "nodehost_node_manifests() must return a list, got int"],
                 {"FixtureGarbageSurvivor"}, id="garbage"),
]


@pytest.mark.parametrize(("project", "dist", "reasons", "survivors"), BROKEN)
def test_a_broken_plugin_is_reported_and_the_others_still_load(
    installed: Installed, project: str, dist: str, reasons: list[str], survivors: set[str],
) -> None:
    data = nodes_json(installed, project, "good")
    assert sorted(failures_of(data, dist)) == sorted(reasons)
    assert failures_of(data, GOOD) == []
    assert set(types_of(data)) == GOOD_TYPES | survivors
    assert all(t["plugin"] == dist for n, t in types_of(data).items() if n in survivors)


def test_a_node_type_claimed_twice_is_reported_once_and_kept_once(installed: Installed) -> None:
    data = nodes_json(installed, "good", "conflict")
    types = types_of(data)
    assert set(types) == GOOD_TYPES | {"FixtureConflictOwn"}
    owner = types["FixtureGain"]["plugin"]
    other = {GOOD, "nodehost-fixture-conflict"} - {owner}
    (loser,) = other
    assert failures_of(data, loser) == [
        f"node type 'FixtureGain' is already provided by {owner}; ignored"
    ]
    assert failures_of(data, owner) == []


def test_a_hanging_hook_times_out_and_the_others_still_load(installed: Installed) -> None:
    data = nodes_json(installed, "hangs", "good", **{TIMEOUT_ENV: "1"})
    assert failures_of(data, "nodehost-fixture-hangs") == [
        "nodehost_node_manifests() failed: HookTimeout: no answer within 1 s (set "
        "NODEHOST_HOOK_TIMEOUT_S to wait longer)"
    ]
    assert set(types_of(data)) == GOOD_TYPES


def test_every_fixture_installed_together(installed: Installed) -> None:
    data = nodes_json(installed, *ALL_BUT_HANGS)
    failing = {f["plugin"] for f in data["failures"]}
    assert failing >= {"nodehost-fixture-broken-import", "nodehost-fixture-bad-hook",
                       "nodehost-fixture-unknown-hook", "nodehost-fixture-bad-manifest",
                       "nodehost-fixture-garbage"}
    assert set(types_of(data)) >= GOOD_TYPES | {"FixtureStillFine", "FixtureGarbageSurvivor",
                                                "FixtureConflictOwn", "Mic", "Gain"}


@pytest.mark.parametrize("name", [GOOD, "NodeHost_Fixture_Good", "good"])
def test_disable_plugins_removes_one(installed: Installed, name: str) -> None:
    data = nodes_json(installed, "good", "bad-manifest", **{DISABLE_ENV: f"other, {name}"})
    assert set(types_of(data)) == {"FixtureStillFine"}
    assert [p["name"] for p in data["plugins"]] == ["nodehost-fixture-bad-manifest"]


def test_disable_autoload_loads_no_plugin(installed: Installed) -> None:
    data = nodes_json(installed, "good", "broken-import",
                      NODEHOST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert data == {"nodes": [], "plugins": [], "failures": []}


# ------------------------------------------------------------------------------ in-process

def tone(node_type: str = "Tone", **extra: Any) -> dict[str, Any]:
    return {"node_type": node_type, "version": "1.0.0", "entrypoint": "pkg.nodes:Tone",
            "outputs": {"out": {"data_type": "audio"}}, **extra}


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @nodehost.hookimpl
    def nodehost_session_event(self, event: dict[str, Any]) -> None:
        event["seen_by"] = "recorder"  # mutating its copy must not reach other plugins
        self.events.append(event)


class Exploder:
    @nodehost.hookimpl
    def nodehost_session_event(self, event: dict[str, Any]) -> None:
        raise RuntimeError("exporter is down")


def test_a_failing_session_event_hook_never_breaks_notify(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, last = Recorder(), Recorder()
    registry = discover(plugins=[first, Exploder(), last], entry_points=False)
    event = {"event": "status", "node": "gain", "status": "Ready"}
    with caplog.at_level(logging.WARNING, logger="nodehost.discovery"):
        registry.notify(event)
        registry.notify({"event": "session_end", "ok": True})
    assert [e["event"] for e in first.events] == ["status", "session_end"]
    assert [e["event"] for e in last.events] == ["status", "session_end"]
    assert "seen_by" not in event
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["plugin Exploder-1: nodehost_session_event failed: RuntimeError: "
                        "exporter is down"] * 2


def test_notify_without_listeners_is_a_no_op() -> None:
    discover(plugins=[ManifestsPlugin([])], entry_points=False).notify({"event": "x"})


def test_manifest_items_of_every_kind(tmp_path: Path) -> None:
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text(yaml.safe_dump(tone("FromYamlPath")))
    json_file = tmp_path / "b.json"
    json_file.write_text(json.dumps(tone("FromJsonStr")))
    items = [yaml_file, str(json_file), tone("FromDict"),
             NodeManifest.model_validate(tone("FromObject"))]
    registry = discover(plugins=[ManifestsPlugin(items)], entry_points=False)
    assert registry.failures == []
    sources = {name: t.source for name, t in registry.node_types.items()}
    assert sources == {"FromYamlPath": str(yaml_file), "FromJsonStr": str(json_file),
                       "FromDict": "<dict>", "FromObject": "<object>"}


@pytest.mark.parametrize(("item", "reason"), [
    (lambda d: d / "missing.yaml", "invalid manifest {d}/missing.yaml: FileNotFoundError"),
    (lambda d: _write(d / "list.yaml", "- 1\n"),
     "invalid manifest {d}/list.yaml: ValueError: {d}/list.yaml does not hold a mapping"),
    (lambda d: _write(d / "bad.yaml", "node_type: [\n"),
     "invalid manifest {d}/bad.yaml: ParserError"),
    (lambda d: _write(d / "bad.json", "{"), "invalid manifest {d}/bad.json: JSONDecodeError"),
    (lambda d: _write(d / "invalid.yaml", yaml.safe_dump(tone(version="x"))),
     "invalid manifest {d}/invalid.yaml: version: 'x' is not a semantic version"),
    (lambda d: b"bytes", "invalid manifest #0: TypeError: expected a NodeManifest, a dict or "
                         "a manifest path, got bytes"),
])
def test_unusable_manifest_items(tmp_path: Path, item: Any, reason: str) -> None:
    registry = discover(plugins=[ManifestsPlugin([item(tmp_path), tone()])], entry_points=False)
    (failure,) = registry.failures
    assert failure.plugin == "ManifestsPlugin-0"
    assert failure.reason.startswith(reason.format(d=tmp_path)), failure.reason
    assert list(registry.node_types) == ["Tone"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("items", "reason"), [
    ("Tone.yaml", "must return a list, got str"),
    ({"node_type": "Tone"}, "must return a list, got dict"),
    (42, "must return a list, got int"),
])
def test_hook_must_return_a_list(items: Any, reason: str) -> None:
    registry = discover(plugins=[ManifestsPlugin(items)], entry_points=False)
    (failure,) = registry.failures
    assert failure.reason == f"nodehost_node_manifests() {reason}"


def test_hook_returning_none_or_a_tuple_is_accepted() -> None:
    registry = discover(plugins=[ManifestsPlugin(None), ManifestsPlugin((tone(),))],
                        entry_points=False)
    assert registry.failures == [] and list(registry.node_types) == ["Tone"]


def test_a_raising_hook_is_reported() -> None:
    class Raises:
        @nodehost.hookimpl
        def nodehost_node_manifests(self) -> list[Any]:
            raise KeyError("boom")

    registry = discover(plugins=[Raises(), ManifestsPlugin([tone()])], entry_points=False)
    assert [str(f) for f in registry.failures] == [
        "Raises-0: nodehost_node_manifests() failed: KeyError: 'boom'"
    ]
    assert list(registry.node_types) == ["Tone"]


def test_duplicate_type_within_one_plugin() -> None:
    registry = discover(plugins=[ManifestsPlugin([tone(), tone()])], entry_points=False)
    assert [f.reason for f in registry.failures] == [
        "node type 'Tone' is already provided by ManifestsPlugin-0; ignored"
    ]


def test_the_same_plugin_object_twice_is_reported_not_fatal() -> None:
    plugin = ManifestsPlugin([tone()])
    registry = discover(plugins=[plugin, plugin], entry_points=False)
    assert list(registry.node_types) == ["Tone"]
    (failure,) = registry.failures
    assert failure.reason.startswith("invalid plugin: Plugin already registered under a "
                                      "different name: ManifestsPlugin-1=")


def test_get_unknown_type_suggests_close_names() -> None:
    registry = discover(plugins=[ManifestsPlugin([tone()])], entry_points=False)
    assert registry.get("Tone").name == "Tone"
    with pytest.raises(DiscoveryError, match=r"unknown node type 'Tnoe' \(did you mean 'Tone'\?\)"):
        registry.get("Tnoe")
    with pytest.raises(DiscoveryError, match="unknown node type 'Xyz'; `nodehost nodes`"):
        registry.get("Xyz")


@pytest.mark.parametrize(("raw", "expected"), [
    (None, HOOK_TIMEOUT_S), ("", HOOK_TIMEOUT_S), ("2.5", 2.5), ("abc", HOOK_TIMEOUT_S),
    ("0", HOOK_TIMEOUT_S), ("-1", HOOK_TIMEOUT_S),
])
def test_hook_timeout_from_environment(monkeypatch: pytest.MonkeyPatch, raw: str | None,
                                       expected: float) -> None:
    if raw is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, raw)
    assert hook_timeout() == expected


def test_autoload_env_skips_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEHOST_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = discover(plugins=[ManifestsPlugin([tone()])])
    assert list(registry.node_types) == ["Tone"] and registry.failures == []
