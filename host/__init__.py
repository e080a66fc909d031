"""nodehost: run pipelines of Python nodes, each in its own sandboxed process, linked by
zero-copy iceoryx2 shared memory.

Names are imported lazily so that ``nodehost nodes`` and plugin discovery stay fast and never
pull in numpy or iceoryx2 unless they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "hookimpl": "nodehost.hookspecs",
    "Node": "nodehost.node",
    "RuntimeData": "nodehost.data",
    "NodeManifest": "nodehost.manifest",
    "PipelineConfig": "nodehost.config",
    "NodeConfig": "nodehost.config",
    "Connection": "nodehost.config",
    "ProcessStatus": "nodehost.lifecycle",
    "Host": "nodehost.session",
    "Session": "nodehost.session",
    "SessionResult": "nodehost.session",
    "manifests_in": "nodehost.discovery",
    "SessionEnded": "nodehost.errors",
    "SessionFailed": "nodehost.errors",
    "SendTimeout": "nodehost.errors",
}

__all__ = [
    "Connection", "Host", "Node", "NodeConfig", "NodeManifest", "PipelineConfig",
    "ProcessStatus", "RuntimeData", "SendTimeout", "Session", "SessionEnded", "SessionFailed",
    "SessionResult", "__version__", "hookimpl", "manifests_in",
]

if TYPE_CHECKING:
    from nodehost.config import Connection, NodeConfig, PipelineConfig
    from nodehost.data import RuntimeData
    from nodehost.discovery import manifests_in
    from nodehost.errors import SendTimeout, SessionEnded, SessionFailed
    from nodehost.hookspecs import hookimpl
    from nodehost.lifecycle import ProcessStatus
    from nodehost.manifest import NodeManifest
    from nodehost.node import Node
    from nodehost.session import Host, Session, SessionResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nodehost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
