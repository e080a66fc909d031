"""nodehost-audio nodes in real sessions: every node its own sandboxed process, audio over
shared memory, started through ``nodehost.Host().start_session`` with audio the tests write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from nodehost.errors import ConfigError
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


def test_wav_sink_without_a_write_grant_is_refused_before_the_run(
        host: Any, tmp_out: Path) -> None:
    wav_in = tmp_out / "in.wav"
    sf.write(wav_in, sine(440, 0.1, 16000), 16000)
    ungranted = sink(tmp_out / "out.wav")
    del ungranted["sandbox"]
    with pytest.raises(ConfigError) as info:
        host.start_session(chain("nogrant", source(wav_in), ungranted))
    assert [str(i) for i in info.value.issues] == [
        f"nodes[1].params.path: {tmp_out / 'out.wav'} is outside what the node may write; "
        "add it (or its folder) to nodes[1].sandbox.fs_write"]
    assert not (tmp_out / "out.wav").exists()


@pytest.mark.parametrize("grant", ["file", "folder"])
def test_a_failing_session_leaves_the_previous_output_untouched(
        host: Any, tmp_out: Path, grant: str) -> None:
    """The sink has written audio when a sibling branch fails: the good file from the last
    run stays as it was, and no temporary file is left beside it."""
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out" / "reply.wav"
    wav_out.parent.mkdir()
    sf.write(wav_in, sine(440, 4.0, 16000), 16000)
    sf.write(wav_out, sine(880, 0.5, 22050), 22050)  # the previous good reply
    before = wav_out.read_bytes()
    speaker = sink(wav_out)
    if grant == "folder":
        speaker["sandbox"] = {"fs_write": [str(wav_out.parent)]}
    config = chain("cutoff", source(wav_in, realtime=True), speaker)
    # A second branch that fails after ~1 s, while the sink is mid-stream.
    config["nodes"] += [
        {"id": "ticks", "type": "ProbeSource", "params": {"count": 100, "interval_ms": 50}},
        {"id": "faulty", "type": "Faulty", "params": {"mode": "process_exception",
                                                      "after": 20}},
        {"id": "probe", "type": "ProbeSink", "params": {"out_path": str(tmp_out / "p.json")},
         "sandbox": {"fs_write": [str(tmp_out / "p.json")]}},
    ]
    config["connections"] += [{"from": "ticks", "to": "faulty"}, {"from": "faulty",
                                                                  "to": "probe"}]
    done = run(host, config)
    assert not done.result.ok and done.result.failed_node == "faulty", done.result.reason
    assert any(m.startswith("first audio in") for m in done.logs("sink")), done.logs("sink")
    assert wav_out.read_bytes() == before
    assert sorted(p.name for p in wav_out.parent.iterdir()) == ["reply.wav"]


@pytest.mark.parametrize("grant", ["file", "folder"])
def test_a_finished_session_replaces_the_output(host: Any, tmp_out: Path, grant: str) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out" / "reply.wav"
    wav_out.parent.mkdir()
    sf.write(wav_in, sine(440, 0.3, 16000), 16000, subtype="FLOAT")
    sf.write(wav_out, sine(880, 0.5, 22050), 22050)
    speaker = sink(wav_out, subtype="FLOAT")
    if grant == "folder":
        speaker["sandbox"] = {"fs_write": [str(wav_out.parent)]}
    run(host, chain("replace", source(wav_in), speaker)).assert_ok()
    written, rate = sf.read(wav_out, dtype="float32")
    assert rate == 16000 and len(written) == int(0.3 * 16000)
    assert sorted(p.name for p in wav_out.parent.iterdir()) == ["reply.wav"]


@pytest.mark.parametrize(("channels_in", "channels_out"), [(2, 1), (1, 2)])
def test_resample_converts_the_channel_count(host: Any, tmp_out: Path, channels_in: int,
                                             channels_out: int) -> None:
    wav_in, wav_out = tmp_out / "in.wav", tmp_out / "out.wav"
    left, right = sine(440, 0.5, 48000, amp=0.4), sine(660, 0.5, 48000, amp=0.2)
    signal = np.stack([left, right], axis=1) if channels_in == 2 else left
    sf.write(wav_in, signal, 48000, subtype="FLOAT")
    resample = {"id": "rs", "type": "Resample",
                "params": {"sample_rate": 16000, "channels": channels_out}}
    run(host, chain("remix", source(wav_in), resample, sink(wav_out, subtype="FLOAT"))
        ).assert_ok()
    written, rate = sf.read(wav_out, dtype="float32", always_2d=True)
    assert (rate, written.shape[1]) == (16000, channels_out)
    assert abs(len(written) - 8000) <= 2
    if channels_out == 1:  # the average of both sides: both tones are there
        spectrum = np.abs(np.fft.rfft(written[:, 0]))
        freqs = np.fft.rfftfreq(len(written), 1 / 16000)
        assert {round(float(freqs[i])) for i in np.argsort(spectrum)[-2:]} == {440, 660}
    else:  # mono copied to each side
        np.testing.assert_array_equal(written[:, 0], written[:, 1])
        assert abs(dominant_hz(written[:, 0], rate) - 440) <= 2


def test_resample_channels_are_known_to_validation(host: Any, tmp_out: Path) -> None:
    wav_in = tmp_out / "in.wav"
    sf.write(wav_in, sine(440, 0.1, 16000), 16000)
    config = chain("remix", source(wav_in),
                   {"id": "rs", "type": "Resample", "params": {"sample_rate": 16000,
                                                               "channels": 2}},
                   {"id": "vad", "type": "SileroVAD"})
    types = host.registry.node_types
    if "SileroVAD" not in types:
        pytest.skip("nodehost-speech is not installed")
    with pytest.raises(ConfigError) as info:
        host.validate(config)
    assert [str(i) for i in info.value.issues] == [
        "connections[1]: rs.out (Resample) → vad.in (SileroVAD): channel count 2 is not "
        "accepted by the input, which takes 1; insert a Resample node with channels set "
        "between them"]
    config["nodes"][1]["params"]["channels"] = 1
    host.validate(config)
