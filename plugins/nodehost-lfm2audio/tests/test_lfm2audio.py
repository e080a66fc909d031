"""LFM2Audio on a tiny random checkpoint, in the node's own Python 3.12 environment.

The environment (liquid-audio, torch 2.11: ~5.6 GB, ~1.5 min to build) is built by
nodehost.envs exactly as a session builds it, so these tests run only when asked:
NODEHOST_MODEL_TESTS=1 (the tox ``models`` env sets it). The manifest checks always run.
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
    return discover().get("LFM2Audio")


def test_manifest_declares_its_python_312_runtime() -> None:
    manifest = node_type().manifest
    assert manifest.runtime is not None
    assert manifest.runtime.python == "3.12"
    assert any(r.startswith("liquid-audio==") for r in manifest.runtime.requirements)
    assert set(manifest.outputs) == {"text", "audio"}
    assert manifest.outputs["audio"].sample_rate == [24000]
    assert manifest.inputs["in"].sample_rate == [16000]


@pytest.fixture(scope="module")
def env_python() -> str:
    if not MODEL_TESTS:
        pytest.skip("model tests run with NODEHOST_MODEL_TESTS=1 (tox -e models)")
    from nodehost.envs import env_for_node_type

    messages: list[str] = []
    started = time.monotonic()
    python = env_for_node_type(node_type(), lambda f, m: messages.append(m))
    print(f"\nLFM2Audio env: {python} in {time.monotonic() - started:.1f} s "
          f"({len(messages)} progress messages)")
    assert python is not None
    started = time.monotonic()
    assert env_for_node_type(node_type()) == python
    print(f"LFM2Audio env reuse: {time.monotonic() - started:.3f} s")
    return python


def test_tiny_checkpoint_streams_text_and_audio(env_python: str, tmp_path: Path) -> None:
    proc = subprocess.run([env_python, str(HERE / "lfm2_inprocess.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for turn in result["turns"]:
        print(f"turn {turn['turn']}: first text {turn['first_text_s'] * 1000:.0f} ms, first "
              f"audio {turn['first_audio_s'] * 1000:.0f} ms, {turn['audio_chunks']} chunks, "
              f"{turn['seconds']:.2f} s")
        assert turn["audio_rates"] == [24000]
        assert turn["audio_chunks"] >= 2  # streamed, not one block at the end
        assert turn["audio_samples"] > 0 and turn["audio_samples"] % 1920 == 0
        assert turn["audio_finite"]
        assert turn["text_pieces"] >= 2 and turn["text"].endswith("\n")
        assert turn["first_audio_s"] < turn["seconds"]
    # Conversation state: the second turn saw the first.
    assert [t["history"] for t in result["turns"]] == [1, 2]
