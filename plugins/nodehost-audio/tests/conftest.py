from audio_harness import make
from audio_sessions import host, tmp_out

__all__ = ["host", "make", "tmp_out"]
