"""VibeVoiceTTS on a tiny random checkpoint, in the node's own environment (torch 2.13 CPU,
transformers 5, diffusers: ~1.3 GB, ~35 s to build).

Runs only with NODEHOST_MODEL_TESTS=1 (the tox ``models`` env sets it); the manifest checks
always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from nodehost.discovery import discover

HERE = Path(__file__).resolve().parent
MODEL_TESTS = os.environ.get("NODEHOST_MODEL_TESTS") == "1"


def node_type():  # type: ignore[no-untyped-def]
    return discover().get("VibeVoiceTTS")


def test_manifest_declares_its_runtime() -> None:
    manifest = node_type().manifest
    assert manifest.runtime is not None
    assert manifest.runtime.python == "3.11"
    assert "torch==2.13.0" in manifest.runtime.requirements
    assert manifest.outputs["out"].sample_rate == [24000]
    assert manifest.inputs["in"].data_type.value == "text"


@pytest.fixture(scope="module")
def env_python() -> str:
    if not MODEL_TESTS:
        pytest.skip("model tests run with NODEHOST_MODEL_TESTS=1 (tox -e models)")
    from nodehost.envs import env_for_node_type

    started = time.monotonic()
    python = env_for_node_type(node_type())
    print(f"\nVibeVoiceTTS env: {python} in {time.monotonic() - started:.1f} s")
    assert python is not None
    started = time.monotonic()
    assert env_for_node_type(node_type()) == python
    print(f"VibeVoiceTTS env reuse: {time.monotonic() - started:.3f} s")
    return python


def test_tiny_checkpoint_streams_audio(env_python: str, tmp_path: Path) -> None:
    proc = subprocess.run([env_python, str(HERE / "vibevoice_inprocess.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["runs"]) == {"plain", "voice"}
    for label, run in result["runs"].items():
        print(f"{label}: first chunk {run['first_chunk_s'] * 1000:.0f} ms, {run['chunks']} "
              f"chunks, {run['samples'] / 24000:.2f} s of audio in {run['seconds']:.2f} s")
        assert run["backend"] == "transformers"
        assert run["rates"] == [24000]
        assert run["finite"]
        # Two utterances ("Hello there." and, at end of stream, "How are"), each streamed in
        # chunks of chunk_frames=2 frames (6400 samples) while generated.
        assert run["chunks"] >= 4
        assert all(size == 6400 for size in run["chunk_sizes"][:-1])
        # Nothing was spoken before a sentence was complete.
        assert run["chunks_after_each_piece"][:2] == [0, 0]
