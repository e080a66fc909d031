"""Probe nodes: a numbered source, a pass-through, and a sink that checks what arrives."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost import RuntimeData
from nodehost.bench_runtime import iterations_per_ms, spin

HEADER = 16  # payload starts with two little-endian uint64: sequence number and seed
_HEAD = struct.Struct("<QQ")


def fill_value(seq: int, seed: int) -> int:
    return (seq * 7 + seed) & 0xFF


def fill_probe(buf: np.ndarray, seq: int, seed: int) -> None:
    buf[HEADER:] = fill_value(seq, seed)
    _HEAD.pack_into(buf.data, 0, seq, seed)


SMALL = 64 * 1024  # payloads up to this size are checked against a cached byte pattern


@functools.lru_cache(maxsize=256)
def _pattern(value: int, size: int) -> bytes:
    return bytes([value]) * size


def intact(body: np.ndarray, value: int) -> bool:
    """Every byte of ``body`` is ``value`` (a bytes compare for small payloads: a numpy
    reduction costs more than the whole hop of a 1 KiB message)."""
    if body.size <= SMALL:
        return body.tobytes() == _pattern(value, body.size)
    return bool(np.all(body == value))


class ProbeSourceParams(BaseModel):
    """The params of ProbeSource's manifest, typed (nodehost checks the names match)."""

    count: int = 100
    payload_bytes: int = 1024
    seed: int = 0
    interval_ms: float = 0.0
    zero_copy: bool = True


class ProbeSource(nodehost.Node[ProbeSourceParams]):
    def generate(self) -> Iterator[RuntimeData]:
        p = self.params
        scratch = np.empty(p.payload_bytes, dtype=np.uint8)
        for seq in range(p.count):
            if p.zero_copy and self.can_loan:
                with self.loan_tensor("out", (p.payload_bytes,), np.uint8) as buf:
                    fill_probe(buf, seq, p.seed)
            else:
                fill_probe(scratch, seq, p.seed)
                yield RuntimeData.tensor(scratch)
            if p.interval_ms:
                time.sleep(p.interval_ms / 1000)


class ForwardParams(BaseModel):
    """The params of Forward's manifest, typed (nodehost checks the names match)."""

    work_iterations: int = 0
    work_ms: float = 0.0


class Forward(nodehost.Node[ForwardParams]):
    def initialize(self) -> None:
        self.iterations = self.params.work_iterations or (
            int(self.params.work_ms * iterations_per_ms()) if self.params.work_ms else 0)

    def process(self, data: RuntimeData, port: str) -> RuntimeData:
        if self.iterations:
            spin(self.iterations)
        return data


class AsyncForward(nodehost.Node):
    async def process(self, data: RuntimeData, port: str) -> RuntimeData:
        await asyncio.sleep(0)
        return data


class SlowInitParams(BaseModel):
    """The params of SlowInit's manifest, typed (nodehost checks the names match)."""

    init_s: float = 1.0


class SlowInit(nodehost.Node[SlowInitParams]):
    def initialize(self) -> None:
        steps = 10
        for step in range(steps):
            self.progress(step / steps, f"warming up {step + 1}/{steps}")
            time.sleep(self.params.init_s / steps)
        self.progress(1.0, "warm")

    def process(self, data: RuntimeData, port: str) -> RuntimeData:
        return data


class ChattyParams(BaseModel):
    """The params of Chatty's manifest, typed (nodehost checks the names match)."""

    lines: int = 1
    crash_after: int = 0


class Chatty(nodehost.Node[ChattyParams]):
    """Prints ``lines`` numbered lines per message, alternately to stdout and stderr."""

    def initialize(self) -> None:
        self.seen = 0
        self.printed = 0

    def process(self, data: RuntimeData, port: str) -> RuntimeData:
        self.seen += 1
        for _ in range(self.params.lines):
            self.printed += 1
            stream = sys.stdout if self.printed % 2 else sys.stderr
            print(f"chatty line {self.printed}", file=stream, flush=True)
        if self.params.crash_after and self.seen >= self.params.crash_after:
            print(f"chatty dies after {self.seen} messages", file=sys.stderr, flush=True)
            os._exit(3)
        return data


LATENCY_SLOTS = 1 << 16


class ProbeSinkParams(BaseModel):
    """The params of ProbeSink's manifest, typed (nodehost checks the names match)."""

    out_path: str
    delay_ms: float = 0.0
    cleanup_s: float = 0.0
    cleanup_path: str | None = None


