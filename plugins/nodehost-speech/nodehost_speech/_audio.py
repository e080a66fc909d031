"""Audio helpers of the speech nodes (a copy of nodehost_audio._audio, so that this
distribution does not depend on that one): read a RuntimeData as frames, build one back.

Every node works on float32 arrays shaped ``(frames, channels)``; mono audio goes back out as
a 1-D array, which is what ``RuntimeData.audio`` takes for ``channels=1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nodehost.data import RuntimeData

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


def audio_format(data: RuntimeData) -> tuple[int, int]:
    """``(sample_rate, channels)`` of an audio message."""
    meta: Any = data.metadata
    rate = int(meta.sample_rate)
    channels = int(getattr(meta, "channels", 1) or 1)
    return rate, channels


def frames_of(data: RuntimeData, *, copy: bool = False) -> np.ndarray:
    """The samples as float32 ``(frames, channels)``.

    The array may be a read-only view onto shared memory that is released once ``process()``
    returns: a node that keeps samples across calls must pass ``copy=True``.
    """
    _rate, channels = audio_format(data)
    array = np.asarray(data.as_array())
    if array.dtype in _INT_SCALE:
        # Integer PCM (sample_format s16) becomes float in [-1, 1): a new array, so no copy.
        array = array.astype(np.float32) / np.float32(_INT_SCALE[array.dtype])
    elif array.dtype != np.float32:
        array = array.astype(np.float32)
    elif copy:
        array = array.copy()
    # Interleaved audio may arrive flat; the frame/channel layout is what every node wants.
    return array.reshape(-1, channels)


def make_audio(frames: np.ndarray, sample_rate: int) -> RuntimeData:
    """A RuntimeData from ``(frames, channels)`` float32 samples (1-D when mono)."""
    from nodehost import RuntimeData

    channels = 1 if frames.ndim == 1 else int(frames.shape[1])
    samples = frames.reshape(-1) if channels == 1 else frames
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    return RuntimeData.audio(samples, sample_rate=sample_rate, channels=channels)


def ms_to_frames(ms: float, sample_rate: int) -> int:
    return max(1, round(sample_rate * ms / 1000.0))


def require_format(data: RuntimeData, node_type: str, rate: int, channels: int = 1) -> None:
    """Fail with a fix in the message when audio is not what the model was trained on.

    Validation already checks declared rates; this catches sources whose rate is only known at
    run time (a WAV file).
    """
    got_rate, got_channels = audio_format(data)
    if (got_rate, got_channels) != (rate, channels):
        raise ValueError(
            f"{node_type} needs {rate} Hz, {channels} channel(s) audio but got {got_rate} Hz, "
            f"{got_channels} channel(s): insert a Resample node (and mono downmix) before it"
        )
