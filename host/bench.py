"""``nodehost bench``: hop latency, throughput and memory of nodehost channels against the
baselines a user would otherwise reach for, measured side by side in one run; then the
runtime scenarios of ``bench_runtime`` (whole sessions of real node processes).

Latency (every transport the same way): a writer process and a reader process. The writer
stamps ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for the whole machine) when it
hands a message over; the reader takes a second stamp when it holds the data (for nodehost:
a RuntimeData with a zero-copy view of the payload) and keeps the difference. One message is
in flight at a time (the writer waits for the reader's go-ahead on a side pipe, off the
clock), so no queueing is measured. The payload is produced each time by the writer: filled
in place in a loaned sample for nodehost and iceoryx2, written into the segment for mp-shm, a
prepared bytes object for mp-pipe (which copies it through the kernel).

Placement: both processes are pinned, to one core ("same-core": the hop is a direct switch
from writer to reader) or to two ("cross-core": the reader sleeps on its own core and is
woken there). Left to the scheduler, a run lands in either case at random and its median
jumps between them; pinned, each figure is repeatable and every transport is measured alike.

Throughput: the writer streams 1 KiB messages as fast as the transport takes them (lossless:
nodehost and iceoryx2 with backpressure) to a reader that takes every one; messages per
second from the first send to the last receive. Processes are not pinned.

Memory: 10,000 messages of 1 MiB through one nodehost channel, each filled in place; the RSS
of writer and reader after 1,000, 5,000 and 10,000 (see ``_soak_marks``). Afterwards no
iceoryx2 file may be left in ``/dev/shm`` or ``/tmp/iceoryx2``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

SIZES = [1024, 64 * 1024, 1024 * 1024, 10 * 1024 * 1024]
TRANSPORTS = ["nodehost", "iceoryx2-raw", "mp-pipe", "mp-shm"]
PLACEMENTS = ["same-core", "cross-core"]
THROUGHPUT_BYTES = 1024
SOAK_BYTES = 1 << 20
_STAMP = struct.Struct("<Q")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _capacity(size: int) -> int:
    """A connection's default capacity (what a pipeline gets), or more for larger payloads."""
    from nodehost.config import DEFAULT_CAPACITY

    return max(DEFAULT_CAPACITY, 1 << (size - 1).bit_length())


