"""manifests/lfm2_vibevoice.yaml end to end on tiny random checkpoints, in real node processes:
WavSource → Resample → SileroVAD → AudioBuffer → LFM2Audio (Python 3.12 env) → VibeVoiceTTS
(torch 2.13 env) → WavSink, plus LFM2Audio's own voice to a second WavSink.

Each checkpoint is built by its plugin's own builder (``python -m nodehost_lfm2audio.tiny``,
``python -m nodehost_vibevoice.tiny``) run with that node's environment, as a session spawns
it, into ``models/`` next to a copy of the shipped config — so the config's own relative
``checkpoint`` paths and read grants find them; only the source file, the output paths and the
generation lengths are changed. Only with NODEHOST_MODEL_TESTS=1.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import yaml

from nodehost.testing import run

PIPELINE = Path(__file__).resolve().parents[3] / "manifests" / "lfm2_vibevoice.yaml"
pytestmark = [
    pytest.mark.skipif(os.environ.get("NODEHOST_MODEL_TESTS") != "1",
                       reason="model tests run with NODEHOST_MODEL_TESTS=1 (tox -e models)"),
    pytest.mark.skipif(not PIPELINE.exists(), reason="runs inside the nodehost repository"),
]


def build_tiny(node_type: str, module: str, folder: Path) -> Path:
    from nodehost.discovery import discover
    from nodehost.envs import env_for_node_type

    python = env_for_node_type(discover().get(node_type))
    assert python is not None, f"{node_type} declares its own runtime"
    proc = subprocess.run([python, "-m", module, str(folder)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (folder / "config.json").is_file()
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a copy of the pipeline and tiny checkpoints where its paths point."""
    folder = tmp_path_factory.mktemp("lfm2_vibevoice")
    folder.chmod(0o755)
    config: dict[str, Any] = yaml.safe_load(PIPELINE.read_text())
    builders = {"LFM2Audio": "nodehost_lfm2audio.tiny", "VibeVoiceTTS": "nodehost_vibevoice.tiny"}
    for node in config["nodes"]:
        params, grants = node.setdefault("params", {}), node.setdefault("sandbox", {})
        if node["type"] == "WavSource":
            params["path"] = str(PIPELINE.parent / params["path"])
            grants["fs_read"] = [params["path"]]
        elif node["type"] in builders:
            # Relative, as shipped: resolved against the copied config's folder.
            assert not params["checkpoint"].startswith("/")
            assert grants["fs_read"] == [params["checkpoint"]]
            build_tiny(node["type"], builders[node["type"]], folder / params["checkpoint"])
            # Random weights never stop on their own: bound the reply, keep the test short.
            params["max_new_tokens"] = 48 if node["type"] == "LFM2Audio" else 16
            # Seeded sampling: with random weights some draws are degenerate (LFM2 samples
            # audio codes out of range, or its text has no letter for VibeVoice to speak).
            # Seed 6 gives a reply with words on this tiny checkpoint (seeds 0-5 did not);
            # fixed, the run repeats exactly instead of passing by luck.
            params["seed"] = 6
            if node["type"] == "VibeVoiceTTS":
                # Tiny random weights in bfloat16 round their tied logits apart and may stop at
                # once; the real checkpoints are trained in bfloat16 (the config's choice).
                params["dtype"] = "float32"
        elif node["type"] == "WavSink":
            params["path"] = f"{node['id']}.wav"
            grants["fs_write"] = [params["path"]]
    (folder / "lfm2_vibevoice.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def test_lfm2_vibevoice_pipeline_runs_on_tiny_checkpoints(host: Any, folder: Path) -> None:
    config = yaml.safe_load((folder / "lfm2_vibevoice.yaml").read_text())
    done = run(host, folder / "lfm2_vibevoice.yaml", timeout=900)
    done.assert_ok()
    assert set(done.pids()) == {n["id"] for n in config["nodes"]}
    # LFM2Audio streamed text (to VibeVoice) and its own audio; VibeVoice spoke the text.
    assert done.stats("lfm2")["sent"] >= 2
    assert done.stats("tts")["received"] >= 1
    for sink_id in ("speaker", "lfm2_voice"):
        info = sf.info(str(folder / f"{sink_id}.wav"))
        assert info.samplerate == 24000 and info.frames > 0, (sink_id, info)
    assert done.stats("speaker")["received"] >= 2  # streamed in chunks, not one block
    peaks = {}
    for e in done.events:
        if e["event"] == "status" and e.get("memory_usage"):
            peaks[e["node"]] = max(peaks.get(e["node"], 0), e["memory_usage"])
    print("\npeak RSS: " + ", ".join(f"{n} {v / 2**20:.0f} MiB" for n, v in peaks.items()))
    for line in done.logs("lfm2") + done.logs("tts"):
        print(line)
