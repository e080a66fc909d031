"""Runs inside the VibeVoiceTTS node's own environment (torch 2.13 CPU, transformers 5): builds a
tiny random checkpoint with transformers' VibeVoice classes, constructs the node from its real
manifest the way the runner does, feeds it text (in pieces, as LFM2Audio sends it) and prints
what came out as one JSON line.

    <env python> vibevoice_inprocess.py WORKDIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(workdir: str) -> None:
    from nodehost_vibevoice import tiny
    from nodehost_vibevoice.node import REALTIME_AVAILABLE

    import nodehost
    from nodehost.testing import NodeHarness

    started = time.monotonic()
    checkpoint = tiny.build(Path(workdir) / "vibevoice-tiny")
    build_s = time.monotonic() - started

    # A voice to clone: half a second of a 24 kHz tone written as a WAV file.
    import soundfile

    voice = Path(workdir) / "voice.wav"
    t = np.arange(12_000) / 24_000
    soundfile.write(str(voice), (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 24_000)

    results = {}
    for label, extra in (("plain", {}), ("voice", {"voice": str(voice)})):
        # float32: a tiny random model in bfloat16 rounds its tied logits apart and may stop
        # at once (the real checkpoints are trained in bfloat16, the node's default).
        harness = NodeHarness("VibeVoiceTTS", package="nodehost_vibevoice", node_id="tts",
                              initialize=False, checkpoint=str(checkpoint), max_new_tokens=12,
                              dtype="float32", inference_steps=3, chunk_frames=2, seed=0,
                              **extra)
        node = harness.node
        loaded = time.monotonic()
        node.initialize()
        load_s = time.monotonic() - loaded
        t0 = time.monotonic()
        emitted = harness.emitted
        # "Hello there." completes a sentence: it is spoken while " How are" waits for more.
        pieces = ["Hel", "lo there.", " How are"]
        spoken_during_process = []
        for piece in pieces:
            list(node.process(nodehost.RuntimeData.text(piece), "in"))
            spoken_during_process.append(len(emitted))
        list(node.end_of_stream("in"))
        total = time.monotonic() - t0
        node.cleanup()
        out = [(e.at - t0, e.data) for e in emitted]
        results[label] = {
            "load_s": load_s,
            "seconds": total,
            "chunks_after_each_piece": spoken_during_process,
            "chunks": len(out),
            "samples": int(sum(np.asarray(d.as_array()).size for _, d in out)),
            "chunk_sizes": [int(np.asarray(d.as_array()).size) for _, d in out],
            "rates": sorted({d.metadata.sample_rate for _, d in out}),
            "finite": bool(all(np.isfinite(np.asarray(d.as_array())).all() for _, d in out)),
            "first_chunk_s": out[0][0] if out else None,
            "backend": node.backend_name,
            "last_utterance": node.last_utterance,
        }
    print(json.dumps({"build_s": build_s, "realtime_available": REALTIME_AVAILABLE,
                      "runs": results}))


if __name__ == "__main__":
    main(sys.argv[1])
