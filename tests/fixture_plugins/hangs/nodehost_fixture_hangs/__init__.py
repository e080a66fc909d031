"""A plugin whose hook never returns."""

import time
from typing import Any

import nodehost


@nodehost.hookimpl
def nodehost_node_manifests() -> list[Any]:
    while True:
        time.sleep(3600)
