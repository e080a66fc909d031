"""A hook implementation whose argument name does not match the spec (event)."""

from typing import Any

import nodehost


@nodehost.hookimpl
def nodehost_session_event(evt: dict[str, Any]) -> None:
    pass


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Any]:
    return []
