"""One invalid manifest (bad version, bad entrypoint) next to a valid one."""

from typing import Any

import nodehost

BROKEN = {
    "node_type": "FixtureBroken",
    "version": "one",
    "entrypoint": "not an entrypoint",
}
VALID = {
    "node_type": "FixtureStillFine",
    "version": "1.0.0",
    "entrypoint": "nodehost_fixture_bad_manifest.nodes:StillFine",
    "inputs": {"in": {"data_type": "text"}},
}


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Any]:
    return [BROKEN, VALID]
