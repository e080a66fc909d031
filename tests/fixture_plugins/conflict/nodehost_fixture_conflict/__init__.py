"""Claims FixtureGain, which nodehost-fixture-good provides, and one type of its own."""

from typing import Any

import nodehost


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Any]:
    return [
        {"node_type": "FixtureGain", "version": "9.9.9",
         "entrypoint": "nodehost_fixture_conflict.nodes:Gain",
         "inputs": {"in": {"data_type": "audio"}}, "outputs": {"out": {"data_type": "audio"}}},
        {"node_type": "FixtureConflictOwn", "version": "1.0.0",
         "entrypoint": "nodehost_fixture_conflict.nodes:Own",
         "inputs": {"in": {"data_type": "text"}}},
    ]
