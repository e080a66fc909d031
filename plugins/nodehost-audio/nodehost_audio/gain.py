"""Gain: multiply audio by a constant factor."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost_audio._audio import audio_format, frames_of, make_audio


class GainParams(BaseModel):
    """The params of Gain's manifest, typed (nodehost checks the names match)."""

    gain: float = 1.0
    clip: bool = False


class Gain(nodehost.Node[GainParams]):
    def process(self, data: nodehost.RuntimeData, port: str) -> nodehost.RuntimeData:
        rate, _channels = audio_format(data)
        # The input is a read-only view onto shared memory: the product is a new array.
        out = frames_of(data) * np.float32(self.params.gain)
        if self.params.clip:
            np.clip(out, -1.0, 1.0, out=out)
        return make_audio(out, rate)
