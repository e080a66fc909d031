"""Shared-memory channels on iceoryx2: zero-copy, byte-bounded, lossless backpressure, EOS.

One channel carries one output port to its readers (fan-out: several subscribers). For a
channel named ``N`` there are four iceoryx2 services:

    N          publish-subscribe of byte slices: the messages (256-byte header + payload)
    N/wake     event, writer → readers: "a message arrived" (and "announce yourselves")
    N/acks     publish-subscribe of ``_Ack``, readers → writer: "I have taken up to seq s"
    N/ack      event, readers → writer: "an ack (or a departure) is waiting"

iceoryx2 does not block a publisher whose subscriber queue is full (it drops the sample or
spins inside Rust), so backpressure is built here with credits. The writer numbers messages
and keeps the (seq, bytes) of every message not yet taken by *every* reader; it sends only
while fewer than ``DEPTH`` messages and at most ``capacity`` payload bytes are in flight, and
otherwise sleeps on ``N/ack``. Acks are not sent per message: the writer sets ``FLAG_ACK`` in
the header of messages sent while the channel is at least half full, and readers ack those
only. A fast reader therefore costs no ack traffic at all.

With backpressure off the subscriber queue overwrites its oldest message instead (iceoryx2
safe overflow) and readers count the sequence gaps as drops.

A publisher's samples live in its process, so a finishing writer sends an end-of-stream
message and keeps its publisher until every reader acknowledged it (``close()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import math
import os
import secrets
import select
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import iceoryx2 as iox2
import numpy as np

from nodehost import wire
from nodehost.data import RuntimeData, SampleHold, copy_out, inherited_origin, monotonic_stamp
from nodehost.errors import ChannelClosed as ChannelClosed
from nodehost.errors import ChannelError, WireFormatError
from nodehost.errors import ChannelTimeout as ChannelTimeout
from nodehost.plan import MAX_FAN_OUT

# Messages in flight per channel (each reader's iceoryx2 queue). Deeper queues let a writer
# and its reader each run longer between sleeps — a blocked writer is woken once per
# DEPTH/4 messages (one ack) — which is what costs on a machine with fewer cores than
# busy nodes: the 3-node 1 KiB chain measured 18.8k msgs/s at 16, 23.2k at 32 (CPU per
# message −19 %). Sample slots are touched only as far as messages are in flight (bytes stay
# capped by ``capacity``); the price is twice the messages queued behind a slow node.
DEPTH = 32
BORROW = 8               # received messages a reader may hold zero-copy; beyond, copies
LOANS = 2                # samples a writer may have loaned (being filled) at once
MAX_READERS = MAX_FAN_OUT  # upper bound of subscribers of one channel
DEFAULT_READERS = 4      # max_subscribers of a channel a reader creates without being told
MAX_NODES = MAX_READERS + 4
_MAX_CACHED_VIEWS = 4096  # per writer, header views and loan arrays: > the slots of a data
#                           segment (readers × (DEPTH + BORROW) + LOANS), per shape
DEFAULT_DRAIN_TIMEOUT = 10.0

EVENT_DATA = 0           # N/wake: a message was sent
EVENT_ROLLCALL = 1       # N/wake: the writer asks every reader to (re)announce itself
EVENT_ACK = 0            # N/ack

ACK_OPEN, ACK_CLOSED = 1, 2
_FOREVER = 365 * 24 * 3600.0
_DROPPED: Any = None  # what a frame's local that must not outlive the call is set to

iox2.set_log_level(iox2.LogLevel.Error)

# iceoryx2's Python layer wraps loan and assume_init in generic payload-type checks that
# cost about a microsecond a message; our payload type is fixed (a byte slice), so the
# native methods are called when this iceoryx2 version has them under their usual names.
_LOAN_SLICE: Any = getattr(iox2.Publisher, "__loan_slice_uninit",
                           iox2.Publisher.loan_slice_uninit)
_ASSUME_INIT: Any = getattr(iox2.SampleMutUninit, "__assume_init",
                            iox2.SampleMutUninit.assume_init)
# (send_copy checks an ack's type four ways each time: acks are copied in with these instead)
_LOAN_UNINIT: Any = getattr(iox2.Publisher, "__loan_uninit", iox2.Publisher.loan_uninit)


class _Ack(ctypes.Structure):
    """A reader's progress report. ``last_seq`` 0 means "nothing taken yet"."""

    _fields_ = [("token", ctypes.c_uint64), ("last_seq", ctypes.c_uint64),
                ("dropped", ctypes.c_uint64), ("state", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32)]


_ACK_SIZE = ctypes.sizeof(_Ack)


def _duration(seconds: float) -> Any:
    return iox2.Duration.from_secs_f64(max(0.0, min(seconds, _FOREVER)))


def _service_name(name: str) -> Any:
    try:
        return iox2.ServiceName.new(name)
    except Exception as exc:
        raise ChannelError(f"invalid channel name {name!r}: {exc!r}") from exc


def _open_or_create(name: str, opener: Callable[[], Any], creator: Callable[[], Any]) -> Any:
    """Open a service with *minimum* requirements, or create it with our full settings.

    iceoryx2's ``open_or_create`` uses one set of settings for both, but an opener should
    only require what it needs (a reader does not know how many siblings it has), while the
    creator decides the capacity everybody gets.
    """
    last: Exception | None = None
    for _attempt in range(5):
        try:
            return opener()
        except Exception as exc:
            if "DoesNotExist" not in repr(exc):
                raise ChannelError(f"channel {name!r} exists with incompatible settings "
                                   f"({exc!r}): both ends must agree on backpressure, and "
                                   "the writer's max_subscribers must cover every reader"
                                   ) from exc
            last = exc
        try:
            return creator()
        except Exception as exc:
            last = exc
    raise ChannelError(f"cannot open or create channel {name!r}: {last!r}") from last


