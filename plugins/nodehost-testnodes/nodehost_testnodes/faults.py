"""Fault injection: a pass-through node that fails in a chosen way."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Literal

from pydantic import BaseModel
from typing_extensions import TypeVar

import nodehost
from nodehost import RuntimeData

if "--import-error" in os.environ.get("NODEHOST_TEST_FAULTS", ""):
    raise ImportError("injected import failure")


class FaultyParams(BaseModel):
    """The params of Faulty's manifest, typed (nodehost checks the names match)."""

    mode: str = 'none'
    after: int = 0


# FaultySource and FaultySink extend the params (Faulty[FaultySourceParams]).
FaultyP = TypeVar("FaultyP", bound=FaultyParams, default=FaultyParams)


class Faulty(nodehost.Node[FaultyP]):
    def initialize(self) -> None:
        self.seen = 0
        mode = self.params.mode
        if mode == "init_exception":
            raise RuntimeError("injected failure in initialize")
        if mode == "hang_init":
            while True:
                time.sleep(3600)
        if mode == "import_error":
            raise ImportError("No module named 'injected_missing_dependency'")

    def process(self, data: RuntimeData, port: str) -> RuntimeData | None:
        if self.seen >= self.params.after:
            self.fail()
        self.seen += 1
        return data

    def fail(self) -> None:
        mode = self.params.mode
        self.logger.info("failing now: %s at %.6f", mode, time.time())
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "sigsegv":
            ctypes.string_at(0)  # a real segmentation fault, not a raised signal
        elif mode == "exit":
            sys.stdout.flush()
            os._exit(3)
        elif mode == "process_exception":
            raise ValueError(f"injected failure after {self.seen} messages")
        elif mode == "memory":
            hog = []
            while True:  # grows until the memory limit stops it
                hog.append(bytearray(64 * 1024 * 1024))


class MemoryHogParams(BaseModel):
    """The params of MemoryHog's manifest, typed (nodehost checks the names match)."""

    stage: Literal['none', 'initialize', 'process'] = 'none'
    how: Literal['python', 'native', 'abort'] = 'python'
    chunk_mb: int = 16
    total_mb: int = 0


class MemoryHog(nodehost.Node[MemoryHogParams]):
    """Allocates until the memory limit stops it, the way Python or a C library meets it."""

    def initialize(self) -> None:
        self.hog: list[object] = []
        if self.params.stage == "initialize":
            self.allocate()

    def process(self, data: RuntimeData, port: str) -> RuntimeData:
        if self.params.stage == "process":
            self.allocate()
        return data

    def allocate(self) -> None:
        size = self.params.chunk_mb << 20
        blocks = self.params.total_mb // self.params.chunk_mb or None  # None: until stopped
        malloc = ctypes.CDLL(None).malloc
        malloc.restype = ctypes.c_void_p
        malloc.argtypes = (ctypes.c_size_t,)
        while blocks is None or len(self.hog) < blocks:
            if self.params.how == "python":  # MemoryError from the interpreter
                self.hog.append(bytearray(size))
                continue
            block = malloc(size)
            if not block and self.params.how == "abort":  # Rust's default allocation error
                os.write(2, f"memory allocation of {size} bytes failed\n".encode())
                os.abort()
            if not block:  # what a native library turns into its own error, like mkl_malloc
                raise RuntimeError("hog_malloc: failed to allocate memory")
            ctypes.memset(block, 1, size)
            self.hog.append(block)
