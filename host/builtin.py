"""nodehost's own plugin: the bundled text nodes (``TextSource``, ``TextSink``, ``JsonlSink``).

Registered through nodehost's own ``nodehost`` entry point like any plugin, and like any
plugin module it only returns manifests: the nodes' code (``nodehost.textnodes``) is
imported only inside their own processes.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable

from nodehost.discovery import manifests_in
from nodehost.hookspecs import hookimpl


@hookimpl
def nodehost_node_manifests() -> list[Traversable]:
    return manifests_in(__package__)
