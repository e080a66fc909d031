"""Test helpers: build nodes in-process from their real manifests, feed them, collect output.

A uniquely named module (not conftest.py) so that both plugins' test folders can run in one
pytest session without their helpers shadowing each other.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import numpy as np
import pytest
import yaml


def _install_runtime_data_stand_in() -> None:
    """Until the data plane (nodehost.data) lands, a minimal RuntimeData with the design
    contract's surface, so these node tests can run; the real one wins whenever it exists."""
    try:
        importlib.import_module("nodehost.data")
        return
    except ImportError:
        pass

    @dataclass(frozen=True)
    class Metadata:
        sample_rate: int | None = None
        channels: int | None = None
        language: str | None = None

    @dataclass
    class RuntimeData:
        data_type: str
        metadata: Metadata
        _payload: Any = field(repr=False)

        @classmethod
        def audio(cls, samples: Any, sample_rate: int, channels: int = 1) -> RuntimeData:
            array = np.array(samples, copy=True)  # the real one copies into shared memory
            array.flags.writeable = False
            return cls("audio", Metadata(sample_rate=sample_rate, channels=channels), array)

        @classmethod
        def text(cls, text: str, language: str | None = None) -> RuntimeData:
            return cls("text", Metadata(language=language), text)

        def as_array(self) -> np.ndarray:
            return self._payload  # type: ignore[no-any-return]

        def as_text(self) -> str:
            return str(self._payload)

    module = types.ModuleType("nodehost.data")
    module.RuntimeData = RuntimeData  # type: ignore[attr-defined]
    sys.modules["nodehost.data"] = module


_install_runtime_data_stand_in()

import nodehost  # noqa: E402
from nodehost.manifest import NodeManifest  # noqa: E402


def load_manifest(package: str, node_type: str) -> NodeManifest:
    for path in (files(package) / "manifests").iterdir():
        if path.name.endswith(".yaml"):
            manifest = NodeManifest.model_validate(yaml.safe_load(path.read_text()))
            if manifest.node_type == node_type:
                return manifest
    raise LookupError(node_type)


def as_list(result: Any) -> list[Any]:
    """Normalize what process()/end_of_stream() return, as the runner does."""
    if result is None:
        return []
    if isinstance(result, nodehost.RuntimeData):
        return [result]
    return list(result)


class Harness:
    """One node built the way the runner builds it: params validated against its manifest."""

    def __init__(self, package: str, node_type: str, **params: Any) -> None:
        self.manifest = load_manifest(package, node_type)
        module_name, class_name = self.manifest.entrypoint.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        self.emitted: list[tuple[str, Any]] = []
        self.progress: list[tuple[float, str]] = []
        self.node = cls(self.manifest.params_model(**params), node_id=node_type.lower(),
                        emit=lambda port, data: self.emitted.append((port, data)),
                        progress=lambda f, m: self.progress.append((f, m)))
        self.node.initialize()

    def feed(self, items: Iterable[Any], port: str = "in") -> list[Any]:
        out: list[Any] = []
        for item in items:
            out += as_list(self.node.process(item, port))
        out += as_list(self.node.end_of_stream(port))
        self.node.cleanup()
        return out + [data for _port, data in self.emitted]

    def generate(self) -> list[Any]:
        out = list(self.node.generate())
        self.node.cleanup()
        return out


def sine(freq: float, seconds: float, rate: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def chunks(samples: np.ndarray, size: int, rate: int) -> list[Any]:
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    return [nodehost.RuntimeData.audio(samples[i:i + size], sample_rate=rate, channels=channels)
            for i in range(0, len(samples), size)]


def joined(items: list[Any]) -> np.ndarray:
    """All samples of audio messages as one ``(frames, channels)`` array."""
    if not items:
        return np.zeros((0, 1), np.float32)
    return np.concatenate([np.asarray(d.as_array()).reshape(-1, d.metadata.channels or 1)
                           for d in items])


@pytest.fixture
def make() -> Callable[..., Harness]:
    """``make("Gain", gain=2.0)``: an initialized nodehost-speech node with a harness."""
    return lambda node_type, **params: Harness("nodehost_speech", node_type, **params)


def to_16k(data: Any) -> np.ndarray:
    """Piper's 22050 Hz output as the 16 kHz mono a VAD and Whisper take (one-shot soxr)."""
    import soxr

    samples = np.asarray(data.as_array(), np.float32).reshape(-1)
    return soxr.resample(samples, data.metadata.sample_rate, 16000).astype(np.float32)


def keywords_heard(text: str, words: Iterable[str]) -> set[str]:
    spoken = {w.strip(".,!?;:\"'").lower() for w in text.split()}
    return {w for w in words if w in spoken}
