"""nodehost-audio nodes, built in-process from their manifests and fed synthetic audio."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

import nodehost
from nodehost.testing import NodeHarness, joined, load_manifest, sine
from nodehost.testing import audio_chunks as chunks

Make = Callable[..., NodeHarness]  # the make_node fixture

RUN_MS = 10


# --- plugin ----------------------------------------------------------------------------------


def test_plugin_returns_every_manifest_and_all_are_valid() -> None:
    from nodehost_audio import plugin

    paths = plugin.nodehost_node_manifests()
    names = {load_manifest(t, "nodehost_audio").node_type for t in
             ("WavSource", "WavSink", "Resample", "AudioChunker", "AudioBuffer", "Gain")}
    assert len(paths) == len(names) == 6


def test_plugin_module_imports_no_node_code_or_heavy_libraries() -> None:
    # Discovery imports the plugin module in the host: it must stay light.
    code = ("import sys, nodehost_audio.plugin as p; p.nodehost_node_manifests(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'soundfile', 'soxr') or m.startswith('nodehost_audio.') "
            "and m != 'nodehost_audio.plugin'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resample_manifest_derives_its_output_rate_from_a_param() -> None:
    manifest = load_manifest("Resample", "nodehost_audio")
    assert manifest.outputs["out"].sample_rate_from_param == "sample_rate"
    assert manifest.params["sample_rate"].required


# --- Gain ------------------------------------------------------------------------------------


def test_gain_scales_and_keeps_format(make_node: Make) -> None:
    stereo = sine(440, 0.1, 24000, channels=2)
    out = make_node("Gain", gain=2.0).feed(chunks(stereo, 480, 24000))
    assert {(d.metadata.sample_rate, d.metadata.channels) for d in out} == {(24000, 2)}
    np.testing.assert_allclose(joined(out), stereo * 2, rtol=1e-6)


def test_gain_clip(make_node: Make) -> None:
    out = make_node("Gain", gain=4.0, clip=True).feed(chunks(sine(440, 0.05, 16000), 160, 16000))
    assert np.abs(joined(out)).max() == pytest.approx(1.0)


def test_gain_rejects_negative_factor() -> None:
    with pytest.raises(ValueError, match="greater than or equal"):
        NodeHarness("Gain", gain=-1.0)


# --- Resample --------------------------------------------------------------------------------


def test_resample_streaming_is_seamless(make_node: Make) -> None:
    rate_in, rate_out = 48000, 16000
    signal = sine(440, 1.0, rate_in)
    # Odd chunk sizes: every boundary falls at a different filter phase.
    sizes = [137, 480, 1, 999, 4096] * 20
    pieces, pos = [], 0
    for size in sizes:
        if pos >= len(signal):
            break
        pieces.append(signal[pos:pos + size])
        pos += size
    if pos < len(signal):
        pieces.append(signal[pos:])
    items = [nodehost.RuntimeData.audio(p, sample_rate=rate_in) for p in pieces]
    out = make_node("Resample", sample_rate=rate_out).feed(items)
    assert {d.metadata.sample_rate for d in out} == {rate_out}
    streamed = joined(out)[:, 0]
    one_shot = soxr.resample(signal, rate_in, rate_out)
    assert abs(len(streamed) - len(one_shot)) <= 1
    n = min(len(streamed), len(one_shot))
    # Same filter, same state: chunking must not change a single sample (no clicks, no gaps).
    np.testing.assert_allclose(streamed[:n], one_shot[:n], atol=1e-5)


def test_resample_same_rate_forwards_the_message(make_node: Make) -> None:
    items = chunks(sine(440, 0.1, 16000), 512, 16000)
    out = make_node("Resample", sample_rate=16000).feed(items)
    assert [id(d) for d in out] == [id(d) for d in items]


def test_resample_stereo_and_rate_change_mid_stream(make_node: Make) -> None:
    first = chunks(sine(440, 0.5, 44100, channels=2), 441, 44100)
    second = chunks(sine(440, 0.5, 22050, channels=2), 441, 22050)
    out = make_node("Resample", sample_rate=8000).feed(first + second)
    assert {(d.metadata.sample_rate, d.metadata.channels) for d in out} == {(8000, 2)}
    # Both halves flushed completely: 0.5 s each at 8 kHz.
    assert abs(len(joined(out)) - 8000) <= 2


# --- AudioChunker ----------------------------------------------------------------------------


def test_chunker_makes_fixed_frames_and_pads_the_last(make_node: Make) -> None:
    signal = sine(300, 1.0, 16000)
    rng = np.random.default_rng(0)
    pieces, pos = [], 0
    while pos < len(signal):
        size = int(rng.integers(1, 2000))
        pieces.append(nodehost.RuntimeData.audio(signal[pos:pos + size], sample_rate=16000))
        pos += size
    out = make_node("AudioChunker", chunk_ms=32).feed(pieces)
    assert {len(d.as_array()) for d in out} == {512}
    flat = joined(out)[:, 0]
    np.testing.assert_array_equal(flat[:len(signal)], signal)
    assert not flat[len(signal):].any()


def test_chunker_chunk_samples_and_no_padding(make_node: Make) -> None:
    out = make_node("AudioChunker", chunk_samples=100, pad_last=False).feed(
        chunks(sine(300, 0.0255, 16000), 77, 16000))  # 408 samples
    assert [len(d.as_array()) for d in out] == [100, 100, 100, 100, 8]


# --- AudioBuffer -----------------------------------------------------------------------------


def _segment(seconds: float, value: float, rate: int = 16000) -> nodehost.RuntimeData:
    return nodehost.RuntimeData.audio(np.full(int(seconds * rate), value, np.float32),
                                      sample_rate=rate)


def test_buffer_merges_short_segments_into_an_utterance(make_node: Make) -> None:
    node = make_node("AudioBuffer", min_utterance_ms=1000, silence_ms=100)
    assert node.node.process(_segment(0.3, 0.1), "in") == []
    assert node.node.process(_segment(0.4, 0.2), "in") == []
    out = node.node.process(_segment(0.5, 0.3), "in")
    assert len(out) == 1
    utterance = joined(out)[:, 0]
    # 0.3 + 0.1 gap + 0.4 + 0.1 gap + 0.5 seconds, segments in order.
    assert len(utterance) == int(1.4 * 16000)
    assert utterance[0] == pytest.approx(0.1) and utterance[-1] == pytest.approx(0.3)
    assert node.node.end_of_stream("in") == []


def test_buffer_flushes_at_end_of_stream_and_max_length(make_node: Make) -> None:
    out = make_node("AudioBuffer", min_utterance_ms=5000, max_utterance_ms=1000, silence_ms=0).feed(
        [_segment(0.6, 0.1), _segment(0.6, 0.2), _segment(0.2, 0.3)])
    assert [len(d.as_array()) for d in out] == [9600, 12800]


def test_buffer_drops_blips(make_node: Make) -> None:
    out = make_node("AudioBuffer", min_utterance_ms=5000, drop_below_ms=300).feed(
        [_segment(0.1, 0.1)])
    assert out == []


# --- WavSource / WavSink ---------------------------------------------------------------------


@pytest.fixture
def stereo_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, sine(440, 0.5, 44100, channels=2, amp=0.25), 44100, subtype="FLOAT")
    return path


def test_wav_source_reads_the_file_in_chunks(
        make_node: Make, stereo_wav: Path) -> None:
    out = make_node("WavSource", path=str(stereo_wav), chunk_ms=20).generate()
    assert {(d.metadata.sample_rate, d.metadata.channels) for d in out} == {(44100, 2)}
    assert [len(d.as_array()) for d in out[:2]] == [882, 882]
    np.testing.assert_array_equal(joined(out), sf.read(stereo_wav, dtype="float32")[0])


def test_wav_source_mono_downmix_and_flac(make_node: Make, tmp_path: Path) -> None:
    path = tmp_path / "in.flac"
    left, right = sine(440, 0.2, 16000), sine(880, 0.2, 16000)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="PCM_24")
    out = make_node("WavSource", path=str(path), mono=True).generate()
    assert {d.metadata.channels for d in out} == {1}
    np.testing.assert_allclose(joined(out)[:, 0], (left + right) / 2, atol=1e-4)


def test_wav_source_realtime_pacing(make_node: Make, tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, sine(440, 0.3, 16000), 16000)
    source = make_node("WavSource", path=str(path), chunk_ms=RUN_MS, realtime=True)
    started = time.monotonic()
    out = source.generate()
    elapsed = time.monotonic() - started
    assert len(out) == 30
    # The last chunk leaves at 0.29 s; pacing against the stream position keeps it there.
    assert 0.27 <= elapsed < 0.6


def test_wav_source_missing_file_fails_initialize(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"nope\.wav"):
        NodeHarness("WavSource", path=str(tmp_path / "nope.wav"))


def test_wav_sink_writes_what_it_receives(make_node: Make, tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    signal = sine(440, 0.25, 22050, amp=0.5)
    make_node("WavSink", path=str(path)).feed(chunks(signal, 441, 22050))
    written, rate = sf.read(path, dtype="float32")
    assert rate == 22050 and sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(written, signal, atol=1 / 32768 + 1e-6)


def test_wav_sink_rejects_a_format_change(make_node: Make, tmp_path: Path) -> None:
    sink = make_node("WavSink", path=str(tmp_path / "out.wav"))
    sink.node.process(chunks(sine(440, 0.01, 16000), 160, 16000)[0], "in")
    with pytest.raises(ValueError, match="Resample"):
        sink.node.process(chunks(sine(440, 0.01, 22050), 220, 22050)[0], "in")
    sink.node.cleanup()


def test_wav_sink_without_input_leaves_a_valid_empty_file(
        make_node: Make, tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    path.touch()  # the sandbox pre-creates granted files: the sink must overwrite, not append
    make_node("WavSink", path=str(path)).feed([])
    info = sf.info(str(path))
    assert (info.frames, info.samplerate) == (0, 16000)


def test_wav_sink_cut_off_leaves_the_previous_file_untouched(
        make_node: Make, tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    sf.write(path, sine(440, 0.5, 22050), 22050)  # the last run's good reply
    before = path.read_bytes()
    sink = make_node("WavSink", path=str(path), subtype="FLOAT")
    sink.node.process(chunks(sine(440, 0.1, 16000), 1600, 16000)[0], "in")
    sink.node.cleanup()  # a session failed or stopped: no end_of_stream
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no temp file left
