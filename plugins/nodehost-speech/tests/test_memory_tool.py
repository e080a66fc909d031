"""python -m nodehost_speech.memory: the tool behind the measurements beside each cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def test_memory_tool_measures_every_node_with_limits_lifted(tmp_out: Path) -> None:
    from nodehost_speech.memory import measure, prepare

    wav = tmp_out / "in.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    config = {"nodes": [{"id": "mic", "type": "WavSource", "params": {"path": str(wav)},
                         "sandbox": {"fs_read": [str(wav)]}},
                        {"id": "speaker", "type": "WavSink",
                         "params": {"path": "/nonexistent/out.wav"}}],
              "connections": [{"from": "mic", "to": "speaker"}]}
    config = prepare(config, tmp_out, env=["mic.OMP_NUM_THREADS=1"], repeat=3, reply_chars=0)
    assert all(n["resources"] == {"memory_mb": None} for n in config["nodes"])
    assert config["nodes"][1]["params"]["path"] == str(tmp_out / "speaker.wav")
    result, peaks = measure(config)
    assert result.ok, result.reason
    assert set(peaks) == {"mic", "speaker"}
    for row in peaks.values():  # Python + numpy + iceoryx2 alone take tens of MiB
        assert row["vm_data"] > 20 << 20 and row["rss"] > 10 << 20, row
    assert peaks["mic"]["env"] == {"OMP_NUM_THREADS": "1"}
    # the source played the file three times (with gaps)
    assert sf.info(str(tmp_out / "speaker.wav")).frames > 3 * 16000
