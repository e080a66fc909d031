"""Resample: streaming sample-rate conversion with soxr."""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr
from pydantic import BaseModel

import nodehost
from nodehost_audio._audio import audio_format, frames_of, make_audio


class ResampleParams(BaseModel):
    """The params of Resample's manifest, typed (nodehost checks the names match)."""

    sample_rate: int
    quality: Literal['QQ', 'LQ', 'MQ', 'HQ', 'VHQ'] = 'HQ'


class Resample(nodehost.Node[ResampleParams]):
    """Converts any input rate to ``sample_rate``.

    One ``soxr.ResampleStream`` carries its filter state across chunks, so chunk boundaries
    leave no clicks or gaps; its tail is flushed at end of stream. A change of input format
    mid-stream flushes the old stream and starts a new one.
    """

    def initialize(self) -> None:
        self._stream: soxr.ResampleStream | None = None
        self._format: tuple[int, int] | None = None

    def process(self, data: nodehost.RuntimeData, port: str) -> list[nodehost.RuntimeData]:
        fmt = audio_format(data)
        out: list[nodehost.RuntimeData] = []
        if fmt != self._format:
            out += self._flush()
            self._format = fmt
            rate, channels = fmt
            if rate != self.params.sample_rate:
                self._stream = soxr.ResampleStream(rate, self.params.sample_rate, channels,
                                                   dtype="float32", quality=self.params.quality)
        if self._stream is None:
            # Already at the target rate: forward the message itself (zero-copy) unless its
            # samples need converting to float32.
            if np.asarray(data.as_array()).dtype == np.float32:
                return [*out, data]
            return [*out, make_audio(frames_of(data), self.params.sample_rate)]
        resampled = self._stream.resample_chunk(np.ascontiguousarray(frames_of(data)))
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
        channels = self._format[1]
        tail = stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)
        return [make_audio(tail, self.params.sample_rate)] if len(tail) else []
