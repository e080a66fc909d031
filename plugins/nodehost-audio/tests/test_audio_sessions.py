"""nodehost-audio nodes in real sessions: every node its own sandboxed process, audio over
shared memory, started through ``nodehost.Host().start_session`` with audio the tests write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from nodehost.testing import chain, run, sine, sink, source


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_gain_halves_the_amplitude(host: Any, tmp_out: Path) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    signal = sine(440, 0.5, 16000, amp=0.8)
    sf.write(wav_in, signal, 16000, subtype="FLOAT")
    done = run(host, chain("gain", source(wav_in), {"id": "gain", "type": "Gain",
                                                    "params": {"gain": 0.5}},
                           sink(wav_out, subtype="FLOAT")))
    done.assert_ok()
    written, rate = sf.read(wav_out, dtype="float32")
    assert rate == 16000 and len(written) == len(signal)
    np.testing.assert_allclose(written, signal * 0.5, atol=1e-6)
    assert np.abs(written).max() == np.float32(0.4)


def test_gain_clips_stereo(host: Any, tmp_out: Path) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    sf.write(wav_in, sine(440, 0.2, 24000, channels=2, amp=0.5), 24000, subtype="FLOAT")
    run(host, chain("clip", source(wav_in), {"id": "gain", "type": "Gain",
                                             "params": {"gain": 4.0, "clip": True}},
                    sink(wav_out, subtype="FLOAT"))).assert_ok()
    written, rate = sf.read(wav_out, dtype="float32", always_2d=True)
    assert (rate, written.shape[1]) == (24000, 2)
    assert np.abs(written).max() == 1.0


def test_resample_48k_to_16k_keeps_duration_and_pitch(host: Any, tmp_out: Path) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    sf.write(wav_in, sine(1000, 1.0, 48000), 48000, subtype="FLOAT")
    done = run(host, chain("resample", source(wav_in, chunk_ms=7),
                           {"id": "rs", "type": "Resample", "params": {"sample_rate": 16000}},
                           sink(wav_out, subtype="FLOAT")))
    done.assert_ok()
    written, rate = sf.read(wav_out, dtype="float32")
    assert rate == 16000
    assert abs(len(written) - 16000) <= 2  # one second in, one second out (tail flushed)
    assert abs(dominant_hz(written, rate) - 1000) <= 2
    # Chunk boundaries left no clicks: the sine stays smooth sample to sample.
    steady = written[200:-200]
    assert np.abs(np.diff(steady)).max() < 2 * np.pi * 1000 / 16000 * 0.5 * 1.05


def test_chunker_cuts_fixed_frames_and_pads_the_last(host: Any, tmp_out: Path) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    signal = sine(300, 1.0, 16000)  # 16000 samples = 31 frames of 512 + 128
    sf.write(wav_in, signal, 16000, subtype="FLOAT")
    done = run(host, chain("chunker", source(wav_in, chunk_ms=7),
                           {"id": "chunker", "type": "AudioChunker",
                            "params": {"chunk_samples": 512}},
                           sink(wav_out, subtype="FLOAT")))
    done.assert_ok()
    assert done.stats("chunker")["sent"] == 32
    assert done.stats("sink")["received"] == 32
    written, _rate = sf.read(wav_out, dtype="float32")
    assert len(written) == 32 * 512
    np.testing.assert_array_equal(written[:16000], signal)
    assert not written[16000:].any()


def test_buffer_joins_segments_into_utterances(host: Any, tmp_out: Path) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    signal = sine(200, 3.0, 16000)
    sf.write(wav_in, signal, 16000, subtype="FLOAT")
    # Each 300 ms chunk stands for one segment: 4 make an utterance of >= 1 s; the last 2
    # are flushed at end of stream.
    done = run(host, chain("buffer", source(wav_in, chunk_ms=300),
                           {"id": "buffer", "type": "AudioBuffer",
                            "params": {"min_utterance_ms": 1000, "silence_ms": 0}},
                           sink(wav_out, subtype="FLOAT")))
    done.assert_ok()
    assert done.stats("buffer")["received"] == 10
    assert done.stats("sink")["received"] == 3
    assert done.logs("buffer") == ["utterance: 1.20 s from 4 segment(s)"] * 2 + \
        ["utterance: 0.60 s from 2 segment(s)"]
    written, _rate = sf.read(wav_out, dtype="float32")
    np.testing.assert_array_equal(written, signal)


def test_wav_source_and_sink_round_trip_stereo_flac(host: Any, tmp_out: Path) -> None:
    flac_in, wav_out = tmp_out / "in.flac", tmp_out / "out.wav"
    stereo = np.stack([sine(440, 0.5, 44100), sine(660, 0.5, 44100)], axis=1)
    sf.write(flac_in, stereo, 44100, subtype="PCM_24")
    done = run(host, chain("roundtrip", source(flac_in, chunk_ms=10, realtime=True),
                           sink(wav_out, subtype="FLOAT")))
    done.assert_ok()
    expected, _rate = sf.read(flac_in, dtype="float32")
    written, rate = sf.read(wav_out, dtype="float32")
    assert rate == 44100 and written.shape == expected.shape == (22050, 2)
    np.testing.assert_array_equal(written, expected)
    assert done.logs("src")[1:] == ["streaming 0.50 s of audio at playback speed",
                                    "sent 0.50 s of audio"]
    assert done.logs("sink")[-1] == f"wrote 0.50 s of audio (44100 Hz) to {wav_out}"


def test_wav_source_mono_downmix(host: Any, tmp_out: Path) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    left, right = sine(440, 0.2, 16000), sine(880, 0.2, 16000)
    sf.write(wav_in, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    run(host, chain("mono", source(wav_in, mono=True), sink(wav_out, subtype="FLOAT"))
        ).assert_ok()
    written, _rate = sf.read(wav_out, dtype="float32")
    assert written.ndim == 1
    np.testing.assert_allclose(written, (left + right) / 2, atol=1e-6)


def test_wav_sink_without_a_write_grant_fails_naming_the_node(
        host: Any, tmp_out: Path) -> None:
    wav_in = tmp_out / "in.wav"
    sf.write(wav_in, sine(440, 0.1, 16000), 16000)
    ungranted = sink(tmp_out / "out.wav")
    del ungranted["sandbox"]
    done = run(host, chain("nogrant", source(wav_in), ungranted))
    assert not done.result.ok
    assert done.result.failed_node == "sink"
    assert "WavSink" in done.result.reason
    assert not (tmp_out / "out.wav").exists()
