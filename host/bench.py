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
from typing import Any, NamedTuple

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


def forward_cost(size: int = 10 << 20, count: int = 30) -> dict[str, Any]:
    """What a node that returns its input pays to forward it: ``send()`` of a received
    ``size``-byte message into another channel, against one plain memmove of as many bytes
    between private buffers, alternating in this process (medians). iceoryx2 cannot publish
    a received sample on another service, so one copy into the output sample is the floor."""
    import numpy as np

    from nodehost.channels import DataPlane

    name = f"nodehost-bench/{os.getpid()}/forward"  # (leftovers_of_this_run finds it)
    capacity = _capacity(size)
    send_ns: list[int] = []
    copy_ns: list[int] = []
    src = np.full(size, 3, np.uint8)
    dst = np.empty(size, np.uint8)
    with DataPlane(f"bench-forward-{os.getpid()}") as plane:
        into = plane.open_writer(f"{name}/in", capacity, readers=1)
        inbox = plane.open_reader(f"{name}/in", capacity, max_subscribers=1)
        out = plane.open_writer(f"{name}/out", capacity, readers=1)
        outbox = plane.open_reader(f"{name}/out", capacity, max_subscribers=1)
        for i in range(count):
            with into.loan_tensor((size,), np.uint8) as array:
                array[:] = i & 0xFF
            data = inbox.receive()
            assert data is not None
            started = time.perf_counter_ns()
            out.send(data)
            send_ns.append(time.perf_counter_ns() - started)
            forwarded = outbox.receive()
            assert forwarded is not None and forwarded.as_array()[-1] == i & 0xFF
            del data, forwarded
            started = time.perf_counter_ns()
            ctypes.memmove(dst.ctypes.data, src.ctypes.data, size)
            copy_ns.append(time.perf_counter_ns() - started)
    send, copy = statistics.median(send_ns) / 1e3, statistics.median(copy_ns) / 1e3
    return {"payload_bytes": size, "messages": count, "send_us": round(send, 1),
            "memmove_us": round(copy, 1), "ratio": round(send / copy, 2)}


def _soak_marks(count: int) -> tuple[int, int, int]:
    """When RSS is sampled. Growth is judged over the second half: during the first messages
    RSS rises once by the sample pool's shared-memory pages being touched for the first
    time (bounded by the pool, about 10 MiB for 1 MiB messages), not by a leak."""
    return count // 10, count // 2, count


def leftovers_of_this_run(before: set[str], settle_s: float = 5.0) -> list[str]:
    """What this bench left behind, attributed, not merely diffed (the machine may run other
    nodehost sessions meanwhile): the iceoryx2 service records that name this run's channels
    (``nodehost-bench/<pid>/...``), and ``/dev/shm`` files new since ``before`` that no live
    process maps — given other activity ``settle_s`` to map a file it is creating."""
    import glob

    from nodehost.testing import leaked_shm_files

    ours = f'service_name = "nodehost-bench/{os.getpid()}/'
    records = []
    for path in glob.glob("/tmp/iceoryx2/services/*.service"):
        with contextlib.suppress(OSError), open(path, encoding="utf-8",
                                                errors="replace") as fh:
            if ours in fh.read():
                records.append(path)
    deadline = time.monotonic() + settle_s
    while (files := leaked_shm_files(before)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return sorted(records) + sorted(files)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "processor": platform.processor() or None}


# --------------------------------------------------------------------------- report

class Target(NamedTuple):
    """One judged target. ``value`` and ``limit`` are numbers in one unit, so a later run can
    tell not only met/missed but by how much (``regressed``)."""

    target: str
    measured: str
    met: bool
    value: float
    limit: float
    higher_is_better: bool

    def regressed(self, factor: float) -> bool:
        """Worse than the target by more than ``factor`` (e.g. 4: a quarter of a rate, four
        times a latency)."""
        if self.higher_is_better:
            return self.value * factor < self.limit
        return self.value > self.limit * factor

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


def at_least(target: str, measured: str, value: float, limit: float) -> Target:
    return Target(target, measured, value >= limit, value, limit, True)


def at_most(target: str, measured: str, value: float, limit: float) -> Target:
    return Target(target, measured, value <= limit, value, limit, False)


