"""``nodehost bench``: one-way hop latency and throughput of nodehost channels against the
baselines a user would otherwise reach for, measured side by side in one run; then the
runtime scenarios of ``bench_runtime`` (whole sessions of real node processes).

Method (every transport the same way): a writer process and a reader process. The writer
stamps ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for the whole machine) when it
hands a message over; the reader takes a second stamp when it holds the data (for nodehost:
a RuntimeData with a zero-copy view of the payload) and reports the difference. Latency runs
send one message at a time (the writer waits for the reader's go-ahead on a side pipe, off
the clock), so no queueing is measured; throughput runs stream 1 KiB messages as fast as the
transport allows. The payload is produced each time by the writer: filled in place in a
loaned sample for nodehost and iceoryx2, written into the segment for mp-shm, a prepared
bytes object for mp-pipe (which copies it through the kernel).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

SIZES = [1024, 64 * 1024, 1024 * 1024, 10 * 1024 * 1024]
TRANSPORTS = ["nodehost", "iceoryx2-raw", "mp-pipe", "mp-shm"]
_STAMP = struct.Struct("<Q")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _capacity(size: int) -> int:
    return 1 << (size + 256).bit_length()


# --------------------------------------------------------------------------- readers

def _reader(transport: str, name: str, size: int, count: int, ctl: Connection,
            extra: Any) -> None:
    lat: list[float] = []
    if transport == "nodehost":
        from nodehost.channels import DataPlane

        plane = DataPlane(f"bench-r-{os.getpid()}")
        reader = plane.open_reader(name, _capacity(size))
        ctl.send("ready")
        while len(lat) < count:
            plane.wait([reader], timeout=10)
            while (data := reader.receive()) is not None:
                now = time.monotonic_ns()
                data.as_array()
                lat.append((now - data.timestamp_ns) / 1000)
                del data
                ctl.send("go")
        ctl.send(lat)
        plane.close()
    elif transport == "iceoryx2-raw":
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        svc = (node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8]).open_or_create())
        sub = svc.subscriber_builder().create()
        listener = (node.service_builder(iox2.ServiceName.new(name + "/ev")).event()
                    .open_or_create().listener_builder().create())
        ctl.send("ready")
        while len(lat) < count:
            listener.timed_wait(iox2.Duration.from_secs(10))
            while (sample := sub.receive()) is not None:
                now = time.monotonic_ns()
                (ts,) = _STAMP.unpack_from(
                    (ctypes.c_uint8 * 8).from_address(sample.payload_ptr))
                lat.append((now - ts) / 1000)
                sample.delete()
                ctl.send("go")
        ctl.send(lat)
    elif transport == "mp-pipe":
        data_conn: Connection = extra
        ctl.send("ready")
        while len(lat) < count:
            raw = data_conn.recv_bytes()
            now = time.monotonic_ns()
            lat.append((now - _STAMP.unpack_from(raw)[0]) / 1000)
            ctl.send("go")
        ctl.send(lat)
    else:  # mp-shm
        from multiprocessing import shared_memory

        queue = extra
        ctl.send("ready")
        while len(lat) < count:
            shm_name = queue.get()
            seg = shared_memory.SharedMemory(shm_name)
            now = time.monotonic_ns()
            lat.append((now - _STAMP.unpack_from(seg.buf or b"")[0]) / 1000)
            seg.close()
            ctl.send("go")
        ctl.send(lat)


# --------------------------------------------------------------------------- writers

def _writer_for(transport: str, name: str, size: int, extra: Any
                ) -> tuple[Callable[[], None], Callable[[], None]]:
    """(send one message, clean up)."""
    if transport == "nodehost":
        import numpy as np

        from nodehost.channels import DataPlane

        plane = DataPlane(f"bench-w-{os.getpid()}")
        writer = plane.open_writer(name, _capacity(size), readers=1)

        def send_nodehost() -> None:
            with writer.loan_tensor((size,), np.uint8) as array:
                array[:8] = 1  # the payload is written in place; the header carries the stamp

        return send_nodehost, plane.close
    if transport == "iceoryx2-raw":
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        svc = (node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8]).open_or_create())
        pub = (svc.publisher_builder().initial_max_slice_len(size)
               .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo).create())
        notifier = (node.service_builder(iox2.ServiceName.new(name + "/ev")).event()
                    .open_or_create().notifier_builder().create())

        def send_raw() -> None:
            sample = pub.loan_slice_uninit(size)
            buf = (ctypes.c_uint8 * 8).from_address(sample.payload_ptr)
            _STAMP.pack_into(buf, 0, time.monotonic_ns())
            sample.assume_init().send()
            notifier.notify()

        return send_raw, lambda: None
    if transport == "mp-pipe":
        ours = extra
        payload = bytearray(size)

        def send_pipe() -> None:
            _STAMP.pack_into(payload, 0, time.monotonic_ns())
            ours.send_bytes(payload)

        return send_pipe, ours.close
    from multiprocessing import shared_memory

    queue = extra
    segments: list[Any] = []

    def send_shm() -> None:
        seg = shared_memory.SharedMemory(create=True, size=size)
        segments.append(seg)
        assert seg.buf is not None
        _STAMP.pack_into(seg.buf, 0, time.monotonic_ns())
        queue.put(seg.name)

    def cleanup() -> None:
        for seg in segments:
            seg.close()
            seg.unlink()

    return send_shm, cleanup


def measure(transport: str, size: int, count: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    name = f"nodehost-bench/{os.getpid()}/{transport}/{size}"
    writer_extra: Any = None
    reader_extra: Any = None
    if transport == "mp-pipe":
        writer_extra, reader_extra = ctx.Pipe()
    elif transport == "mp-shm":
        writer_extra = reader_extra = ctx.Queue()
    proc = ctx.Process(target=_reader,
                       args=(transport, name, size, count, theirs, reader_extra))
    proc.start()
    send, cleanup = _writer_for(transport, name, size, writer_extra)
    if ours.recv() != "ready":
        raise RuntimeError(f"{transport} reader did not start")
    for _ in range(count):
        send()
        ours.recv()  # one message in flight: latency without queueing
    lat: list[float] = ours.recv()
    proc.join(30)
    cleanup()
    return {"transport": transport, "payload_bytes": size,
            "p50_us": round(statistics.median(lat), 1),
            "p95_us": round(_percentile(lat, 0.95), 1),
            "p99_us": round(_percentile(lat, 0.99), 1)}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "processor": platform.processor() or None}


def _table(results: list[dict[str, Any]]) -> str:
    base = {(r["transport"], r["payload_bytes"]): r["p50_us"] for r in results}
    lines = [f"{'transport':<14}{'payload':>10}{'p50 µs':>10}{'p95 µs':>10}{'p99 µs':>10}"
             f"{'÷ raw':>9}  {'pipe ÷ this':>11}"]
    for r in results:
        raw = base.get(("iceoryx2-raw", r["payload_bytes"]))
        pipe = base.get(("mp-pipe", r["payload_bytes"]))
        vs_raw = f"{r['p50_us'] / raw:.2f}×" if raw else "-"
        vs_pipe = f"{pipe / r['p50_us']:.1f}×" if pipe and r["p50_us"] else "-"
        lines.append(f"{r['transport']:<14}{r['payload_bytes']:>10}{r['p50_us']:>10}"
                     f"{r['p95_us']:>10}{r['p99_us']:>10}{vs_raw:>9}  {vs_pipe}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodehost bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    parser.add_argument("--no-runtime", action="store_true",
                        help="skip the session scenarios (needs nodehost-testnodes)")
    args = parser.parse_args(argv)
    count = 50 if args.quick else 400
    results = []
    for size in SIZES:
        for transport in TRANSPORTS:
            n = count if size < 1024 * 1024 else max(20, count // 4)
            if not args.json:
                print(f"measuring {transport} {size} bytes ...", file=sys.stderr)
            results.append(measure(transport, size, n))
    runtime: list[dict[str, Any]] = []
    if not args.no_runtime:
        from nodehost import bench_runtime

        runtime = bench_runtime.run_all(
            None if args.json else (lambda s: print(f"scenario {s} ...", file=sys.stderr)))
    if args.json:
        print(json.dumps({"results": results, "runtime": runtime, "machine": machine()},
                         indent=2))
        return 0
    print(_table(results))
    for scenario in runtime:
        print("  ".join(f"{k}={v}" for k, v in scenario.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
