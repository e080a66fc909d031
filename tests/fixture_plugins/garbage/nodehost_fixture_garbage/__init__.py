"""Two entry points whose hooks return things that are not manifests."""

from typing import Any

import nodehost


class NotAList:
    @staticmethod
    @nodehost.hookimpl
    def nodehost_node_manifests() -> Any:
        return 42


class IntItem:
    @staticmethod
    @nodehost.hookimpl
    def nodehost_node_manifests() -> list[Any]:
        return [
            7,
            {"node_type": "FixtureGarbageSurvivor", "version": "1.0.0",
             "entrypoint": "nodehost_fixture_garbage.nodes:Survivor",
             "inputs": {"in": {"data_type": "tensor"}}},
        ]
