"""The plugin module: hands manifests to the host and imports no node code."""

from importlib.resources import files
from typing import Any

import nodehost

TONE_SOURCE = {
    "node_type": "FixtureTone",
    "version": "0.3.0",
    "description": "A sine tone",
    "entrypoint": "nodehost_fixture_good.nodes:Tone",
    "outputs": {"out": {"data_type": "audio", "sample_rate": 16000, "channels": 1}},
    "params": {"frequency": {"type": "number", "default": 440.0, "minimum": 1.0}},
}


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Any]:
    return [files("nodehost_fixture_good") / "manifests" / "fixture_gain.yaml", TONE_SOURCE]
