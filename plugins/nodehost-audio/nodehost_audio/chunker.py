"""AudioChunker: re-cut audio into frames of a fixed length (e.g. 512 samples for a VAD)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost_audio._audio import audio_format, frames_of, make_audio, ms_to_frames


class AudioChunkerParams(BaseModel):
    """The params of AudioChunker's manifest, typed (nodehost checks the names match)."""

    chunk_ms: float = 32.0
    chunk_samples: int | None = None
    pad_last: bool = True


class AudioChunker(nodehost.Node[AudioChunkerParams]):
    def initialize(self) -> None:
        # Held samples are copies: input views onto shared memory die after process().
        self._pending: list[np.ndarray] = []
        self._held = 0
        self._format: tuple[int, int] | None = None

    def _size(self, rate: int) -> int:
        if self.params.chunk_samples:
            return int(self.params.chunk_samples)
        return ms_to_frames(self.params.chunk_ms, rate)

    def process(self, data: nodehost.RuntimeData, port: str) -> list[nodehost.RuntimeData]:
        fmt = audio_format(data)
        out: list[nodehost.RuntimeData] = []
        if self._format is not None and fmt != self._format:
            out += self._drain(final=True)  # never mix two formats in one chunk
        self._format = fmt
        frames = frames_of(data, copy=True)
        self._pending.append(frames)
        self._held += len(frames)
        return out + self._drain(final=False)

    def end_of_stream(self, port: str) -> list[nodehost.RuntimeData]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[nodehost.RuntimeData]:
        if self._format is None or not self._held:
            return []
        rate, channels = self._format
        size = self._size(rate)
        buffered = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        whole = len(buffered) // size
        out = [make_audio(buffered[i * size:(i + 1) * size], rate) for i in range(whole)]
        rest = buffered[whole * size:]
        if final and len(rest):
            if self.params.pad_last:
                # Fixed-size consumers (a VAD needs exactly 512 samples) get zero padding.
                padded = np.zeros((size, channels), np.float32)
                padded[:len(rest)] = rest
                rest = padded
            out.append(make_audio(rest, rate))
            rest = rest[:0]
        self._pending = [rest] if len(rest) else []
        self._held = len(rest)
        return out
