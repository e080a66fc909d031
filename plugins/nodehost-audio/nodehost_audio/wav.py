"""WavSource reads a WAV/FLAC file in chunks; WavSink writes what it receives to a file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel

import nodehost
from nodehost.outputs import OutputFile
from nodehost_audio._audio import audio_format, frames_of, make_audio, ms_to_frames


class WavSourceParams(BaseModel):
    """The params of WavSource's manifest, typed (nodehost checks the names match)."""

    path: str
    chunk_ms: float = 20.0
    realtime: bool = False
    mono: bool = False


class WavSource(nodehost.Node[WavSourceParams]):
    """Emits a sound file as float32 chunks of ``chunk_ms``, then ends the stream."""

    def initialize(self) -> None:
        # Open (and so validate) the file now: a missing or unreadable file should fail
        # initialization, before the session starts, not halfway through it.
        self._file: sf.SoundFile | None = sf.SoundFile(self.params.path)
        info = self._file
        self.logger.info("%s: %d Hz, %d ch, %.2f s", self.params.path, info.samplerate,
                         info.channels, info.frames / info.samplerate)

    def generate(self) -> Iterator[nodehost.RuntimeData]:
        f = self._file
        assert f is not None, "initialize() opens the file"
        rate, channels = f.samplerate, f.channels
        downmix = self.params.mono and channels > 1
        block = ms_to_frames(self.params.chunk_ms, rate)
        # The start of the stream: with realtime pacing, the sample at position t leaves at
        # start + t (what latency measurements take as "when it was said").
        self.logger.info("streaming %.2f s of audio%s", f.frames / rate,
                         " at playback speed" if self.params.realtime else "")
        start = time.monotonic()
        sent = 0
        while True:
            if self.params.realtime:
                # Pace against the stream position, not per chunk, so delays never accumulate.
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            remaining = f.frames - f.tell() if f.seekable() else block
            frames = min(block, remaining)
            if frames <= 0:
                break
            if self.can_loan and not downmix:
                # Zero-copy: libsndfile decodes straight into the shared-memory sample.
                with self.loan_audio("out", frames, rate, channels) as buf:
                    view = np.asarray(buf).reshape(frames, channels)
                    n = len(f.read(frames, dtype="float32", always_2d=True, out=view))
                    view[n:] = 0  # a file shorter than its header said: no stale bytes out
            else:
                chunk = f.read(frames, dtype="float32", always_2d=True)
                n = len(chunk)
                if n == 0:
                    break
                if downmix:
                    chunk = chunk.mean(axis=1, keepdims=True, dtype=np.float32)
                yield make_audio(chunk, rate)
            sent += n
            if n < frames:
                break
        self.logger.info("sent %.2f s of audio", sent / rate)

    def cleanup(self) -> None:
        f: Any = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None


class WavSinkParams(BaseModel):
    """The params of WavSink's manifest, typed (nodehost checks the names match)."""

    path: str
    subtype: Literal['PCM_16', 'PCM_24', 'FLOAT'] = 'PCM_16'
    empty_sample_rate: int = 16000


class WavSink(nodehost.Node[WavSinkParams]):
    """Writes its input to ``path`` at the rate and channel count of the first chunk.

    The file is written under a temporary name (``nodehost.outputs.OutputFile``) and put at
    ``path`` only at end of stream, finalized: a session that fails or is stopped leaves
    whatever ``path`` held before (a previous good reply) untouched.
    """

    def initialize(self) -> None:
        self._file: sf.SoundFile | None = None
        self._output: OutputFile | None = None
        self._format: tuple[int, int] | None = None
        self.frames_written = 0

    def _open(self, rate: int, channels: int) -> sf.SoundFile:
        self._output = OutputFile(self.params.path)
        return sf.SoundFile(self._output.temp, "w", samplerate=rate, channels=channels,
                            subtype=self.params.subtype)

    def process(self, data: nodehost.RuntimeData, port: str) -> None:
        fmt = audio_format(data)
        if self._file is None:
            self._file = self._open(*fmt)
            self._format = fmt
            self.logger.info("first audio in: writing %d Hz, %d ch to %s", fmt[0], fmt[1],
                             self.params.path)
        elif fmt != self._format:
            (rate, channels), (was_rate, was_channels) = fmt, self._format or fmt
            raise ValueError(
                f"WavSink got {rate} Hz/{channels} ch after {was_rate} Hz/{was_channels} ch; "
                "a file has one format: insert a Resample node before it"
            )
        frames = frames_of(data)
        self._file.write(frames)
        self.frames_written += len(frames)

    def end_of_stream(self, port: str) -> None:
        if self._file is None:
            # Nothing arrived: still leave a valid (empty) file rather than a 0-byte one.
            self.logger.warning("no audio received; writing an empty file to %s",
                                self.params.path)
            self._file = self._open(self.params.empty_sample_rate, 1)
        self._file.close()
        self._file = None
        assert self._output is not None
        self._output.commit()
        rate = self._format[0] if self._format else self.params.empty_sample_rate
        self.logger.info("wrote %.2f s of audio (%d Hz) to %s", self.frames_written / rate,
                         rate, self.params.path)

    def cleanup(self) -> None:
        # After end_of_stream the file is in place; otherwise the stream was cut off.
        f, self._file = getattr(self, "_file", None), None
        if f is not None:
            f.close()
        output = getattr(self, "_output", None)
        if output is not None and not output.done:
            output.discard()
            self.logger.warning("stream cut off after %d frames: %s left as it was",
                                self.frames_written, self.params.path)
