"""Speech test helpers on top of nodehost.testing (which builds and feeds the nodes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def to_16k(data: Any) -> np.ndarray:
    """Piper's 22050 Hz output as the 16 kHz mono a VAD and Whisper take (one-shot soxr)."""
    import soxr

    samples = np.asarray(data.as_array(), np.float32).reshape(-1)
    return soxr.resample(samples, data.metadata.sample_rate, 16000).astype(np.float32)


def keywords_heard(text: str, words: Iterable[str]) -> set[str]:
    spoken = {w.strip(".,!?;:\"'").lower() for w in text.split()}
    return {w for w in words if w in spoken}
