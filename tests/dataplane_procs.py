"""Reader/writer processes for tests/test_dataplane.py (importable by spawned children)."""

from __future__ import annotations

import gc
import os
import time
from multiprocessing.connection import Connection

import numpy as np

from nodehost.channels import DataPlane


def read_all(name: str, capacity: int, backpressure: bool, delay_s: float,
             out: Connection) -> None:
    """Read until end of stream; report (first bytes of each message, dropped, pointer check)."""
    plane = DataPlane(f"test-reader-{os.getpid()}")
    reader = plane.open_reader(name, capacity, backpressure)
    out.send("ready")
    seen: list[int] = []
    zero_copy = True
    sizes: set[int] = set()
    while not reader.eos:
        plane.wait([reader], timeout=10)
        while (data := reader.receive()) is not None:
            array = data.as_array()
            address, _keep = data.payload_address()
            zero_copy = zero_copy and data.is_shared and array.ctypes.data == address \
                and not array.flags.writeable
            seen.append(int(array.reshape(-1).view(np.uint8)[0]))
            sizes.add(int(array.nbytes))
            del data, array, _keep
            if delay_s:
                time.sleep(delay_s)
    gc.collect()
    out.send({"seen": seen, "dropped": reader.dropped, "zero_copy": zero_copy,
              "sizes": sorted(sizes)})
    plane.close()
