"""Runs inside the LFM2Audio node's own environment (Python 3.12, liquid-audio): builds a tiny
random checkpoint with liquid-audio's classes, constructs the node from its real manifest the
way the runner does, feeds it two utterances and prints what came out as one JSON line.

    <env python> lfm2_inprocess.py WORKDIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(workdir: str) -> None:
    from nodehost_lfm2audio import tiny

    import nodehost
    from nodehost.testing import NodeHarness

    started = time.monotonic()
    checkpoint = tiny.build(Path(workdir) / "lfm2-audio-tiny")
    build_s = time.monotonic() - started
    harness = NodeHarness("LFM2Audio", package="nodehost_lfm2audio", node_id="lfm2",
                          initialize=False, checkpoint=str(checkpoint), max_new_tokens=60,
                          seed=0, chunk_frames=4, history_turns=2)
    node = harness.node
    started = time.monotonic()
    node.initialize()
    load_s = time.monotonic() - started
    rate = 16_000
    t = np.arange(rate) / rate
    utterance = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    turns = []
    for i in range(2):
        harness.emitted.clear()
        t0 = time.monotonic()
        assert node.process(nodehost.RuntimeData.audio(utterance, sample_rate=rate), "in") is None
        total = time.monotonic() - t0
        out = [(e.port, e.at - t0, e.data) for e in harness.emitted]
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
