from audio_harness import make

__all__ = ["make"]