class DataPlane:
    """One process's data plane: the iceoryx2 node and every channel end opened on it.

    ``name`` names the iceoryx2 node (e.g. ``"<session>/<node>"``); ``session_id`` is
    stamped into every message this process sends (default: ``name`` up to its first "/").
    """

    def __init__(self, name: str = "nodehost", session_id: str | None = None) -> None:
        self.name = name
        self.session_id = name.split("/", 1)[0] if session_id is None else session_id
        self._session_raw = wire.encode_session_id(self.session_id)
        builder = iox2.NodeBuilder.new().signal_handling_mode(iox2.SignalHandlingMode.Disabled)
        with contextlib.suppress(Exception):  # an unusable name only loses a debugging aid
            builder = builder.name(iox2.NodeName.new(name[:100]))
        self.node: Any = builder.create(iox2.ServiceType.Ipc)
        self.writers: list[ChannelWriter] = []
        self.readers: list[ChannelReader] = []
        self._waitsets: dict[tuple[int, ...], tuple[Any, list[Any]]] = {}
        self._interrupt_fds: tuple[int, ...] = ()
        self._interrupt_cb: Callable[[], None] | None = None
        # shutdown() from any thread wakes every blocked wait through this eventfd
        self._shutdown_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._shut_down = False
        self._retired: list[Any] = []
        self.closed = False

    # -- services ------------------------------------------------------------------------
    def _data_service(self, name: str, backpressure: bool, max_subscribers: int | None) -> Any:
        def builder(subscribers: int) -> Any:
            return (self.node.service_builder(_service_name(name))
                    .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                    .max_publishers(1)
                    .max_subscribers(subscribers)
                    .max_nodes(MAX_NODES)
                    .history_size(0)
                    .subscriber_max_buffer_size(DEPTH)
                    .subscriber_max_borrowed_samples(BORROW)
                    .enable_safe_overflow(not backpressure))

        wanted = DEFAULT_READERS if max_subscribers is None else max_subscribers
        if not 1 <= wanted <= MAX_READERS:
            raise ChannelError(f"channel {name!r}: max_subscribers {wanted} outside "
                               f"1..{MAX_READERS}")
        need = 1 if max_subscribers is None else max_subscribers
        return _open_or_create(name, lambda: builder(need).open(),
                               lambda: builder(wanted).create())

    def _ack_service(self, name: str) -> Any:
        def builder() -> Any:
            # safe overflow + a short queue: the writer only ever needs each reader's latest
            return (self.node.service_builder(_service_name(f"{name}/acks"))
                    .publish_subscribe(_Ack)
                    .max_publishers(MAX_READERS)
                    .max_subscribers(1)
                    .max_nodes(MAX_NODES)
                    .history_size(0)
                    .subscriber_max_buffer_size(2)
                    .enable_safe_overflow(True))
        return _open_or_create(name, lambda: builder().open(), lambda: builder().create())

    def _event_service(self, name: str) -> Any:
        def builder() -> Any:
            return (self.node.service_builder(_service_name(name)).event()
                    .max_listeners(MAX_READERS + 1)
                    .max_notifiers(MAX_READERS + 1)
                    .max_nodes(MAX_NODES))
        return _open_or_create(name, lambda: builder().open(), lambda: builder().create())

    # -- channel ends --------------------------------------------------------------------
    def open_writer(self, name: str, capacity: int, backpressure: bool = True, *,
                    max_subscribers: int | None = None, readers: int | None = None,
                    session_id: str | None = None) -> ChannelWriter:
        """The writing end of channel ``name`` (one writer per channel).

        ``capacity``: payload bytes in flight (a power of two; also the largest payload).
        ``max_subscribers`` (alias ``readers``): the channel's fan-out. With backpressure the
        first message waits until that many readers are connected, so none misses the start.
        ``session_id``: stamped into this channel's messages (default: the plane's).
        """
        self._check_open()
        fan_out = max_subscribers if max_subscribers is not None else (readers or 1)
        writer = ChannelWriter(self, name, capacity, backpressure, fan_out,
                               self._session_raw if session_id is None
                               else wire.encode_session_id(session_id))
        self.writers.append(writer)
        return writer

    def open_reader(self, name: str, capacity: int, backpressure: bool = True, *,
                    max_subscribers: int | None = None,
                    from_start: bool | None = None) -> ChannelReader:
        """A reading end of channel ``name``. Pass the channel's fan-out as
        ``max_subscribers`` when known; otherwise a reader that creates the channel sizes it
        for ``DEFAULT_READERS``. ``from_start=True``: every message of the channel is meant
        for this reader (the writer has sent nothing yet), so messages lost before its first
        receive count as dropped; default: when the channel had no writer yet."""
        self._check_open()
        reader = ChannelReader(self, name, capacity, backpressure, max_subscribers,
                               from_start)
        self.readers.append(reader)
        return reader

    # -- waiting -------------------------------------------------------------------------
    def set_interrupt(self, fds: Sequence[int], callback: Callable[[], None] | None) -> None:
        """While a writer is blocked (backpressure, close drain), watch ``fds`` too: when one
        is readable, ``callback()`` runs; it must consume what is readable, and raise to
        abort the blocked operation (e.g. the runner's "stop" handling)."""
        self._interrupt_fds = tuple(fds)
        self._interrupt_cb = callback
        for writer in self.writers:
            writer._waitset = None

    def shutdown(self) -> None:
        """From any thread: every blocked wait of this data plane raises ChannelClosed."""
        self._shut_down = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._shutdown_fd, 1)

    def _new_waitset(self, listeners: Sequence[Any], fds: Sequence[int]) -> tuple[Any, list[Any]]:
        waitset = (iox2.WaitSetBuilder.new()
                   .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                   .create(iox2.ServiceType.Ipc))
        guards = [waitset.attach_notification(listener) for listener in listeners]
        guards += [waitset.attach_notification_fd(iox2.FileDescriptor.non_owning_new(fd))
                   for fd in (*fds, self._shutdown_fd)]
        return waitset, guards

    def wait(self, readers: Sequence[ChannelReader], fds: Sequence[int] = (),
             timeout: float | None = None) -> tuple[list[ChannelReader], list[int]]:
        """Block until a reader has something to take (data or end of stream), one of
        ``fds`` is readable, or ``timeout`` seconds passed. Returns (ready readers, ready fds).

        Event-driven: one iceoryx2 WaitSet over the readers' wake-up listeners and the fds,
        cached per (readers, fds) combination. Level-triggered: a reader with queued data is
        reported again even if its wake-up was consumed earlier.
        """
        self._check_open()
        ready = [r for r in readers if r.has_data()]
        if not ready:
            # About to sleep: flush acks, and consume the wake-ups delivered so far (for
            # messages taken since, or a roll call) so that the WaitSet sleeps until a new
            # one. Consuming them here, not after waking, keeps reading the listener (a few
            # µs) off the path from a writer's notify to its message being taken. A message
            # whose wake-up was consumed here is seen by the has_data() check that follows;
            # one sent after that check notifies again and wakes the WaitSet.
            for reader in readers:
                reader._flush_ack()
                reader._consume_wakeups()
            ready = [r for r in readers if r.has_data()]
        if ready:
            # Keep control messages flowing while data never stops: a cheap zero-wait poll.
            ready_fds = select.select(fds, [], [], 0)[0] if fds else []
            return ready, list(ready_fds)
        key = (*(id(r) for r in readers), -1, *fds)
        cached = self._waitsets.get(key)
        if cached is None:
            cached = self._waitsets[key] = self._new_waitset([r._listener for r in readers],
                                                             fds)
        waitset, guards = cached
        ids, _result = waitset.wait_and_process_with_timeout(
            _duration(_FOREVER if timeout is None else timeout))
        if self._shut_down:
            raise ChannelClosed("data plane shut down")
        fired_fds = [fd for fd, guard in zip(fds, guards[len(readers):], strict=False)
                     if any(i.has_event_from(guard) for i in ids)] if fds and ids else []
        return [r for r in readers if r.has_data()], fired_fds

    def _check_open(self) -> None:
        if self.closed:
            raise ChannelClosed(f"data plane {self.name!r} is closed")
        if self._shut_down:
            raise ChannelClosed(f"data plane {self.name!r} shut down")

    def close(self, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Close every writer (draining, see ``ChannelWriter.close``) and reader, then the
        node. Samples still referenced by received arrays stay valid until those die."""
        if self.closed:
            return
        for writer in self.writers:
            with contextlib.suppress(ChannelError):
                writer.close(drain_timeout=drain_timeout)
        for reader in self.readers:
            reader.close()
        self.closed = True
        self._waitsets.clear()
        for port in self._retired:
            port.delete()
        self._retired.clear()
        self.writers.clear()
        self.readers.clear()
        with contextlib.suppress(OSError):
            os.close(self._shutdown_fd)
        self.node = None

    def __enter__(self) -> DataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Loan:
    """A shared-memory sample being filled in place, zero-copy.

    ``with writer.loan_audio(frames, rate) as array: array[:] = ...`` sends when the block
    ends cleanly and discards the sample on an exception. After ``send()``/``discard()`` the
    array is made read-only and the loan refuses any further use: the sample belongs to the
    readers (or is gone), and iceoryx2 aborts the process if a sent sample is touched.
    """

    __slots__ = ("_sample", "_writer", "array", "kind", "meta", "nbytes", "origin_ns")

    def __init__(self, writer: ChannelWriter, kind: int, meta: wire.Metadata,
                 dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        nbytes = math.prod(shape) * dtype.itemsize
        self._writer = writer
        self.kind = kind
        self.meta = meta
        self.nbytes = nbytes
        self.origin_ns = inherited_origin.ns or monotonic_stamp()  # created now
        self._sample = writer._loan(nbytes)
        self.array: np.ndarray = writer._loan_array(self._sample.payload_ptr + wire.HEADER_SIZE,
                                                    dtype, shape)

    def __enter__(self) -> np.ndarray:
        return self.array

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.send()
        else:
            self.discard()

    def send(self) -> None:
        sample = self._take()
        self._writer._send_sample(sample, self.kind, self.nbytes,
                                  wire.meta_fields(self.kind, self.meta), self.origin_ns)

    def discard(self) -> None:
        sample = self._take()
        sample.delete()
        self._writer._unreserve(self.nbytes)

    def _take(self) -> Any:
        sample, self._sample = self._sample, None
        if sample is None:
            raise ChannelClosed("this loan was already sent or discarded")
        self.array.flags.writeable = False
        return sample


@functools.lru_cache(maxsize=256)
def _tensor_spec(shape: tuple[int, ...] | int, dtype: Any) -> tuple[wire.TensorMetadata,
                                                                    np.dtype[Any]]:
    """Checked metadata of a loaned tensor (memoized: a node loans the same shape again and
    again, and numpy's dtype machinery costs microseconds a message)."""
    dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
    dt = np.dtype(dtype)
    if dt.kind not in wire.TENSOR_KINDS or dt.byteorder == ">" or \
            len(dims) > wire.MAX_TENSOR_NDIM or any(d < 0 for d in dims):
        raise wire.InvalidRuntimeData(f"unsupported tensor {dims} of {dt}")
    return wire.TensorMetadata(dims, dt.name), dt


class _Writable:
    """``__array_interface__`` onto a loaned sample (writable, unlike a received one)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, ptr: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        self.__array_interface__ = {"data": (ptr, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}


class ChannelWriter:
    """The publishing end of a channel (one per output port)."""

    def __init__(self, plane: DataPlane, name: str, capacity: int, backpressure: bool,
                 max_subscribers: int, session_id: bytes) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ChannelError(f"channel {name!r}: capacity {capacity} is not a power of two")
        self.plane = plane
        self.name = name
        self.capacity = capacity
        self.backpressure = backpressure
        self.max_subscribers = max_subscribers
        self.session_id = session_id
        # While blocked: called every ``blocked_tick_s`` (the runner reports its stats). A
        # stop does not wait for it: DataPlane.set_interrupt's fds wake the wait at once.
        self.on_blocked: Callable[[], None] | None = None
        self.blocked_tick_s = 1.0
        self._started = not backpressure
        self.service = plane._data_service(name, backpressure, max_subscribers)
        # Static slots of capacity + header bytes: every message up to the capacity fits
        # without iceoryx2 growing (and re-mapping) segments at run time. Pages are touched
        # lazily, so untouched slot space costs neither RAM nor /dev/shm.
        self._publisher = (self.service.publisher_builder()
                           .initial_max_slice_len(capacity + wire.HEADER_SIZE)
                           .allocation_strategy(iox2.AllocationStrategy.Static)
                           .max_loaned_samples(LOANS)
                           .backpressure_strategy(iox2.BackpressureStrategy.DiscardData)
                           .create())
        self._loan_native = _LOAN_SLICE.__get__(self._publisher)
        self._notifier = plane._event_service(f"{name}/wake").notifier_builder().create()
        self._ack_listener = plane._event_service(f"{name}/ack").listener_builder().create()
        self._ack_sub = plane._ack_service(name).subscriber_builder().buffer_size(2).create()
        self._dyn = self.service.dynamic_config
        # A writable view of the header bytes of every slot of the publisher's data segment
        # seen so far, by address: the header is packed in place (no staging buffer and no
        # ctypes memmove per message). Static allocation: the segment is never re-mapped
        # while the publisher lives, and the views are dropped with it (_release).
        self._header_views: dict[int, memoryview] = {}
        # Likewise the array numpy builds over a slot's payload for a loan (from an interface
        # dict: ~2 us warm, ~15 us in a process that just woke up), per slot, dtype and shape;
        # each loan gets its own view of it, which the loan makes read-only once sent.
        self._loan_arrays: dict[tuple[int, np.dtype[Any], tuple[int, ...]], np.ndarray] = {}
        self._waitset: tuple[Any, list[Any]] | None = None
        self._readers: dict[int, int] = {}           # token -> last seq it has taken
        self._reader_drops: dict[int, int] = {}
        self._inflight: deque[tuple[int, int]] = deque()  # (seq, payload bytes)
        self._inflight_bytes = 0
        self._reserved = 0                            # loans not yet sent: (count in slots)
        self._reserved_bytes = 0
        self._half_count = DEPTH // 2
        self._half_bytes = capacity // 2
        self.seq = 0
        self.sent = 0
        self.blocked = 0          # sends (or loans) that had to wait for readers
        self.blocked_ns = 0
        self.waited_ns = 0        # waiting for readers to connect, or to drain at the end
        self.unreached = 0        # messages sent while no reader was connected (drop mode)
        self.eos_sent = False
        self.drained = False
        self.closed = False

    # -- observability -------------------------------------------------------------------
    @property
    def subscriber_count(self) -> int:
        """Readers connected to the channel now."""
        return int(self._dyn.number_of_subscribers)

    @property
    def publisher_count(self) -> int:
        return int(self._dyn.number_of_publishers)

    @property
    def occupancy(self) -> int:
        """Payload bytes sent but not yet taken by every reader."""
        self._refresh()
        return self._inflight_bytes

    @property
    def in_flight(self) -> int:
        """Messages sent but not yet taken by every reader."""
        self._refresh()
        return len(self._inflight)

    @property
    def dropped(self) -> int:
        """Messages lost: sent with no reader connected, plus overwrites readers reported
        (backpressure off; readers report with their end-of-stream ack)."""
        return self.unreached + sum(self._reader_drops.values())

    @property
    def readers_known(self) -> int:
        return len(self._readers)

    def figures(self) -> dict[str, Any]:
        """This end's counters for a stats report (reads the readers' acks first)."""
        if self.closed:
            occupancy = in_flight = publishers = subscribers = 0
        else:
            self._refresh()
            occupancy, in_flight = self._inflight_bytes, len(self._inflight)
            publishers, subscribers = self.publisher_count, self.subscriber_count
        return {"channel": self.name, "sent": self.sent - self.eos_sent,
                "unreached": self.unreached, "blocked_s": round(self.blocked_ns / 1e9, 6),
                "waited_s": round(self.waited_ns / 1e9, 6),
                "occupancy": occupancy if self.backpressure else None,
                "in_flight": in_flight if self.backpressure else None,
                "publishers": publishers, "subscribers": subscribers, "eos": self.eos_sent}

    # -- credits -------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Take in every reader's acks and retire what all of them have taken."""
        readers = self._readers
        while (sample := self._ack_sub.receive()) is not None:
            ack = _Ack.from_address(sample.payload_ptr)
            token, last, state, dropped = ack.token, ack.last_seq, ack.state, ack.dropped
            sample.delete()
            if state == ACK_CLOSED:
                readers.pop(token, None)
                continue
            if token not in readers:
                # A reader that has taken nothing yet joined now: it owes nothing sent before.
                readers[token] = last if last else self.seq
            elif last > readers[token]:
                readers[token] = last
            if dropped:
                self._reader_drops[token] = dropped
        connected = self._dyn.number_of_subscribers
        while len(readers) > connected:
            # A reader left and its goodbye was lost with its process: assume it is the one
            # that stopped making progress.
            del readers[min(readers, key=readers.__getitem__)]
        if len(readers) < connected:
            self._notifier.notify_with_custom_event_id(iox2.EventId.new(EVENT_ROLLCALL))
            return  # an unheard reader may hold anything we sent: retire nothing
        if readers:
            slowest = min(readers.values())
            inflight = self._inflight
            while inflight and inflight[0][0] <= slowest:
                self._inflight_bytes -= inflight.popleft()[1]

    def _credit(self, nbytes: int) -> bool:
        """True when a message of ``nbytes`` may be sent (or loaned) now."""
        count = len(self._inflight) + self._reserved
        if count >= self._half_count or \
                self._inflight_bytes + self._reserved_bytes + nbytes > self._half_bytes or \
                len(self._readers) != self._dyn.number_of_subscribers:
            self._refresh()
            count = len(self._inflight) + self._reserved
        if not self._started:
            # the first message waits for the whole fan-out, so no reader misses the start
            if len(self._readers) < self.max_subscribers:
                return False
            self._started = True
        if not self._readers:
            return False  # nobody would get it: a lossless channel waits for a reader
        used = self._inflight_bytes + self._reserved_bytes
        return count < DEPTH and (count == 0 or used + nbytes <= self.capacity)

    def can_send(self, nbytes: int) -> bool:
        """True when a ``nbytes`` message would be sent now, without waiting for readers
        (e.g. to send from an event loop's thread and wait elsewhere only when needed)."""
        if self.closed or self.eos_sent or nbytes > self.capacity:
            return False
        return not self.backpressure or self._credit(nbytes)

    def _loan(self, nbytes: int, timeout: float | None = None) -> Any:
        """Reserve credit for a ``nbytes`` message (waiting for it with backpressure), then
        loan a sample for it."""
        if self.closed or self.eos_sent or nbytes > self.capacity:
            self._refuse(nbytes)
        if self.backpressure and not self._credit(nbytes):
            self._block(lambda: self._credit(nbytes), "readers to take messages", timeout)
        self._reserved += 1
        self._reserved_bytes += nbytes
        try:
            return self._loan_native(wire.HEADER_SIZE + nbytes)
        except Exception as exc:
            self._unreserve(nbytes)
            raise ChannelError(f"channel {self.name!r}: cannot loan {nbytes} bytes of "
                               f"shared memory ({exc!r}); at most {LOANS} loans at once"
                               ) from exc

    def _refuse(self, nbytes: int) -> None:
        """Raise why nothing (or not ``nbytes``) can be sent."""
        if self.closed or self.eos_sent:
            raise ChannelClosed(f"channel {self.name!r}: "
                                f"{'closed' if self.closed else 'end of stream already sent'}")
        if nbytes > self.capacity:
            need = 1 << max(nbytes - 1, 1).bit_length()
            raise ChannelError(f"a {nbytes}-byte payload does not fit channel {self.name!r} "
                               f"(capacity {self.capacity} bytes); raise the connection's "
                               f"capacity to {need}")

    def _unreserve(self, nbytes: int) -> None:
        self._reserved -= 1
        self._reserved_bytes -= nbytes

    def _block(self, ready: Callable[[], bool], what: str, timeout: float | None,
               backpressure: bool = True) -> None:
        """Sleep on the ack event (and interrupt fds) until ``ready()``; no polling.
        ``backpressure``: the wait counts as blocked (``blocked``, ``blocked_s``); waiting
        for readers to connect or to drain the stream at its end is ``waited_s`` instead."""
        started = time.monotonic_ns()
        deadline = None if timeout is None else started + int(timeout * 1e9)
        if backpressure:
            self.blocked += 1
        plane = self.plane
        try:
            while not ready():
                if plane._shut_down:
                    raise ChannelClosed(f"channel {self.name!r}: shut down while waiting "
                                        f"for {what}")
                remaining = _FOREVER if deadline is None else \
                    (deadline - time.monotonic_ns()) / 1e9
                if remaining <= 0:
                    raise ChannelTimeout(f"channel {self.name!r}: timed out after {timeout} s "
                                         f"waiting for {what} ({self.subscriber_count} "
                                         f"connected, {len(self._inflight)} messages in "
                                         "flight)")
                if self._waitset is None:
                    self._waitset = plane._new_waitset([self._ack_listener],
                                                       plane._interrupt_fds)
                waitset, guards = self._waitset
                if self.on_blocked is not None:
                    remaining = min(remaining, self.blocked_tick_s)
                # Before sleeping, tell upstream what this process has taken (a reader defers
                # acks while it has more to take): a node blocked on its output must not hold
                # back its input's writer, or a diamond whose merge waits on the other branch
                # could wait forever.
                for reader in plane.readers:
                    if not reader.closed:
                        reader._flush_ack()
                ids, _result = waitset.wait_and_process_with_timeout(_duration(remaining))
                self._ack_listener.try_wait()  # consume, or the WaitSet fires again at once
                fds = guards[1:1 + len(plane._interrupt_fds)]
                if plane._interrupt_cb is not None and \
                        any(i.has_event_from(g) for i in ids for g in fds):
                    plane._interrupt_cb()
                if self.on_blocked is not None:
                    self.on_blocked()
        finally:
            if backpressure:
                self.blocked_ns += time.monotonic_ns() - started
            else:
                self.waited_ns += time.monotonic_ns() - started
            # An exception raised here keeps this frame in its traceback: drop the WaitSet
            # and its guards (which keep the ports, and with them the iceoryx2 node, alive)
            # so a caller that keeps the exception does not keep the channel's memory.
            waitset = guards = ids = fds = _DROPPED

    # -- sending -------------------------------------------------------------------------
    def _loan_array(self, ptr: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """A new writable array of ``shape`` and ``dtype`` onto the loaned payload at ``ptr``
        (see __init__)."""
        key = (ptr, dtype, shape)
        base = self._loan_arrays.get(key)
        if base is None:
            if len(self._loan_arrays) >= _MAX_CACHED_VIEWS:
                self._loan_arrays.clear()
            base = self._loan_arrays[key] = np.asarray(_Writable(ptr, dtype, shape))
        return base.view()

    def _header_view(self, ptr: int) -> memoryview:
        """The writable header bytes of the loaned sample at ``ptr`` (see __init__)."""
        view = self._header_views.get(ptr)
        if view is None:
            if len(self._header_views) >= _MAX_CACHED_VIEWS:
                self._header_views.clear()
            view = self._header_views[ptr] = memoryview(
                (ctypes.c_ubyte * wire.HEADER_SIZE).from_address(ptr)).cast("B")
        return view

    def _send_sample(self, sample: Any, kind: int, nbytes: int,
                     fields: tuple[Any, ...], origin_ns: int = 0) -> None:
        """Stamp the header into a loaned sample and publish it (the reservation becomes an
        in-flight message)."""
        self._unreserve(nbytes)
        seq = self.seq + 1
        inflight = self._inflight
        flags = 0
        if self.backpressure:
            inflight.append((seq, nbytes))
            self._inflight_bytes += nbytes
            if len(inflight) >= self._half_count or self._inflight_bytes >= self._half_bytes:
                flags = wire.FLAG_ACK
        if kind == wire.EOS:
            flags = wire.FLAG_ACK
        wire.pack_header_into(self._header_view(sample.payload_ptr), kind, flags, nbytes,
                              monotonic_stamp(), seq, self.session_id, fields, origin_ns)
        self.seq = seq
        if _ASSUME_INIT(sample).send() == 0:
            self.unreached += 1
        self.sent += 1
        self._notifier.notify()

    def send(self, data: RuntimeData, timeout: float | None = None) -> None:
        """Copy ``data`` into one shared-memory sample and send it: exactly one copy of the
        payload. With backpressure, blocks while the channel is full (ChannelTimeout after
        ``timeout`` seconds; None waits until readers catch up or the plane shuts down)."""
        nbytes = data.payload_size
        sample = self._loan(nbytes, timeout)
        if nbytes:
            src, keepalive = data.payload_address()
            ctypes.memmove(sample.payload_ptr + wire.HEADER_SIZE, src, nbytes)
            del keepalive
        self._send_sample(sample, data.kind, nbytes, data.wire_fields(), data.origin_ns)

    def loan_audio(self, frames: int, sample_rate: int, channels: int = 1,
                   dtype: Any = "float32") -> Loan:
        """A zero-copy audio message: an array ``(frames,)`` (mono) or
        ``(frames, channels)`` in shared memory, float32 or int16."""
        dt = np.dtype(dtype)
        code = wire.SAMPLE_FORMAT_OF_DTYPE.get(dt)
        if code is None:
            raise wire.InvalidRuntimeData(f"audio samples must be float32 or int16, got {dt}")
        if frames < 0 or sample_rate <= 0 or channels <= 0:
            raise wire.InvalidRuntimeData(f"frames={frames}, sample_rate={sample_rate}, "
                                          f"channels={channels}")
        meta = wire.AudioMetadata(int(sample_rate), int(channels), wire.SAMPLE_FORMATS[code][0],
                                  int(frames))
        shape = (int(frames),) if channels == 1 else (int(frames), int(channels))
        return Loan(self, wire.AUDIO, meta, dt, shape)

    def loan_video(self, width: int, height: int, format: str = "RGB24",
                   fps: float = 30.0) -> Loan:
        """A zero-copy video frame in shared memory, shaped as ``RuntimeData.video`` takes."""
        pf = wire.PIXEL_FORMAT_NAMES.get(format)
        if pf is None:
            raise wire.InvalidRuntimeData(f"unknown pixel format {format!r}")
        wire.check_video_size(pf, width, height, pf.frame_bytes(width, height))
        meta = wire.VideoMetadata(int(width), int(height), pf.name, float(fps))
        return Loan(self, wire.VIDEO, meta, np.dtype(np.uint8), pf.shape(width, height))

    def loan_tensor(self, shape: tuple[int, ...] | int, dtype: Any) -> Loan:
        """A zero-copy C-contiguous tensor in shared memory."""
        key = shape if isinstance(shape, int) else tuple(shape)
        try:
            meta, dt = _tensor_spec(key, dtype)
        except TypeError:  # an unhashable dtype spec: checked without the memo
            meta, dt = _tensor_spec.__wrapped__(key, dtype)
        return Loan(self, wire.TENSOR, meta, dt, meta.shape)

    def send_eos(self, timeout: float | None = None) -> None:
        """Send end of stream (once). Nothing may be sent after it."""
        if self.eos_sent or self.closed:
            return
        sample = self._loan(0, timeout)
        self._send_sample(sample, wire.EOS, 0, ())
        self.eos_sent = True

    def wait_for_readers(self, count: int = 1, timeout: float | None = None) -> None:
        """Block until ``count`` readers are connected and have announced themselves."""
        def ready() -> bool:
            self._refresh()
            return len(self._readers) >= count
        if not ready():
            self._block(ready, f"{count} reader(s)", timeout, backpressure=False)

    def close(self, drain_timeout: float | None = DEFAULT_DRAIN_TIMEOUT,
              eos: bool = True) -> bool:
        """Send end of stream (unless ``eos=False``), then keep the publisher — which owns
        every sample in flight — until every reader has taken everything up to it, at most
        ``drain_timeout`` seconds. Returns True when the readers drained the channel."""
        if self.closed:
            return self.drained
        try:
            if eos:
                self.send_eos(drain_timeout)

            def drained() -> bool:
                self._refresh()
                if not self._readers:
                    return bool(self._dyn.number_of_subscribers == 0)
                return min(self._readers.values()) >= self.seq
            self.drained = drained()
            if not self.drained:
                self._block(drained, "readers to drain the channel", drain_timeout,
                            backpressure=False)
                self.drained = True
        except ChannelError:
            self.drained = False
        finally:
            self._release()
        return self.drained

    def _release(self) -> None:
        self.closed = True
        self._waitset = None
        self._header_views.clear()
        self._loan_arrays.clear()
        for port in (self._ack_sub, self._ack_listener, self._notifier, self._publisher):
            port.delete()
        # the port factories keep the services (and their files) alive
        self.service = self._dyn = self._loan_native = None


class ChannelReader:
    """A subscribing end of a channel (one per input port)."""

    def __init__(self, plane: DataPlane, name: str, capacity: int, backpressure: bool,
                 max_subscribers: int | None, from_start: bool | None = None) -> None:
        self.plane = plane
        self.name = name
        self.capacity = capacity
        self.backpressure = backpressure
        self.service = plane._data_service(name, backpressure, max_subscribers)
        self._dyn = self.service.dynamic_config
        self._sub = self.service.subscriber_builder().buffer_size(DEPTH).create()
        self._listener = plane._event_service(f"{name}/wake").listener_builder().create()
        self._ack_pub = plane._ack_service(name).publisher_builder().create()
        self._ack_notifier = plane._event_service(f"{name}/ack").notifier_builder().create()
        self._ack = _Ack(token=secrets.randbits(63) | 1, state=ACK_OPEN)
        self._ack_addr = ctypes.addressof(self._ack)
        self._ack_pending = 0
        self._ack_every = max(1, DEPTH // 4)
        self._borrowed = 0
        self._last_seq = 0
        self._last_ts = 0
        # Opened before the channel had a writer: every message is meant for this reader, so
        # messages overwritten before its first receive count as dropped too. (A reader that
        # joins a running stream counts gaps from its first message on.)
        self._from_start = self._dyn.number_of_publishers == 0 if from_start is None \
            else from_start
        self.received = 0
        self.dropped = 0        # messages lost before this reader took them (seq gaps)
        self.rejected = 0       # messages whose header failed verification
        self.copied = 0         # messages copied because BORROW were already held
        self.eos = False
        self.closed = False
        self._send_ack()        # announce ourselves: the writer counts us from now on

    @property
    def publisher_count(self) -> int:
        return int(self._dyn.number_of_publishers)

    @property
    def subscriber_count(self) -> int:
        return int(self._dyn.number_of_subscribers)

    @property
    def borrowed(self) -> int:
        """Received samples still alive (held by RuntimeData or their arrays)."""
        return self._borrowed

    def figures(self) -> dict[str, Any]:
        """This end's counters for a stats report. ``sent``: the messages up to the newest
        one this reader has seen (end of stream excluded); each was received or dropped."""
        return {"channel": self.name, "received": self.received, "dropped": self.dropped,
                "sent": self._last_seq - self.eos, "eos": self.eos}

    def has_data(self) -> bool:
        """True when ``receive()`` has something to take (a message or end of stream)."""
        return not self.closed and not self.eos and bool(self._sub.has_samples())

    # -- acks ----------------------------------------------------------------------------
    def _send_ack(self) -> None:
        ack = self._ack
        ack.last_seq = self._last_seq
        ack.dropped = self.dropped
        sample = _LOAN_UNINIT(self._ack_pub)
        ctypes.memmove(sample.payload_ptr, self._ack_addr, _ACK_SIZE)
        _ASSUME_INIT(sample).send()
        self._ack_notifier.notify()
        self._ack_pending = 0

    def _flush_ack(self) -> None:
        if self._ack_pending:
            self._send_ack()

    def _consume_wakeups(self) -> None:
        for activation in self._listener.try_wait():
            if activation.id.as_value == EVENT_ROLLCALL and not self.closed:
                self._send_ack()

    def _released(self) -> None:
        self._borrowed -= 1

    # -- receiving -----------------------------------------------------------------------
    def receive(self) -> RuntimeData | None:
        """The next message, or None when nothing is waiting. End of stream is consumed
        here too: ``receive()`` returns None and ``eos`` becomes True.

        Raises WireFormatError for a message whose header fails verification (it is
        dropped; the channel stays usable).
        """
        if self.eos or self.closed:
            return None
        sample = self._sub.receive()
        if sample is None:
            self._flush_ack()
            return None
        ptr = sample.payload_ptr
        available = sample.header.number_of_elements - wire.HEADER_SIZE
        last_seq = self._last_seq
        try:
            if available < 0:
                raise WireFormatError(f"invalid RuntimeData header: truncated message of "
                                      f"{available + wire.HEADER_SIZE} bytes")
            # The header is copied out of shared memory before it is checked: the writer
            # could still change the sample's bytes.
            header = wire.unpack_header(ctypes.string_at(ptr, wire.HEADER_SIZE), available)
            kind, flags, size, timestamp_ns, seq = header[:5]
            if seq <= last_seq or timestamp_ns <= self._last_ts:
                self._out_of_order(seq, timestamp_ns)
        except WireFormatError:
            sample.delete()
            self.rejected += 1
            raise
        if seq != last_seq + 1 and (last_seq or self._from_start):
            self.dropped += seq - last_seq - 1
        self._last_seq = seq
        self._last_ts = timestamp_ns
        if flags & wire.FLAG_ACK:
            self._ack_pending += 1
            if kind == wire.EOS or self._ack_pending >= self._ack_every or \
                    not self._sub.has_samples():
                self._send_ack()
        if kind == wire.EOS:
            sample.delete()
            self.eos = True
            return None
        self.received += 1
        if self._borrowed < BORROW - 1:
            self._borrowed += 1
            return RuntimeData.from_header(
                header, SampleHold(sample, ptr + wire.HEADER_SIZE, size, self._released))
        # The node holds BORROW samples already: keep the channel moving with one copy.
        array = copy_out(ptr + wire.HEADER_SIZE, size, kind, header.meta)
        sample.delete()
        self.copied += 1
        return RuntimeData.from_header(header, None, array)

    def _out_of_order(self, seq: int, timestamp_ns: int) -> None:
        """Raise for a message that is not after the previous one (replayed or corrupted)."""
        if seq <= self._last_seq:
            raise WireFormatError(f"channel {self.name!r}: sequence {seq} after "
                                  f"{self._last_seq} (replayed or corrupted message)")
        raise WireFormatError(f"channel {self.name!r}: timestamp {timestamp_ns} not after "
                              f"{self._last_ts} (timestamps must strictly increase)")

    def close(self) -> None:
        """Leave the channel. Received arrays that are still alive stay valid (their
        samples are released when they die)."""
        if self.closed:
            return
        self.closed = True
        self._ack.state = ACK_CLOSED
        with contextlib.suppress(Exception):
            self._send_ack()
        # The goodbye sample dies with its publisher: keep the publisher until the plane
        # closes, so the writer can still read it meanwhile.
        self.plane._retired.append(self._ack_pub)
        self.plane._waitsets.clear()
        for port in (self._ack_notifier, self._listener, self._sub):
            port.delete()
        self.service = self._dyn = None


# -- host-side housekeeping --------------------------------------------------------------
def cleanup_dead_nodes() -> int:
    """Remove what iceoryx2 nodes of dead processes left behind (after SIGKILL).

    Returns how many dead nodes were cleaned up.
    """
    config = iox2.config.global_config()
    cleaned = 0
    try:
        states = iox2.Node.list(iox2.ServiceType.Ipc, config)
    except Exception:
        return 0
    for state in states:
        # the binding exposes NodeState.Dead(view) as a class named "Dead" with field _0
        if type(state).__name__ != "Dead":
            continue
        with contextlib.suppress(Exception):
            if state._0.try_remove_stale_resources():
                cleaned += 1
    return cleaned


def leftover_files() -> set[str]:
    """iceoryx2 files on this machine now: ``/dev/shm/iox2_*`` and the entries of
    ``/tmp/iceoryx2/{nodes,services}`` (compare before/after to find leaks)."""
    return set(glob.glob("/dev/shm/iox2_*")) | set(glob.glob("/tmp/iceoryx2/services/*")) | \
        set(glob.glob("/tmp/iceoryx2/nodes/*"))
