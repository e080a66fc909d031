"""nodehost-speech nodes in real sessions: each node its own sandboxed process, started
through ``nodehost.Host().start_session``, on speech the test synthesizes with Piper.

Whisper may mishear or re-case a word, so checks look for keywords, never the exact text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from speech_harness import keywords_heard, to_16k

import nodehost
from nodehost.testing import NodeHarness, Run, chain, run, sink, source

SENTENCE = "The quick brown fox visits the library on Tuesday."
KEYWORDS = {"quick", "brown", "fox", "library", "tuesday"}
RATE = 16000


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """16 kHz test audio: SENTENCE spoken by Piper (in this process) once, twice with a pause
    between, and no speech at all (faint noise, then a tone)."""
    folder = tmp_path_factory.mktemp("speech")
    folder.chmod(0o755)
    tts = NodeHarness("PiperTTS", noise_scale=0.0, noise_w_scale=0.0)
    speech = np.concatenate([to_16k(d) for d in tts.feed([nodehost.RuntimeData.text(SENTENCE)])])
    half, second = np.zeros(RATE // 2, np.float32), np.zeros(RATE, np.float32)
    noise = (0.001 * np.random.default_rng(0).standard_normal(2 * RATE)).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)).astype(np.float32)
    files = {
        "one": np.concatenate([half, speech, second]),
        "two": np.concatenate([half, speech, second, speech, second]),
        "none": np.concatenate([noise, tone]),
    }
    paths: dict[str, Any] = {"speech_s": len(speech) / RATE}
    for name, audio in files.items():
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], audio, RATE, subtype="FLOAT")
    return paths


def vad_chain(name: str, wav: Path, out: Path) -> dict[str, Any]:
    return chain(name, source(wav, chunk_ms=20), {"id": "vad", "type": "SileroVAD"},
                 sink(out, subtype="FLOAT"))


def test_vad_finds_each_utterance_and_nothing_in_silence(
        host: Any, tmp_out: Path, wavs: dict[str, Any]) -> None:
    # Both sessions run at once in one host, each with its own processes.
    speech = host.start_session(vad_chain("vad_speech", wavs["two"], tmp_out / "speech.wav"))
    quiet = host.start_session(vad_chain("vad_quiet", wavs["none"], tmp_out / "quiet.wav"))
    runs = [Run(s.wait(300), list(s.events(timeout=1))) for s in (speech, quiet)]
    for done in runs:
        done.assert_ok()
    said, silent = runs
    assert said.stats("vad")["sent"] == 2
    assert [m.split(":")[0] for m in said.logs("vad")] == ["segment 1", "segment 2"]
    segments, rate = sf.read(tmp_out / "speech.wav", dtype="float32")
    # Both sentences, each with at most the padding (192 ms) on both sides.
    assert rate == RATE
    assert 2 * (wavs["speech_s"] - 0.3) < len(segments) / RATE < 2 * (wavs["speech_s"] + 0.5)
    assert silent.stats("vad")["sent"] == 0
    assert sf.info(str(tmp_out / "quiet.wav")).frames == 0
    assert any("no audio received" in m for m in silent.logs("sink"))


@pytest.mark.parametrize("split_clauses", [True, False])
def test_whisper_reply_and_piper_in_their_own_processes(
        host: Any, tmp_out: Path, wavs: dict[str, Any], make_node: Any,
        split_clauses: bool) -> None:
    out = tmp_out / "reply.wav"
    # The whole file as one message: WhisperASR takes one utterance per message.
    done = run(host, chain(
        "asr_reply_tts", source(wavs["one"], chunk_ms=60000),
        {"id": "asr", "type": "WhisperASR"},
        {"id": "reply", "type": "ReplyText", "params": {"template": "You said: {text}"}},
        {"id": "tts", "type": "PiperTTS", "params": {"split_clauses": split_clauses}},
        sink(out)))
    done.assert_ok()
    heard = [m for m in done.logs("asr") if m.startswith("heard: ")]
    assert len(heard) == 1 and len(keywords_heard(heard[0], KEYWORDS)) >= 3, heard
    assert any(m.startswith("Whisper warmed up") for m in done.logs("asr"))
    said = [m for m in done.logs("reply") if m.startswith("said: ")]
    assert said == [f"said: You said: {heard[0].removeprefix('heard: ')}"]
    # "You said:" first, then the rest; or the whole sentence in one message.
    sent = done.stats("tts")["sent"]
    assert sent >= 2 if split_clauses else sent == 1
    assert any(m.startswith("first audio after") for m in done.logs("tts"))
    assert done.stats("sink")["received"] == sent
    reply, rate = sf.read(out, dtype="float32")
    assert rate == 22050 and 1.5 < len(reply) / rate < 8
    # Listen to the reply: "you said" and the keywords come back.
    again = make_node("WhisperASR").feed([nodehost.RuntimeData.audio(
        np.concatenate([np.zeros(8000, np.float32), to_16k_array(reply, rate)]),
        sample_rate=RATE)])
    text = again[0].as_text()
    assert "said" in text.lower() and len(keywords_heard(text, KEYWORDS)) >= 3, text


def test_whisper_rejects_audio_at_the_wrong_rate_naming_the_node(
        host: Any, tmp_out: Path) -> None:
    # A WAV's rate is known only at run time: the node itself says what to insert.
    wav = tmp_out / "in.wav"
    sf.write(wav, np.zeros(8000, np.float32), 8000)
    done = run(host, chain("wrong_rate", source(wav), {"id": "asr", "type": "WhisperASR"},
                           {"id": "reply", "type": "ReplyText"},
                           {"id": "tts", "type": "PiperTTS"}, sink(tmp_out / "out.wav")))
    assert not done.result.ok
    assert done.result.failed_node == "asr"
    assert "Resample" in done.result.reason


def to_16k_array(samples: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(samples.astype(np.float32), rate, RATE).astype(np.float32)
