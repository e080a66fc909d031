"""Fault injection at the ends of a pipeline: a source that fails in ``generate()`` and a sink
that fails in ``process()``, in the same ways as ``Faulty`` (the crash storm varies where in a
pipeline the failure happens, so "the right node" is a real check)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nodehost import RuntimeData
from nodehost_testnodes.faults import Faulty, FaultyParams
from nodehost_testnodes.probes import fill_probe


class FaultySourceParams(FaultyParams):
    """The params of FaultySource's manifest, typed (nodehost checks the names match)."""

    count: int = 100
    payload_bytes: int = 1024
    seed: int = 0


class FaultySource(Faulty[FaultySourceParams]):
    """Emits ``after`` probe messages, then fails (or, with mode ``none``, emits ``count``)."""

    def generate(self) -> Iterator[RuntimeData]:
        p = self.params
        buf = np.empty(p.payload_bytes, dtype=np.uint8)
        total = p.count if p.mode == "none" else p.after + 1
        for seq in range(total):
            if p.mode != "none" and self.seen >= p.after:
                self.fail()
            fill_probe(buf, seq, p.seed)
            self.seen += 1
            yield RuntimeData.tensor(buf)


class FaultySink(Faulty):
    """Takes ``after`` messages, then fails; with mode ``none`` it takes everything."""

    def process(self, data: RuntimeData, port: str) -> None:
        if self.params.mode != "none" and self.seen >= self.params.after:
            self.fail()
        self.seen += 1
