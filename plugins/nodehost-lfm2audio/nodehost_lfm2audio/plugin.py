"""The nodehost plugin of nodehost-lfm2audio: it only points the host at the manifests.

Node code is never imported here: the host reads manifests, and each node's entrypoint is
imported only inside that node's own sandboxed process.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable

import nodehost


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Traversable]:
    return nodehost.manifests_in(__package__)
