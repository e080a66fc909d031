from speech_harness import make

__all__ = ["make"]