def _cpus(placement: str) -> tuple[int | None, int | None]:
    """(writer cpu, reader cpu) for a placement; None: not pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "same-core":
        return cpus[-1], cpus[-1]
    if placement == "cross-core" and len(cpus) > 1:
        return cpus[0], cpus[1]
    return None, None


@contextlib.contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------- channel ends
# Each transport has one reader and one writer; ``recv()`` blocks until it holds a message
# and returns its send stamp, ``send()`` hands one over (stamped at hand-over).

class _Ends:
    """One transport's end in one process: ``send``/``recv``/``close``."""

    def send(self, fill: int = 0) -> None:
        raise NotImplementedError

    def recv(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Writer: end of stream and drain; reader: leave."""


class _Nodehost(_Ends):
    def __init__(self, name: str, size: int, writer: bool) -> None:
        import numpy as np

        from nodehost.channels import DataPlane

        self.np = np
        self.size = size
        self.plane = DataPlane(f"bench-{'w' if writer else 'r'}-{os.getpid()}")
        if writer:
            self.writer = self.plane.open_writer(name, _capacity(size), readers=1)
        else:
            self.reader = self.plane.open_reader(name, _capacity(size))
        self.pending: list[Any] = []

    def send(self, fill: int = 0) -> None:
        with self.writer.loan_tensor((self.size,), self.np.uint8) as array:
            if fill:
                array[:] = fill & 0xFF   # the whole payload written in place
            else:
                array[:8] = 1            # the header carries the stamp

    def recv(self) -> int:
        while True:
            data = self.reader.receive()
            if data is not None:
                data.as_array()          # the zero-copy view a node would work on
                return data.timestamp_ns
            if self.reader.eos:
                raise EOFError
            self.plane.wait([self.reader], timeout=30)

    def close(self) -> None:
        self.plane.close()


class _Raw(_Ends):
    """iceoryx2 with nothing around it: the floor. Lossless: the publisher retries until
    the subscriber has room (iceoryx2 spins inside Rust)."""

    def __init__(self, name: str, size: int, writer: bool) -> None:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self.iox2 = iox2
        self.size = size
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        svc = (self.node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8])
               .enable_safe_overflow(False).subscriber_max_buffer_size(16).open_or_create())
        event = (self.node.service_builder(iox2.ServiceName.new(name + "/ev")).event()
                 .open_or_create())
        if writer:
            self.pub = (svc.publisher_builder().initial_max_slice_len(size)
                        .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                        .create())
            self.notifier = event.notifier_builder().create()
        else:
            self.sub = svc.subscriber_builder().buffer_size(16).create()
            self.listener = event.listener_builder().create()
        self.ports = [svc, event]

    def send(self, fill: int = 0) -> None:
        sample = self.pub.loan_slice_uninit(self.size)
        if fill:
            ctypes.memset(sample.payload_ptr, fill & 0xFF, self.size)
        _STAMP.pack_into((ctypes.c_uint8 * 8).from_address(sample.payload_ptr), 0,
                         time.monotonic_ns())
        sample.assume_init().send()
        self.notifier.notify()

    def recv(self) -> int:
        while True:
            sample = self.sub.receive()
            if sample is not None:
                (stamp,) = _STAMP.unpack_from((ctypes.c_uint8 * 8).from_address(
                    sample.payload_ptr))
                sample.delete()
                return int(stamp)
            self.listener.timed_wait(self.iox2.Duration.from_secs(30))

    def close(self) -> None:
        for name in ("pub", "notifier", "sub", "listener"):
            port = getattr(self, name, None)
            if port is not None:
                port.delete()
        self.ports.clear()
        self.node = None


class _Pipe(_Ends):
    def __init__(self, conn: Connection, size: int) -> None:
        self.conn = conn
        self.payload = bytearray(size)

    def send(self, fill: int = 0) -> None:
        if fill:
            self.payload[:] = bytes([fill & 0xFF]) * len(self.payload)
        _STAMP.pack_into(self.payload, 0, time.monotonic_ns())
        self.conn.send_bytes(self.payload)

    def recv(self) -> int:
        return int(_STAMP.unpack_from(self.conn.recv_bytes())[0])

    def close(self) -> None:
        self.conn.close()


class _Shm(_Ends):
    """A new ``multiprocessing.shared_memory`` segment per message, its name on a queue."""

    def __init__(self, queue: Any, size: int) -> None:
        self.queue = queue
        self.size = size
        self.segments: list[Any] = []

    def send(self, fill: int = 0) -> None:
        from multiprocessing import shared_memory

        seg = shared_memory.SharedMemory(create=True, size=self.size)
        self.segments.append(seg)
        assert seg.buf is not None
        if fill:
            seg.buf[:self.size] = bytes([fill & 0xFF]) * self.size
        _STAMP.pack_into(seg.buf, 0, time.monotonic_ns())
        self.queue.put(seg.name)

    def recv(self) -> int:
        from multiprocessing import shared_memory

        seg = shared_memory.SharedMemory(self.queue.get())
        stamp = int(_STAMP.unpack_from(seg.buf or b"")[0])
        seg.close()
        return stamp

    def close(self) -> None:
        for seg in self.segments:
            seg.close()
            seg.unlink()
        self.segments.clear()


def _open(transport: str, name: str, size: int, writer: bool, extra: Any) -> _Ends:
    if transport == "nodehost":
        return _Nodehost(name, size, writer)
    if transport == "iceoryx2-raw":
        return _Raw(name, size, writer)
    if transport == "mp-pipe":
        return _Pipe(extra, size)
    return _Shm(extra, size)


def _rss_kib() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss // 1024)


# --------------------------------------------------------------------------- reader process

def _reader(mode: str, transport: str, name: str, size: int, count: int, cpu: int | None,
            ctl: Connection, extra: Any) -> None:
    with _pinned(cpu):
        ends = _open(transport, name, size, False, extra)
        ctl.send("ready")
        if mode == "latency":
            lat: list[float] = []
            for _ in range(count):
                stamp = ends.recv()
                lat.append((time.monotonic_ns() - stamp) / 1000)
                ctl.send("go")
            ctl.send(lat)
        elif mode == "throughput":
            for _ in range(count):
                ends.recv()
            ctl.send(time.monotonic_ns())
        else:  # soak: RSS after a tenth, half and all of the messages
            rss = []
            for i in range(count):
                ends.recv()
                if i + 1 in _soak_marks(count):
                    rss.append(_rss_kib())
            ctl.send(rss)
        ends.close()


class _Run:
    """A reader process and this process's writer for one transport."""

    def __init__(self, mode: str, transport: str, size: int, count: int,
                 cpus: tuple[int | None, int | None] = (None, None)) -> None:
        ctx = mp.get_context("spawn")
        self.ctl, theirs = ctx.Pipe()
        name = f"nodehost-bench/{os.getpid()}/{mode}/{transport}/{size}"
        writer_extra: Any = None
        reader_extra: Any = None
        if transport == "mp-pipe":
            reader_extra, writer_extra = ctx.Pipe(duplex=False)
        elif transport == "mp-shm":
            writer_extra = reader_extra = ctx.Queue()
        self.proc = ctx.Process(target=_reader, args=(mode, transport, name, size, count,
                                                      cpus[1], theirs, reader_extra))
        self.proc.start()
        theirs.close()
        self.writer = _open(transport, name, size, True, writer_extra)
        if not self.ctl.poll(60) or self.ctl.recv() != "ready":
            self.close()
            raise RuntimeError(f"the {transport} reader did not start")

    def result(self) -> Any:
        if not self.ctl.poll(300):
            raise RuntimeError("the reader did not report")
        return self.ctl.recv()

    def close(self) -> None:
        self.writer.close()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def latency(transport: str, size: int, count: int, placement: str) -> dict[str, Any]:
    cpus = _cpus(placement)
    with _pinned(cpus[0]):
        run = _Run("latency", transport, size, count, cpus)
        try:
            for _ in range(count):
                run.writer.send()
                run.ctl.recv()  # one message in flight: latency without queueing
            lat: list[float] = run.result()
        finally:
            run.close()
    return {"transport": transport, "payload_bytes": size, "placement": placement,
            "p50_us": round(statistics.median(lat), 1),
            "p95_us": round(_percentile(lat, 0.95), 1),
            "p99_us": round(_percentile(lat, 0.99), 1)}


def throughput(transport: str, count: int) -> float:
    run = _Run("throughput", transport, THROUGHPUT_BYTES, count)
    try:
        started = time.monotonic_ns()
        for _ in range(count):
            run.writer.send()
        ended: int = run.result()
    finally:
        run.close()
    return round(count / ((ended - started) / 1e9))


def soak(count: int) -> dict[str, Any]:
    """``count`` messages of 1 MiB through one nodehost channel, each filled in place."""
    run = _Run("soak", "nodehost", SOAK_BYTES, count)
    writer_rss = []
    try:
        for i in range(count):
            run.writer.send(fill=i + 1)
            if i + 1 in _soak_marks(count):
                writer_rss.append(_rss_kib())
        reader_rss: list[int] = run.result()
    finally:
        run.close()
    return {"messages": count, "payload_bytes": SOAK_BYTES, "rss_at": list(_soak_marks(count)),
            "writer_rss_kib": writer_rss, "reader_rss_kib": reader_rss,
            "writer_growth_kib": writer_rss[2] - writer_rss[1],
            "reader_growth_kib": reader_rss[2] - reader_rss[1]}


def _soak_marks(count: int) -> tuple[int, int, int]:
    """When RSS is sampled. Growth is judged over the second half: during the first messages
    RSS rises once by the sample pool's shared-memory pages being touched for the first
    time (bounded by the pool, about 10 MiB for 1 MiB messages), not by a leak."""
    return count // 10, count // 2, count


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "processor": platform.processor() or None}


