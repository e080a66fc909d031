"""Resample: streaming sample-rate conversion with soxr."""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr
from pydantic import BaseModel

import nodehost
from nodehost_audio._audio import audio_format, frames_of, make_audio


def remix(frames: np.ndarray, channels: int) -> np.ndarray:
    """``(frames, n)`` float32 as ``(frames, channels)``: averaged down to mono, or mono
    copied to every channel."""
    have = frames.shape[1]
    if have == channels:
        return frames
    if channels == 1:
        mono: np.ndarray = frames.mean(axis=1, keepdims=True, dtype=np.float32)
        return mono
    if have == 1:
        return np.repeat(frames, channels, axis=1)
    raise ValueError(f"Resample cannot map {have} channels to {channels}: only to 1 (a "
                     "downmix) or from 1 (a copy to each)")


class ResampleParams(BaseModel):
    """The params of Resample's manifest, typed (nodehost checks the names match)."""

    sample_rate: int
    quality: Literal['QQ', 'LQ', 'MQ', 'HQ', 'VHQ'] = 'HQ'
    channels: int | None = None


class Resample(nodehost.Node[ResampleParams]):
    """Converts any input rate to ``sample_rate``, and the channel count to ``channels``.

    One ``soxr.ResampleStream`` carries its filter state across chunks, so chunk boundaries
    leave no clicks or gaps; its tail is flushed at end of stream. A change of input format
    mid-stream flushes the old stream and starts a new one. Channels are mixed before the
    rate conversion (fewer channels to filter when mixing down).
    """

    def initialize(self) -> None:
        self._stream: soxr.ResampleStream | None = None
        self._format: tuple[int, int] | None = None

    def process(self, data: nodehost.RuntimeData, port: str) -> list[nodehost.RuntimeData]:
        fmt = audio_format(data)
        out: list[nodehost.RuntimeData] = []
        channels = self.params.channels or fmt[1]
        if fmt != self._format:
            out += self._flush()
            self._format = fmt
            rate = fmt[0]
            if rate != self.params.sample_rate:
                self._stream = soxr.ResampleStream(rate, self.params.sample_rate, channels,
                                                   dtype="float32", quality=self.params.quality)
        if self._stream is None:
            # Already at the target rate and channel count: forward the message itself
            # (zero-copy) unless its samples need converting to float32.
            if channels == fmt[1] and np.asarray(data.as_array()).dtype == np.float32:
                return [*out, data]
            return [*out, make_audio(remix(frames_of(data), channels), self.params.sample_rate)]
        frames = remix(frames_of(data), channels)
        resampled = self._stream.resample_chunk(np.ascontiguousarray(frames))
        # soxr holds back a few frames of filter delay, so a tiny chunk can yield nothing.
        if len(resampled):
            out.append(make_audio(resampled, self.params.sample_rate))
        return out

    def end_of_stream(self, port: str) -> list[nodehost.RuntimeData]:
        return self._flush()

    def _flush(self) -> list[nodehost.RuntimeData]:
        stream, self._stream = self._stream, None
        if stream is None or self._format is None:
            return []
        channels = self.params.channels or self._format[1]
        tail = stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)
        return [make_audio(tail, self.params.sample_rate)] if len(tail) else []
