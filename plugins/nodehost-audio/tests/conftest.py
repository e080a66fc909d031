from audio_harness import make

from nodehost.testing import host, tmp_out

__all__ = ["host", "make", "tmp_out"]
