"""The demo pipeline (manifests/speech_to_speech.yaml) validates against these manifests, and
the port constraints catch the mistakes they exist for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

DEMO = Path(__file__).resolve().parents[3] / "manifests" / "speech_to_speech.yaml"
pytestmark = pytest.mark.skipif(not DEMO.exists(), reason="runs inside the nodehost repository")


def _demo() -> dict[str, Any]:
    """The demo config with its relative paths made absolute against the config's folder
    (what the host is to do for file-relative paths)."""
    config: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    base = DEMO.parent
    for node in config["nodes"]:
        params, grants = node.get("params", {}), node.get("sandbox", {})
        if "path" in params and not Path(params["path"]).is_absolute():
            params["path"] = str(base / params["path"])
        for key in ("fs_read", "fs_write"):
            grants[key] = [p if Path(p).is_absolute() else str(base / p)
                           for p in grants.get(key, [])]
    return config


def _validate(config: dict[str, Any]) -> Any:
    from nodehost.config import load_config, validate_pipeline
    from nodehost.discovery import discover

    return validate_pipeline(load_config(config), discover().node_types)


def test_demo_sample_exists_and_the_pipeline_validates() -> None:
    config = _demo()
    assert Path(config["nodes"][0]["params"]["path"]).is_file()
    pipeline = _validate(config)
    assert len(pipeline.nodes) == 8


def test_resample_derives_its_output_rate_from_its_param() -> None:
    from nodehost.errors import ConfigError

    config = _demo()
    next(n for n in config["nodes"] if n["id"] == "resample")["params"]["sample_rate"] = 8000
    with pytest.raises(ConfigError, match=r"8000.*16000.*Resample"):
        _validate(config)


def test_tts_audio_cannot_go_straight_into_whisper() -> None:
    from nodehost.errors import ConfigError

    config = _demo()
    config["connections"].append({"from": "tts.out", "to": "asr.in"})
    config["connections"] = [c for c in config["connections"] if c["to"] != "asr.in"
                             or c["from"] == "tts.out"]
    with pytest.raises(ConfigError, match=r"22050.*16000"):
        _validate(config)


# --- the demo, end to end, in real node processes ---------------------------------------------

DEMO_KEYWORDS = {"fox", "library", "tuesday"}


# CTranslate2 takes its MKL path on Intel CPUs and another elsewhere, with very different
# memory needs (manifests: whisper_asr.yaml): both paths run here under the manifest's cap,
# whatever CPU runs the test.
@pytest.mark.parametrize("mkl", ["1", "0"], ids=["ct2-mkl", "ct2-no-mkl"])
def test_demo_runs_end_to_end_and_its_reply_says_the_words_back(
        host: Any, tmp_out: Path, make_node: Any, mkl: str) -> None:
    import numpy as np
    import soundfile as sf
    import soxr
    from speech_harness import keywords_heard

    import nodehost
    from nodehost.testing import run

    config = _demo()
    out = tmp_out / "reply.wav"
    speaker = next(n for n in config["nodes"] if n["type"] == "WavSink")
    speaker["params"]["path"] = str(out)
    speaker["sandbox"]["fs_write"] = [str(out)]
    asr = next(n for n in config["nodes"] if n["type"] == "WhisperASR")
    asr["env"] = {"CT2_USE_MKL": mkl}
    done = run(host, config)
    done.assert_ok()
    assert set(done.pids()) == {n["id"] for n in config["nodes"]}  # 8 nodes, 8 processes
    heard = [m for m in done.logs("asr") if m.startswith("heard: ")]
    assert len(heard) == 1 and len(keywords_heard(heard[0], DEMO_KEYWORDS)) >= 2, heard
    assert [m for m in done.logs("reply") if m.startswith("said: ")]
    assert done.logs("speaker")[-1].endswith(f"to {out}")
    # The latency report reads these same events: every stage is there, and they add up.
    from nodehost_speech.latency import LABELS, stage_times

    stages = stage_times(done.events)
    assert set(stages) == set(LABELS)
    assert sum(v for k, v in stages.items() if k != "total") == pytest.approx(stages["total"])
    reply, rate = sf.read(out, dtype="float32")
    assert rate == 22050 and len(reply) > rate
    # Transcribed again, the reply carries the words of the input.
    audio = soxr.resample(reply, rate, 16000).astype(np.float32)
    text = " ".join(d.as_text() for d in make_node("WhisperASR").feed(
        [nodehost.RuntimeData.audio(audio, sample_rate=16000)]))
    assert len(keywords_heard(text, DEMO_KEYWORDS)) >= 2, text


# Whatever WAV a user points the demo at: built here from the sample in other formats.
WAV_VARIANTS = [  # (id, rate, channels, subtype)
    ("stereo-44k1-int16", 44100, 2, "PCM_16"),
    ("mono-8k-float", 8000, 1, "FLOAT"),
    ("stereo-48k-float", 48000, 2, "FLOAT"),
    ("mono-22k05-int32", 22050, 1, "PCM_32"),
]


@pytest.mark.parametrize(("rate", "channels", "subtype"), [v[1:] for v in WAV_VARIANTS],
                         ids=[v[0] for v in WAV_VARIANTS])
def test_the_demo_hears_any_wav(host: Any, tmp_out: Path, rate: int, channels: int,
                                subtype: str) -> None:
    import numpy as np
    import soundfile as sf
    import soxr
    from speech_harness import keywords_heard

    from nodehost.testing import run

    config = _demo()
    mic = config["nodes"][0]
    sample, sample_rate = sf.read(mic["params"]["path"], dtype="float32")
    audio = soxr.resample(sample, sample_rate, rate).astype(np.float32)
    if channels == 2:  # a little different on each side, as a real stereo recording is
        audio = np.stack([audio, 0.8 * audio], axis=1)
    wav = tmp_out / f"in_{rate}_{channels}.wav"
    sf.write(wav, audio, rate, subtype=subtype)
    assert (sf.info(str(wav)).samplerate, sf.info(str(wav)).channels) == (rate, channels)
    mic["params"].update(path=str(wav), realtime=False)
    mic["sandbox"]["fs_read"] = [str(wav)]
    speaker = next(n for n in config["nodes"] if n["type"] == "WavSink")
    speaker["params"]["path"] = str(tmp_out / "reply.wav")
    speaker["sandbox"]["fs_write"] = [str(tmp_out / "reply.wav")]
    done = run(host, config)
    done.assert_ok()
    heard = [m for m in done.logs("asr") if m.startswith("heard: ")]
    assert heard and len(keywords_heard(" ".join(heard), DEMO_KEYWORDS)) >= 2, heard
