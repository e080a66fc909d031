"""The hooks a nodehost plugin may implement. This file is the whole plugin API."""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "nodehost"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def nodehost_node_manifests() -> list[Any]:  # type: ignore[empty-body]
    """Return the node types this plugin provides.

    Each item is a ``NodeManifest``, a dict, or a path (``str``, ``Path`` or an
    ``importlib.resources`` traversable) to a YAML or JSON manifest file.
    """


@hookspec
def nodehost_session_event(event: dict[str, Any]) -> None:
    """Observe one session event (status, progress, session_end) in the host process.

    An exception raised here is logged and never breaks the host or the session.
    """


@hookspec(firstresult=True)
def nodehost_metrics_exporter(port: int) -> Any:
    """Start serving this host's metrics over HTTP on 127.0.0.1:``port`` (``nodehost run
    --metrics-port``). Return an object with a ``close()`` method that stops it, or None when
    this plugin exports no metrics. The first plugin that returns an exporter wins.
    """
