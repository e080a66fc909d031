from speech_harness import make
from speech_sessions import host, tmp_out

__all__ = ["host", "make", "tmp_out"]
