"""AudioBuffer: joins speech segments (one message each, e.g. from SileroVAD) into utterances."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost_audio._audio import audio_format, frames_of, make_audio


class AudioBufferParams(BaseModel):
    """The params of AudioBuffer's manifest, typed (nodehost checks the names match)."""

    min_utterance_ms: float = 1000.0
    max_utterance_ms: float = 28000.0
    silence_ms: float = 200.0
    drop_below_ms: float = 0.0


class AudioBuffer(nodehost.Node[AudioBufferParams]):
    """Each input message is one segment; segments accumulate until the utterance is long enough.

    An utterance goes out as one message once it holds at least ``min_utterance_ms`` (so a
    short segment, a word said on its own, is merged with the next one rather than sent to
    ASR alone), when it would exceed ``max_utterance_ms`` (Whisper sees 30 s at most), and at
    end of stream. ``silence_ms`` of silence is put between merged segments so the
    recognizer hears a pause where there was one.
    """

    def initialize(self) -> None:
        self._segments: list[np.ndarray] = []  # copies: input views die after process()
        self._frames = 0
        self._count = 0  # segments in the utterance being built
        self._format: tuple[int, int] | None = None

    def process(self, data: nodehost.RuntimeData, port: str) -> list[nodehost.RuntimeData]:
        fmt = audio_format(data)
        rate = fmt[0]
        out: list[nodehost.RuntimeData] = []
        if self._format is not None and fmt != self._format:
            out += self._flush()
        self._format = fmt
        segment = frames_of(data, copy=True)
        limit = int(rate * self.params.max_utterance_ms / 1000)
        if self._frames and self._frames + len(segment) > limit:
            out += self._flush()
        if self._segments and self.params.silence_ms > 0:
            gap = int(rate * self.params.silence_ms / 1000)
            self._segments.append(np.zeros((gap, fmt[1]), np.float32))
            self._frames += gap
        self._segments.append(segment)
        self._frames += len(segment)
        self._count += 1
        if self._frames >= rate * self.params.min_utterance_ms / 1000:
            out += self._flush()
        return out

    def end_of_stream(self, port: str) -> list[nodehost.RuntimeData]:
        return self._flush()

    def _flush(self) -> list[nodehost.RuntimeData]:
        if not self._segments or self._format is None:
            return []
        utterance = np.concatenate(self._segments)
        segments, self._count = self._count, 0
        self._segments, self._frames = [], 0
        rate = self._format[0]
        if len(utterance) < rate * self.params.drop_below_ms / 1000:
            self.logger.info("dropping a %.0f ms utterance", 1000 * len(utterance) / rate)
            return []
        self.logger.info("utterance: %.2f s from %d segment(s)", len(utterance) / rate, segments)
        return [make_audio(utterance, rate)]