class ProbeSink(nodehost.Node[ProbeSinkParams]):
    def initialize(self) -> None:
        self.count = 0
        self.expected: dict[int, int] = {}  # seed -> next sequence number
        self.in_order = True
        self.intact = True
        self.sizes: set[int] = set()
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.first_mono: float | None = None
        self.last_mono: float | None = None
        # send stamp → here (node code holds the data), the newest LATENCY_SLOTS messages: a
        # ring written up front (its pages are touched now), so a long stream's sink does not
        # grow by one float per message (the reliability suite measures the sink's RSS).
        self.latencies_us = np.full(LATENCY_SLOTS, np.nan)
        self.latency_count = 0

    def process(self, data: RuntimeData, port: str) -> None:
        mono_ns = time.monotonic_ns()
        self.latencies_us[self.latency_count % LATENCY_SLOTS] = (mono_ns - data.timestamp_ns) / 1e3
        self.latency_count += 1
        buf = data.as_array().view(np.uint8).reshape(-1)
        now = time.time()
        if self.first_ts is None:
            self.first_ts = now
            self.first_mono = mono_ns / 1e9
        self.last_ts = now
        self.last_mono = mono_ns / 1e9
        seq, seed = _HEAD.unpack_from(buf.data)
        if seq != self.expected.get(seed, 0):
            self.in_order = False
        self.expected[seed] = seq + 1
        if buf.size > HEADER and not intact(buf[HEADER:], fill_value(seq, seed)):
            self.intact = False
        self.sizes.add(int(buf.size))
        self.count += 1
        if self.params.delay_ms:
            time.sleep(self.params.delay_ms / 1000)

    def end_of_stream(self, port: str) -> None:
        summary: dict[str, Any] = {
            "count": self.count,
            "in_order": self.in_order,
            "intact": self.intact,
            "seeds": {str(k): v for k, v in self.expected.items()},
            "sizes": sorted(self.sizes),
            "pid": os.getpid(),
            "node_id": self.node_id,
            "session_id": self.session_id,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            # what the process ran with: the pipeline config's env and memory limit
            "env": dict(os.environ),
            "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA)[0],
            "first_mono": self.first_mono,
            "last_mono": self.last_mono,
            "latency_p50_us": (float(np.median(
                self.latencies_us[:min(self.latency_count, LATENCY_SLOTS)]))
                if self.latency_count else None),
        }
        with open(self.params.out_path, "w", encoding="utf-8") as fh:
            json.dump(summary, fh)

    def cleanup(self) -> None:
        time.sleep(self.params.cleanup_s)
        if self.params.cleanup_path:
            with open(self.params.cleanup_path, "w", encoding="utf-8") as fh:
                fh.write("cleaned")


class FileReaderParams(BaseModel):
    """The params of FileReader's manifest, typed (nodehost checks the names match)."""

    path: str
    reader: Literal["open", "soundfile"] = "open"


class FileReader(nodehost.Node[FileReaderParams]):
    def generate(self) -> Iterator[RuntimeData]:
        if self.params.reader == "soundfile":
            import soundfile

            size = len(soundfile.read(self.params.path)[0])
        else:
            with open(self.params.path, "rb") as fh:
                size = len(fh.read())
        yield RuntimeData.text(str(size))


class ProbeMergeParams(BaseModel):
    """The params of ProbeMerge's manifest, typed (nodehost checks the names match)."""

    out_path: str


class ProbeMerge(nodehost.Node[ProbeMergeParams]):
    """Two inputs, each checked like ProbeSink checks its one; the summary is per port."""

    def initialize(self) -> None:
        self.ports: dict[str, dict[str, Any]] = {}

    def process(self, data: RuntimeData, port: str) -> None:
        buf = data.as_array().view(np.uint8).reshape(-1)
        seq, seed = _HEAD.unpack_from(buf.data)
        state = self.ports.setdefault(port, {"count": 0, "in_order": True, "intact": True,
                                             "seeds": {}})
        if seq != state["seeds"].get(str(seed), 0):
            state["in_order"] = False
        state["seeds"][str(seed)] = seq + 1
        if buf.size > HEADER and not intact(buf[HEADER:], fill_value(seq, seed)):
            state["intact"] = False
        state["count"] += 1

    def end_of_stream(self, port: str) -> None:
        self.ports.setdefault(port, {"count": 0})["ended"] = True
        if all(self.ports.get(p, {}).get("ended") for p in ("left", "right")):
            with open(self.params.out_path, "w", encoding="utf-8") as fh:
                json.dump(self.ports, fh)
