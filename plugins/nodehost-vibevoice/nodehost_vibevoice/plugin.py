"""The nodehost plugin of nodehost-vibevoice: it only points the host at the manifests.

Node code (torch, transformers) is never imported here: the host reads manifests, and the
node's entrypoint is imported only inside its own process, in its own Python environment.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

import nodehost


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Traversable]:
    folder = files("nodehost_vibevoice") / "manifests"
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