# --------------------------------------------------------------------------- report

def targets(results: list[dict[str, Any]], soak_result: dict[str, Any] | None,
            leftovers: int) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the data-plane targets this run can judge."""
    out: list[tuple[str, str, bool]] = []
    p50 = {(r["transport"], r["payload_bytes"], r["placement"]): r["p50_us"] for r in results}
    rate = {r["transport"]: r["msgs_per_s"] for r in results if "msgs_per_s" in r}
    for placement in PLACEMENTS:
        ours = {s: v for (t, s, p), v in p50.items() if t == "nodehost" and p == placement}
        if not ours:
            continue
        worst = max(ours.values())
        out.append((f"{placement}: nodehost p50 <= 50 us at every size", f"max {worst} us",
                    worst <= 50))
        small, large = ours.get(min(ours)), ours.get(max(ours))
        if small and large and max(ours) > min(ours):
            out.append((f"{placement}: p50 at {max(ours)} B <= 2x p50 at {min(ours)} B",
                        f"{large / small:.2f}x", large <= 2 * small))
        raw = p50.get(("iceoryx2-raw", min(ours), placement))
        if raw and small:
            out.append((f"{placement}: {min(ours)} B within 2.5x of raw iceoryx2",
                        f"{small / raw:.2f}x", small <= 2.5 * raw))
        pipe = p50.get(("mp-pipe", max(ours), placement))
        if pipe and large:
            out.append((f"{placement}: {max(ours)} B >= 50x faster than mp-pipe",
                        f"{pipe / large:.0f}x", pipe >= 50 * large))
    worst99 = max((r["p99_us"] for r in results if r["transport"] == "nodehost"), default=None)
    if worst99 is not None:
        out.append(("nodehost p99 <= 1 ms", f"max {worst99} us", worst99 <= 1000))
    if "nodehost" in rate:
        out.append(("1 KiB messages/s through one channel >= 50,000",
                    f"{rate['nodehost']:,}", rate["nodehost"] >= 50_000))
    if soak_result:
        growth = max(soak_result["writer_growth_kib"], soak_result["reader_growth_kib"])
        half = soak_result["messages"] // 2
        out.append((f"RSS flat over {soak_result['messages']:,} x 1 MiB (growth < 1 MiB "
                    f"over the last {half:,})", f"{growth} KiB", growth < 1024))
    out.append(("no iceoryx2 file left after the channels closed", f"{leftovers} left",
                leftovers == 0))
    return out


def _table(results: list[dict[str, Any]]) -> str:
    base = {(r["transport"], r["payload_bytes"], r["placement"]): r["p50_us"] for r in results}
    lines = [f"{'placement':<11}{'transport':<14}{'payload':>10}{'p50 µs':>9}{'p95 µs':>9}"
             f"{'p99 µs':>9}{'÷ raw':>8}  {'pipe ÷ this':>11}  {'msgs/s':>9}"]
    for r in results:
        key = (r["payload_bytes"], r["placement"])
        raw = base.get(("iceoryx2-raw", *key))
        pipe = base.get(("mp-pipe", *key))
        vs_raw = f"{r['p50_us'] / raw:.2f}×" if raw else "-"
        vs_pipe = f"{pipe / r['p50_us']:.1f}×" if pipe and r["p50_us"] else "-"
        rate = f"{r['msgs_per_s']:,}" if "msgs_per_s" in r else ""
        lines.append(f"{r['placement']:<11}{r['transport']:<14}{r['payload_bytes']:>10}"
                     f"{r['p50_us']:>9}{r['p95_us']:>9}{r['p99_us']:>9}{vs_raw:>8}  "
                     f"{vs_pipe:>11}  {rate:>9}")
    return "\n".join(lines)


def _sizes(value: str) -> list[int]:
    try:
        return [int(x) for x in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a comma-separated list of byte counts (e.g. 1024,65536)"
            ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodehost bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quick", action="store_true",
                        help="fewer messages (a smoke run: medians of 50, not 400)")
    parser.add_argument("--no-runtime", action="store_true",
                        help="skip the session scenarios (needs nodehost-testnodes)")
    parser.add_argument("--sizes", type=_sizes, default=SIZES,
                        help="payload sizes in bytes, comma-separated")
    parser.add_argument("--placement", choices=[*PLACEMENTS, "both"], default="both",
                        help="pin writer and reader to one core, to two, or measure both")
    parser.add_argument("--peers", action="store_true",
                        help="also run the node workloads on dora-rs and multiprocessing "
                             "queues (pip install 'nodehost[peers]') and print the ratios")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs per peer workload (median taken; default 3, 1 with --quick)")
    args = parser.parse_args(argv)
    if any(s < 8 for s in args.sizes):
        parser.error("--sizes: every payload needs at least 8 bytes (the send stamp)")
    count = 50 if args.quick else 400
    say: Callable[[str], None] = (lambda s: None) if args.json else \
        (lambda s: print(s, file=sys.stderr, flush=True))

    from nodehost.channels import cleanup_dead_nodes, leftover_files

    before = leftover_files()
    placements = PLACEMENTS if args.placement == "both" else [args.placement]
    results = []
    for placement in placements:
        for size in args.sizes:
            for transport in TRANSPORTS:
                n = count if size < (1 << 20) else max(20, count // 4)
                say(f"latency {placement} {transport} {size} bytes ...")
                results.append(latency(transport, size, n, placement))
    rates = {}
    for transport in TRANSPORTS:
        n = 2_000 if args.quick else 20_000
        if transport == "mp-shm":
            n //= 10  # a segment per message: slow, and each one a file until the end
        say(f"throughput {transport} {THROUGHPUT_BYTES} bytes x {n} ...")
        rates[transport] = throughput(transport, n)
    for r in results:
        if r["payload_bytes"] == THROUGHPUT_BYTES:
            r["msgs_per_s"] = rates[r["transport"]]
    if THROUGHPUT_BYTES not in args.sizes:
        results += [{"transport": t, "payload_bytes": THROUGHPUT_BYTES, "placement": "os",
                     "msgs_per_s": v} for t, v in rates.items()]
    n = 1_000 if args.quick else 10_000
    say(f"memory: {n} x 1 MiB through one nodehost channel ...")
    soak_result = soak(n)
    cleanup_dead_nodes()
    leftovers = sorted(leftover_files() - before)
    runtime: list[dict[str, Any]] = []
    if not args.no_runtime:
        from nodehost import bench_runtime

        runtime = bench_runtime.run_all(None if args.json else
                                        (lambda s: say(f"scenario {s} ...")))
    peers: dict[str, Any] | None = None
    if args.peers:
        from nodehost import bench_peers

        peers = bench_peers.run_all(args.rounds or (1 if args.quick else 3), quick=args.quick,
                                    progress=say)
    latency_rows = [r for r in results if "p50_us" in r]
    checks = targets(latency_rows, soak_result, len(leftovers))
    if args.json:
        report = {"results": results, "memory": soak_result, "leftover_files": leftovers,
                  "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks],
                  "runtime": runtime, "machine": machine()}
        if peers is not None:
            report["peers"] = peers
        print(json.dumps(report, indent=2))
        return 0
    print(_table(latency_rows))
    print(f"\nmessages/s of {THROUGHPUT_BYTES} B: "
          + ", ".join(f"{t} {v:,}" for t, v in rates.items()))
    marks = " / ".join(f"{m:,}" for m in soak_result["rss_at"])
    print(f"memory: {soak_result['messages']:,} x 1 MiB, RSS KiB after {marks} messages: "
          f"writer {' / '.join(f'{v:,}' for v in soak_result['writer_rss_kib'])}, "
          f"reader {' / '.join(f'{v:,}' for v in soak_result['reader_rss_kib'])}")
    print("\ntargets:")
    for target, measured, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {target}: {measured}")
    for scenario in runtime:
        print("  ".join(f"{k}={v}" for k, v in scenario.items()))
    if peers is not None:
        from nodehost import bench_peers

        print("\n" + bench_peers.table(peers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
