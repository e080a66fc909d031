"""Runs inside the LFM2Audio node's own environment (Python 3.12, liquid-audio): builds a tiny
random checkpoint with liquid-audio's classes, constructs the node from its real manifest the
way the runner does, feeds it two utterances and prints what came out as one JSON line.

    <env python> lfm2_inprocess.py WORKDIR
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml


def _runtime_data() -> None:
    """The data plane's RuntimeData when it exists; else the audio plugin tests' stand-in."""
    try:
        importlib.import_module("nodehost.data")
    except ImportError:
        here = Path(__file__).resolve()
        sys.path.insert(0, str(here.parents[2] / "nodehost-audio" / "tests"))
        importlib.import_module("audio_harness")


def main(workdir: str) -> None:
    _runtime_data()
    from nodehost_lfm2audio import tiny

    import nodehost
    from nodehost.manifest import NodeManifest

    started = time.monotonic()
    checkpoint = tiny.build(Path(workdir) / "lfm2-audio-tiny")
    build_s = time.monotonic() - started
    manifest_file = files("nodehost_lfm2audio") / "manifests" / "lfm2_audio.yaml"
    manifest = NodeManifest.model_validate(yaml.safe_load(manifest_file.read_text()))
    cls = getattr(importlib.import_module(manifest.entrypoint.split(":")[0]),
                  manifest.entrypoint.split(":")[1])
    params = manifest.params_model(checkpoint=str(checkpoint), max_new_tokens=60, seed=0,
                                   chunk_frames=4, history_turns=2)
    out: list[tuple[str, float, object]] = []
    t0 = [0.0]

    def emit(port: str, data: object) -> None:
        out.append((port, time.monotonic() - t0[0], data))

    node = cls(params, node_id="lfm2", emit=emit, progress=lambda f, m: None)
    started = time.monotonic()
    node.initialize()
    load_s = time.monotonic() - started
    rate = 16_000
    t = np.arange(rate) / rate
    utterance = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    turns = []
    for i in range(2):
        out.clear()
        t0[0] = time.monotonic()
        assert node.process(nodehost.RuntimeData.audio(utterance, sample_rate=rate), "in") is None
        total = time.monotonic() - t0[0]
        audio = [(ts, d) for port, ts, d in out if port == "audio"]
        text = [(ts, d) for port, ts, d in out if port == "text"]
        turns.append({
            "turn": i,
            "seconds": total,
            "audio_chunks": len(audio),
            "audio_samples": int(sum(np.asarray(d.as_array()).size for _, d in audio)),
            "audio_rates": sorted({d.metadata.sample_rate for _, d in audio}),
            "audio_finite": bool(all(np.isfinite(np.asarray(d.as_array())).all()
                                     for _, d in audio)),
            "text_pieces": len(text),
            "text": "".join(d.as_text() for _, d in text),
            "first_audio_s": audio[0][0] if audio else None,
            "first_text_s": text[0][0] if text else None,
            "reply": node.last_reply,
            "history": len(node.turns),
        })
    node.cleanup()
    print(json.dumps({"build_s": build_s, "load_s": load_s, "turns": turns}))


if __name__ == "__main__":
    main(sys.argv[1])
