from importlib.resources import files
from typing import Any

import nodehost


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Any]:
    folder = files("nodehost_fixture_catalog") / "manifests"
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
