"""``Node[Model]``: ``self.params`` is the node's own typed model, checked against its manifest."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import nodehost
from nodehost.manifest import NodeManifest
from nodehost.node import declared_params_model
from nodehost.testing import NodeHarness

MANIFEST = NodeManifest.model_validate({
    "node_type": "Scale", "version": "1.0.0", "entrypoint": "x:Scale",
    "inputs": {"in": {"data_type": "text"}},
    "params": {"factor": {"type": "number", "default": 2.0}, "label": {"type": "string"}},
})


class ScaleParams(BaseModel):
    factor: float = 1.0
    label: str | None = None


class Scale(nodehost.Node[ScaleParams]):
    pass


class Sub(Scale):
    pass


class Untyped(nodehost.Node):
    pass


def test_params_become_the_declared_model_with_the_manifest_values() -> None:
    params = MANIFEST.params_model(label="x")
    for cls in (Scale, Sub):
        node = cls(params)
        assert type(node.params) is ScaleParams
        assert node.params.factor == 2.0 and node.params.label == "x"  # the manifest's default
    assert declared_params_model(Sub) is ScaleParams


def test_a_plain_node_keeps_the_manifest_model() -> None:
    params = MANIFEST.params_model()
    assert Untyped(params).params is params
    assert declared_params_model(Untyped) is None


def test_class_and_manifest_that_disagree_fail_at_once() -> None:
    class Other(BaseModel):
        factor: float = 1.0
        gain: float = 1.0

    class Wrong(nodehost.Node[Other]):
        pass

    with pytest.raises(TypeError, match=r"only in the class: \['gain'\], only in the "
                                        r"manifest: \['label'\]"):
        Wrong(MANIFEST.params_model())


def test_bundled_nodes_get_their_typed_params() -> None:
    from nodehost_audio.gain import GainParams

    gain = NodeHarness("Gain", gain=0.5)
    assert type(gain.node.params) is GainParams and gain.node.params.gain == 0.5
    from nodehost.textnodes import TextSourceParams

    source = NodeHarness("TextSource", text="a\nb")
    assert type(source.node.params) is TextSourceParams
    assert [d.as_text() for d in source.generate()] == ["a", "b"]


def test_every_installed_node_class_matches_its_manifest() -> None:
    import importlib

    from nodehost.discovery import discover

    checked = 0
    for node_type in discover().node_types.values():
        module, _, name = node_type.manifest.entrypoint.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:  # a node whose libraries live only in its own environment
            continue
        model = declared_params_model(cls)
        if model is not None:
            assert set(model.model_fields) == set(node_type.manifest.params), node_type.name
            checked += 1
    assert checked >= 15, checked