def targets(results: list[dict[str, Any]], soak_result: dict[str, Any] | None,
            leftovers: int, forward: dict[str, Any] | None = None) -> list[Target]:
    """The data-plane targets this run can judge."""
    out: list[Target] = []
    p50 = {(r["transport"], r["payload_bytes"], r["placement"]): r["p50_us"] for r in results}
    rate = {r["transport"]: r["msgs_per_s"] for r in results if "msgs_per_s" in r}
    for placement in PLACEMENTS:
        ours = {s: v for (t, s, p), v in p50.items() if t == "nodehost" and p == placement}
        if not ours:
            continue
        worst = max(ours.values())
        out.append(at_most(f"{placement}: nodehost p50 <= 50 us at every size",
                           f"max {worst} us", worst, 50))
        small, large = ours.get(min(ours)), ours.get(max(ours))
        if small and large and max(ours) > min(ours):
            out.append(at_most(f"{placement}: p50 at {max(ours)} B <= 2x p50 at {min(ours)} B",
                               f"{large / small:.2f}x", large / small, 2))
        raw = p50.get(("iceoryx2-raw", min(ours), placement))
        if raw and small:
            out.append(at_most(f"{placement}: {min(ours)} B within 2.5x of raw iceoryx2",
                               f"{small / raw:.2f}x", small / raw, 2.5))
        pipe = p50.get(("mp-pipe", max(ours), placement))
        if pipe and large:
            out.append(at_least(f"{placement}: {max(ours)} B >= 50x faster than mp-pipe",
                                f"{pipe / large:.0f}x", pipe / large, 50))
    worst99 = max((r["p99_us"] for r in results if r["transport"] == "nodehost"), default=None)
    if worst99 is not None:
        out.append(at_most("nodehost p99 <= 1 ms", f"max {worst99} us", worst99, 1000))
    if "nodehost" in rate:
        out.append(at_least("1 KiB messages/s through one channel >= 50,000",
                            f"{rate['nodehost']:,}", rate["nodehost"], 50_000))
    if forward is not None:
        out.append(at_most(f"forwarding {forward['payload_bytes'] >> 20} MiB costs <= 1.5x "
                           "one memmove", f"{forward['ratio']}x", forward["ratio"], 1.5))
    if soak_result:
        growth = max(soak_result["writer_growth_kib"], soak_result["reader_growth_kib"])
        half = soak_result["messages"] // 2
        out.append(Target(f"RSS flat over {soak_result['messages']:,} x 1 MiB (growth < 1 MiB "
                          f"over the last {half:,})", f"{growth} KiB", growth < 1024,
                          growth, 1024, False))
    out.append(at_most("no iceoryx2 file left after the channels closed", f"{leftovers} left",
                       leftovers, 0))
    return out


def regressions(checks: list[Target], factor: float) -> list[Target]:
    """Targets missed by more than ``factor`` (a target of zero, such as leftover files,
    has no slack: missed is regressed)."""
    return [t for t in checks if (t.regressed(factor) if t.limit else not t.met)]


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
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a comma-separated list of byte counts (e.g. 1024,65536)"
            ) from exc


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
    parser.add_argument("--check", type=float, metavar="FACTOR", default=None,
                        help="exit 1 when a target is missed by more than FACTOR (e.g. 4: a "
                             "quarter of a target rate, 4x a target latency): a CI smoke run")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs per peer workload (median taken; default 3, 1 with --quick)")
    args = parser.parse_args(argv)
    if any(s < 8 for s in args.sizes):
        parser.error("--sizes: every payload needs at least 8 bytes (the send stamp)")
    count = 50 if args.quick else 400
    say: Callable[[str], None] = (lambda s: None) if args.json else \
        (lambda s: print(s, file=sys.stderr, flush=True))

    from nodehost.channels import cleanup_dead_nodes
    from nodehost.testing import shm_files

    before = shm_files()
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
    say("forwarding: send() of a received 10 MiB message vs one memmove ...")
    forward = forward_cost(count=10 if args.quick else 30)
    cleanup_dead_nodes()
    leftovers = leftovers_of_this_run(before)
    runtime: list[dict[str, Any]] = []
    if not args.no_runtime:
        from nodehost import bench_runtime

        runtime = bench_runtime.run_all(None if args.json else
                                        (lambda s: say(f"scenario {s} ...")), quick=args.quick)
    peers: dict[str, Any] | None = None
    if args.peers:
        from nodehost import bench_peers

        peers = bench_peers.run_all(args.rounds or (1 if args.quick else 3), quick=args.quick,
                                    progress=say)
    latency_rows = [r for r in results if "p50_us" in r]
    checks = targets(latency_rows, soak_result, len(leftovers), forward)
    if runtime:
        from nodehost import bench_runtime

        checks += bench_runtime.targets(runtime)
    regressed = regressions(checks, args.check) if args.check else []
    for target in regressed:
        print(f"REGRESSED (worse than {args.check:g}x the target): {target.target}: "
              f"{target.measured}", file=sys.stderr)
    status = 1 if regressed else 0
    if args.json:
        report = {"results": results, "memory": soak_result, "forward": forward,
                  "leftover_files": leftovers,
                  "targets": [t.as_json() for t in checks],
                  "runtime": runtime, "machine": machine()}
        if peers is not None:
            report["peers"] = peers
        if args.check:
            report["check"] = {"factor": args.check,
                               "regressed": [t.target for t in regressed]}
        print(json.dumps(report, indent=2))
        return status
    print(_table(latency_rows))
    print(f"\nmessages/s of {THROUGHPUT_BYTES} B: "
          + ", ".join(f"{t} {v:,}" for t, v in rates.items()))
    marks = " / ".join(f"{m:,}" for m in soak_result["rss_at"])
    print(f"memory: {soak_result['messages']:,} x 1 MiB, RSS KiB after {marks} messages: "
          f"writer {' / '.join(f'{v:,}' for v in soak_result['writer_rss_kib'])}, "
          f"reader {' / '.join(f'{v:,}' for v in soak_result['reader_rss_kib'])}")
    print(f"forwarding {forward['payload_bytes']:,} B: send() {forward['send_us']:,} µs, one "
          f"memmove {forward['memmove_us']:,} µs ({forward['ratio']}x)")
    print("\ntargets:")
    for check in checks:
        print(f"  [{'met' if check.met else 'MISSED'}] {check.target}: {check.measured}")
    for scenario in runtime:
        print("  ".join(f"{k}={v}" for k, v in scenario.items()))
    if peers is not None:
        from nodehost import bench_peers

        print("\n" + bench_peers.table(peers))
    return status


if __name__ == "__main__":
    sys.exit(main())
