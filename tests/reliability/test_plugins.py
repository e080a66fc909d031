"""Malicious or broken plugins next to good ones: discovery survives and reports each, and
the host still runs sessions.

The broken distributions are the fixture projects of tests/fixture_plugins, pip-installed for
real by tests/fixture_dists.py (shared with tests/test_discovery.py, which checks each
failure's wording); here they are all installed at once *beside* the environment's own
plugins, and a real session runs in that host. In-process plugin objects add what the
fixtures do not: hooks that raise or hang while sessions run, and a plugin claiming a node
type that another installed plugin provides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fixture_dists import FIXTURE_PLUGINS, Installed, installed

import nodehost

from .conftest import Tracker
from .support import finish, probe_pipeline, record

__all__ = ["installed"]  # the session fixture of fixture_dists, used by name

PROJECTS = sorted(p.name for p in FIXTURE_PLUGINS.iterdir() if (p / "pyproject.toml").exists())
BROKEN = {  # distribution → the start of its reason (the full wording: test_discovery.py)
    "nodehost-fixture-broken-import": "import of 'nodehost_fixture_broken_import.plugin' failed",
    "nodehost-fixture-bad-hook": "invalid plugin: PluginValidationError",
    "nodehost-fixture-unknown-hook": "implements unknown hook(s) nodehost_frobnicate",
    "nodehost-fixture-bad-manifest": "invalid manifest #0 (FixtureBroken)",
    "nodehost-fixture-garbage": "",
    "nodehost-fixture-hangs": "nodehost_node_manifests() failed: HookTimeout",
}
# nodehost-fixture-good and -conflict both claim FixtureGain: the one loaded second reports it.
CLAIMANTS = {"nodehost-fixture-good", "nodehost-fixture-conflict"}

HOST_SCRIPT = r"""
import json, sys, nodehost
host = nodehost.Host()
result = host.run(json.loads(sys.argv[1]), timeout=120)
print(json.dumps({
    "ok": result.ok, "reason": result.reason,
    "types": sorted(host.registry.node_types),
    "failures": [[f.plugin, f.reason] for f in host.registry.failures],
}))
"""


def test_session_runs_with_every_broken_plugin_installed(installed: Installed,
                                                         tmp_path: Path) -> None:
    env = installed.env(*PROJECTS, NODEHOST_HOOK_TIMEOUT_S="2")
    env.pop("NODEHOST_DISABLE_PLUGINS", None)  # the environment's good plugins load too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env["PYTHONPATH"],
                                                      os.environ.get("PYTHONPATH")]))
    out = tmp_path / "summary.json"
    config = probe_pipeline(out, name="with-broken-plugins", count=300, seed=9)
    proc = subprocess.run([sys.executable, "-c", HOST_SCRIPT, json.dumps(config)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    reasons: dict[str, list[str]] = {}
    for plugin, reason in data["failures"]:
        reasons.setdefault(plugin, []).append(reason)
    for dist, start in BROKEN.items():
        assert dist in reasons, f"{dist} not reported: {data['failures']}"
        assert any(r.startswith(start) for r in reasons[dist]), (dist, reasons[dist])
    claims = [(d, r) for d in CLAIMANTS for r in reasons.get(d, [])
              if r.startswith("node type 'FixtureGain' is already provided by")]
    assert len(claims) == 1, reasons
    types = set(data["types"])
    assert {"ProbeSource", "Forward", "ProbeSink", "FixtureGain", "FixtureTone",
            "FixtureStillFine", "FixtureGarbageSurvivor", "FixtureConflictOwn"} <= types
    assert data["ok"], data["reason"]
    summary = json.loads(out.read_text())
    assert (summary["count"], summary["in_order"], summary["intact"], summary["seeds"]) == \
        (300, True, True, {"9": 300})
    record("plugins", fixture_distributions=len(PROJECTS),
           broken_reported=f"{sum(d in reasons for d in BROKEN)}/{len(BROKEN)}",
           session_with_broken_plugins="ok, 300/300 intact")


# ------------------------------------------------------------------------------ in-process

def tone(node_type: str) -> dict[str, Any]:
    return {"node_type": node_type, "version": "1.0.0", "entrypoint": "nowhere.nodes:Nothing",
            "outputs": {"out": {"data_type": "tensor"}}}


class RaisesOnManifests:
    @nodehost.hookimpl
    def nodehost_node_manifests(self) -> list[Any]:
        raise RuntimeError("plugin is broken")


class HangsOnManifests:
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    @nodehost.hookimpl
    def nodehost_node_manifests(self) -> list[Any]:
        self.release.wait()
        return []


class Garbage:
    @nodehost.hookimpl
    def nodehost_node_manifests(self) -> list[Any]:
        return [None, 3.5, b"bytes", {"node_type": 7}, ["x"], "/no/such/manifest.yaml",
                tone("GarbageSurvivor")]


class ClaimsProbeSource:
    """Claims a node type another installed plugin (nodehost-testnodes) provides."""

    @nodehost.hookimpl
    def nodehost_node_manifests(self) -> list[Any]:
        return [tone("ProbeSource"), tone("ClaimerOwn")]


class RaisesOnEvents:
    def __init__(self) -> None:
        self.calls = 0

    @nodehost.hookimpl
    def nodehost_session_event(self, event: dict[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError("exporter is down")


class HangsOnEvents:
    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.calls = 0

    @nodehost.hookimpl
    def nodehost_session_event(self, event: dict[str, Any]) -> None:
        self.calls += 1
        self.release.wait()  # an exporter stuck on a dead network peer


class Records:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @nodehost.hookimpl
    def nodehost_session_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def test_plugins_that_raise_hang_or_claim_others_types(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_out: Path) -> None:
    monkeypatch.setenv("NODEHOST_HOOK_TIMEOUT_S", "1")
    release = threading.Event()
    raising, hanging, recorder = RaisesOnEvents(), HangsOnEvents(release), Records()
    tracker = Tracker(plugins=(RaisesOnManifests(), HangsOnManifests(release), Garbage(),
                               ClaimsProbeSource(), raising, hanging, recorder))
    try:
        registry = tracker.host.registry
        reasons = {f.plugin: [] for f in registry.failures}
        for f in registry.failures:
            reasons[f.plugin].append(f.reason)
        assert reasons["RaisesOnManifests-0"] == [
            "nodehost_node_manifests() failed: RuntimeError: plugin is broken"]
        assert reasons["HangsOnManifests-1"][0].startswith(
            "nodehost_node_manifests() failed: HookTimeout")
        assert len(reasons["Garbage-2"]) == 6
        assert reasons["ClaimsProbeSource-3"] == [
            "node type 'ProbeSource' is already provided by nodehost-testnodes; ignored"]
        assert {"GarbageSurvivor", "ClaimerOwn"} <= set(registry.node_types)
        assert registry.node_types["ProbeSource"].plugin == "nodehost-testnodes"

        # Two sessions through a host whose event hooks raise and hang.
        outs = [tmp_out / f"s{i}.json" for i in range(2)]
        sessions = [tracker.host.start_session(probe_pipeline(out, name="plugin-chaos",
                                                              count=200, seed=i))
                    for i, out in enumerate(outs)]
        outcomes = [finish(s, timeout=120) for s in sessions]
        for i, (out, outcome) in enumerate(zip(outs, outcomes, strict=True)):
            assert outcome.result.ok, outcome.result.reason
            summary = json.loads(out.read_text())
            assert (summary["count"], summary["intact"], summary["seeds"]) == \
                (200, True, {str(i): 200})
        ends = [e for e in recorder.events if e["event"] == "session_end"]
        assert len(ends) == 2, "a well-behaved plugin must still see every session end"
        assert raising.calls == len(recorder.events)
        # Once stuck, a plugin gets no more events; sessions notifying at the moment it hung
        # may each have called it once (each waited EVENT_HOOK_TIMEOUT_S for it).
        assert 1 <= hanging.calls <= len(sessions), hanging.calls
    finally:
        release.set()
        left = tracker.close()
    assert left.total == 0, f"left behind: {left}"
    record("plugins", in_process_misbehaving_plugins=6,
           sessions_with_raising_and_hanging_event_hooks="2/2 ok")
