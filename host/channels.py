"""Shared-memory channels on iceoryx2: zero-copy, byte capacity, lossless backpressure.

One channel = one output port. Per channel name ``N`` there are four iceoryx2 services:

    N            publish-subscribe, dynamic byte slices: the messages (header + payload)
    N/data       event: the writer → readers "something arrived" wake-up
    N/acks       publish-subscribe: each reader → writer "I consumed up to sequence s"
    N/ack        event: the readers → writer wake-up for acks

iceoryx2 does not block a publisher whose subscribers are full (it drops the sample for
them), so backpressure is built here with credits: the writer knows every reader's last
consumed sequence and sends only while the slowest reader has fewer than ``DEPTH`` messages
and fewer than ``capacity`` bytes outstanding; otherwise it sleeps on the ack event. With
backpressure off the subscriber buffer overwrites its oldest message instead, and readers
count the sequence gaps as drops.

A publisher's samples live in the publisher's process, so a finishing writer sends end of
stream and keeps its publisher until every reader acknowledged it (``close()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import iceoryx2 as iox2
import numpy as np

from nodehost.data import AUDIO_DTYPES, RuntimeData, _check_session_id, _Clock, _SampleOwner
from nodehost.errors import ChannelError, WireFormatError
from nodehost.wire import HEADER_SIZE, TENSOR_DTYPES, WireType, pack_header

DEPTH = 32  # messages a reader may have outstanding (its iceoryx2 buffer)
MAX_READERS = 16
MAX_BORROWED = 16  # received messages a node may hold at once
ACK_BUFFER = 1024
_ACK = struct.Struct("<QQ")  # reader token, next expected sequence
_GONE = (1 << 63)  # next-sequence value of a reader that left
_INITIAL_SLICE = 64 * 1024

iox2.set_log_level(iox2.LogLevel.Error)


def _service_name(name: str) -> Any:
    try:
        return iox2.ServiceName.new(name)
    except Exception as exc:  # noqa: BLE001 - iceoryx2 raises its own error types
        raise ChannelError(f"invalid channel name {name!r}: {exc}") from None


def _duration(seconds: float) -> Any:
    return iox2.Duration.from_micros(max(0, int(seconds * 1e6)))


class DataPlane:
    """The data plane of one process: one iceoryx2 node and the channels opened on it."""

    def __init__(self, name: str = "nodehost") -> None:
        builder = iox2.NodeBuilder.new().signal_handling_mode(iox2.SignalHandlingMode.Disabled)
        with contextlib.suppress(Exception):
            builder = builder.name(iox2.NodeName.new(name[:127]))
        self.node = builder.create(iox2.ServiceType.Ipc)
        self.writers: list[ChannelWriter] = []
        self.readers: list[ChannelReader] = []
        self._waitsets: dict[tuple[int, ...], tuple[Any, list[Any]]] = {}
        self.closed = False

    def _pubsub(self, name: str, backpressure: bool) -> Any:
        return (self.node.service_builder(_service_name(name))
                .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                .max_publishers(1)
                .max_subscribers(MAX_READERS)
                .max_nodes(MAX_READERS + 2)
                .history_size(0)
                .subscriber_max_buffer_size(DEPTH)
                .subscriber_max_borrowed_samples(MAX_BORROWED)
                .enable_safe_overflow(not backpressure)
                .open_or_create())

    def _acks(self, name: str) -> Any:
        return (self.node.service_builder(_service_name(f"{name}/acks"))
                .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                .max_publishers(MAX_READERS)
                .max_subscribers(1)
                .max_nodes(MAX_READERS + 2)
                .history_size(0)
                .subscriber_max_buffer_size(ACK_BUFFER)
                .enable_safe_overflow(True)
                .open_or_create())

    def _event(self, name: str) -> Any:
        return (self.node.service_builder(_service_name(name)).event()
                .max_listeners(MAX_READERS + 1)
                .max_notifiers(MAX_READERS + 1)
                .max_nodes(MAX_READERS + 2)
                .open_or_create())

    def open_writer(self, name: str, capacity: int, *, backpressure: bool = True,
                    readers: int = 1, session_id: str = "") -> ChannelWriter:
        writer = ChannelWriter(self, name, capacity, backpressure, readers, session_id)
        self.writers.append(writer)
        return writer

    def open_reader(self, name: str, capacity: int, *, backpressure: bool = True
                    ) -> ChannelReader:
        reader = ChannelReader(self, name, capacity, backpressure)
        self.readers.append(reader)
        return reader

    def wait(self, readers: Sequence[ChannelReader], fds: Sequence[int] = (),
             timeout: float | None = None) -> tuple[list[ChannelReader], list[int]]:
        """Block until a reader has data (or end of stream), an fd is readable, or timeout.

        Event-driven: an iceoryx2 WaitSet over the readers' wake-up listeners and the fds.
        """
        ready = [r for r in readers if r.pending()]
        if ready:
            return ready, []
        key = tuple(id(r) for r in readers) + tuple(-fd - 1 for fd in fds)
        cached = self._waitsets.get(key)
        if cached is None:
            waitset = (iox2.WaitSetBuilder.new()
                       .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                       .create(iox2.ServiceType.Ipc))
            guards = [waitset.attach_notification(r.listener) for r in readers]
            guards += [waitset.attach_notification_fd(iox2.FileDescriptor.non_owning_new(fd))
                       for fd in fds]
            cached = self._waitsets[key] = (waitset, guards)
        waitset, guards = cached
        ids, _ = waitset.wait_and_process_with_timeout(
            _duration(3600.0 if timeout is None else timeout))
        fired_fds = [fd for fd, guard in zip(fds, guards[len(readers):], strict=True)
                     if any(i.has_event_from(guard) for i in ids)]
        return [r for r in readers if r.pending()], fired_fds

    def close(self) -> None:
        """Release every sample still held, then every port, then the node."""
        if self.closed:
            return
        self.closed = True
        self._waitsets.clear()
        for writer in self.writers:
            writer.release()
        for reader in self.readers:
            reader.close()
        self.node = None


class _Loan:
    """A loaned sample being filled in place; sent when the ``with`` block ends cleanly."""

    def __init__(self, writer: ChannelWriter, wire_type: WireType, payload_size: int,
                 meta: dict[str, Any], dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        self.writer = writer
        self.wire_type = wire_type
        self.meta = meta
        self.size = HEADER_SIZE + payload_size
        writer._acquire(self.size)
        self.sample = writer._loan(self.size)
        payload = self.sample.payload()
        address = payload.data_ptr if isinstance(payload.data_ptr, int) else payload.data_ptr()
        self.buffer = (ctypes.c_uint8 * self.size).from_address(address)
        self.array = np.frombuffer(self.buffer, dtype=np.uint8, offset=HEADER_SIZE,
                                   count=payload_size).view(dtype).reshape(shape)

    def __enter__(self) -> np.ndarray:
        return self.array

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        sample, self.sample = self.sample, None
        if exc_type is not None:
            sample.delete()  # nothing half-written ever reaches a reader
            return
        pack_header(memoryview(self.buffer).cast("B"), self.wire_type, self.size - HEADER_SIZE,
                    _Clock.now(), self.writer.sequence, self.writer.session_id, self.meta)
        self.writer._send(sample, self.size)


class ChannelWriter:
    """The publishing end of a channel (one per output port)."""

    def __init__(self, plane: DataPlane, name: str, capacity: int, backpressure: bool,
                 readers: int, session_id: str) -> None:
        if capacity <= HEADER_SIZE or capacity & (capacity - 1):
            raise ChannelError(f"channel {name!r}: capacity {capacity} must be a power of two "
                               f"larger than the {HEADER_SIZE}-byte header")
        self.name = name
        self.capacity = capacity
        self.backpressure = backpressure
        self.expected_readers = readers
        self.session_id = _check_session_id(session_id)
        self.service = plane._pubsub(name, backpressure)
        self.publisher = (self.service.publisher_builder()
                          .initial_max_slice_len(min(capacity, _INITIAL_SLICE))
                          .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                          .create())
        self.notifier = plane._event(f"{name}/data").notifier_builder().create()
        self.ack_listener = plane._event(f"{name}/ack").listener_builder().create()
        self.ack_sub = plane._acks(name).subscriber_builder().create()
        self.sequence = 0
        self.sent = 0
        self.blocked_s = 0.0  # time spent waiting for credit (backpressure)
        self.eos_sent = False
        self.readers: dict[int, int] = {}  # token -> next expected sequence
        self._sizes: deque[tuple[int, int]] = deque()  # (sequence, bytes) not yet consumed
        self._outstanding_bytes = 0
        self.abort_check: Callable[[], None] | None = None
        self.closed = False

    # -- credits -------------------------------------------------------------------------
    def _drain_acks(self) -> None:
        while (sample := self.ack_sub.receive()) is not None:
            token, next_seq = _ACK.unpack(bytes(sample.payload().as_memory_view()))
            sample.delete()
            if next_seq == _GONE:
                self.readers.pop(token, None)
            elif next_seq == 0 and token not in self.readers:
                self.readers[token] = self.sequence  # joined now: owes nothing yet
            else:
                self.readers[token] = max(self.readers.get(token, 0), next_seq)
        # A subscriber not heard from yet (its first ack may predate our ack subscriber)
        # has consumed nothing, as far as we can prove.
        unheard = self.service.dynamic_config.number_of_subscribers > len(self.readers)
        slowest = 0 if unheard else min(self.readers.values(), default=self.sequence)
        while self._sizes and self._sizes[0][0] < slowest:
            self._outstanding_bytes -= self._sizes.popleft()[1]

    @property
    def reader_count(self) -> int:
        """Readers connected now (subscribers of the data service)."""
        return int(self.service.dynamic_config.number_of_subscribers)

    @property
    def occupancy(self) -> int:
        """Bytes sent but not yet consumed by the slowest reader."""
        self._drain_acks()
        return self._outstanding_bytes

    def _has_credit(self, nbytes: int) -> bool:
        self._drain_acks()
        if self.reader_count < self.expected_readers:
            return False
        return not self._sizes or (len(self._sizes) < DEPTH
                                   and self._outstanding_bytes + nbytes <= self.capacity)

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        started = time.monotonic()
        while not ready():
            remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if remaining <= 0:
                raise ChannelError(f"channel {self.name!r}: timed out waiting for {what}")
            with contextlib.suppress(Exception):  # EINTR-like interruptions: just re-check
                self.ack_listener.timed_wait(_duration(remaining))
            if self.abort_check is not None:
                self.abort_check()
        self.blocked_s += time.monotonic() - started

    def _acquire(self, nbytes: int) -> None:
        if self.closed or self.eos_sent:
            raise ChannelError(f"channel {self.name!r} is closed")
        if nbytes > self.capacity:
            need = 1 << (nbytes - 1).bit_length()
            raise ChannelError(f"message of {nbytes} bytes does not fit channel {self.name!r} "
                               f"(capacity {self.capacity}); set the connection's capacity "
                               f"to at least {need}")
        if self.backpressure:
            self._wait_for(lambda: self._has_credit(nbytes), "readers to catch up", None)
        elif self.reader_count < self.expected_readers:
            self._wait_for(lambda: self.reader_count >= self.expected_readers, "readers", None)

    def _loan(self, nbytes: int) -> Any:
        try:
            return self.publisher.loan_slice_uninit(nbytes)
        except Exception as exc:  # noqa: BLE001 - LoanError and friends
            raise ChannelError(f"channel {self.name!r}: cannot loan {nbytes} bytes of shared "
                               f"memory: {exc!r}") from None

    def _send(self, sample: Any, nbytes: int) -> None:
        sample.assume_init().send()
        if self.backpressure:
            self._sizes.append((self.sequence, nbytes))
            self._outstanding_bytes += nbytes
        self.sequence += 1
        self.sent += 1
        self.notifier.notify()

    # -- sending -------------------------------------------------------------------------
    def send(self, data: RuntimeData) -> None:
        """Copy ``data`` into one shared-memory sample and send it (blocks while full)."""
        nbytes = HEADER_SIZE + data.payload_size
        self._acquire(nbytes)
        sample = self._loan(nbytes)
        try:
            data.write_into(sample.payload().as_memory_view(), self.session_id, self.sequence)
        except BaseException:
            sample.delete()
            raise
        self._send(sample, nbytes)

    def loan_tensor(self, shape: tuple[int, ...] | int, dtype: Any) -> _Loan:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        if dt.str not in TENSOR_DTYPES:
            raise WireFormatError(f"unsupported tensor dtype {dt}")
        size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return _Loan(self, WireType.TENSOR, size, {"dtype": dt.str, "shape": shape}, dt, shape)

    def loan_audio(self, frames: int, sample_rate: int, channels: int = 1,
                   dtype: Any = "float32") -> _Loan:
        dt = np.dtype(dtype)
        fmt = AUDIO_DTYPES.get(dt)
        if fmt is None:
            raise WireFormatError(f"audio samples must be float32 or int16, got {dt}")
        shape = (frames,) if channels == 1 else (frames, channels)
        meta = {"sample_rate": sample_rate, "channels": channels, "sample_format": fmt,
                "frames": frames}
        return _Loan(self, WireType.AUDIO, frames * channels * dt.itemsize, meta, dt, shape)

    def send_eos(self) -> None:
        if self.eos_sent:
            return
        self.send(RuntimeData.end_of_stream())
        self.eos_sent = True

    def close(self, drain_timeout: float | None = None) -> None:
        """End of stream, then keep the samples alive until every reader took them."""
        if self.closed:
            return
        try:
            self.send_eos()
            if self.backpressure:
                self._wait_for(lambda: self.occupancy == 0 and not self._sizes,
                               "readers to drain the channel", drain_timeout)
            else:
                self._wait_for(lambda: all(s >= self.sequence for s in self._acked()),
                               "readers to drain the channel", drain_timeout)
        finally:
            self.release()

    def _acked(self) -> Iterator[int]:
        self._drain_acks()
        return iter(self.readers.values())

    def release(self) -> None:
        self.closed = True


class ChannelReader:
    """The subscribing end of a channel (one per input port)."""

    def __init__(self, plane: DataPlane, name: str, capacity: int, backpressure: bool) -> None:
        self.name = name
        self.capacity = capacity
        self.backpressure = backpressure
        self.service = plane._pubsub(name, backpressure)
        self.subscriber = self.service.subscriber_builder().create()
        self.listener = plane._event(f"{name}/data").listener_builder().create()
        self.ack_pub = (plane._acks(name).publisher_builder()
                        .initial_max_slice_len(_ACK.size).create())
        self.ack_notifier = plane._event(f"{name}/ack").notifier_builder().create()
        self.token = secrets.randbits(63) or 1
        self.received = 0
        self.dropped = 0
        self.rejected = 0
        self.eos = False
        self.next_sequence: int | None = None
        self.closed = False
        self._owners: weakref.WeakSet[_SampleOwner] = weakref.WeakSet()
        self._ack(0)  # announce this reader to the writer

    def _ack(self, next_sequence: int) -> None:
        sample = self.ack_pub.loan_slice_uninit(_ACK.size)
        _ACK.pack_into(sample.payload().as_memory_view(), 0, self.token, next_sequence)
        sample.assume_init().send()
        self.ack_notifier.notify()

    def pending(self) -> bool:
        """Data (or end of stream) is waiting; also consumes the wake-up events."""
        with contextlib.suppress(Exception):
            self.listener.try_wait()
        return not self.eos and bool(self.subscriber.has_samples())

    def receive(self) -> RuntimeData | None:
        """The next message, or None when there is none (or end of stream arrived:
        then ``eos`` is True)."""
        if self.eos or self.closed:
            return None
        try:
            sample = self.subscriber.receive()
        except Exception as exc:  # noqa: BLE001 - ReceiveError
            raise ChannelError(
                f"channel {self.name!r}: cannot receive ({exc!r}); a node may hold at most "
                f"{MAX_BORROWED} received messages at once — copy what you keep "
                "(np.array(data.as_array()))") from None
        if sample is None:
            return None
        try:
            data = RuntimeData.from_sample(sample)
        except WireFormatError:
            self.rejected += 1
            raise
        self._owners.add(data._owner)  # type: ignore[arg-type]
        seq = data.sequence
        if self.next_sequence is not None and seq > self.next_sequence:
            self.dropped += seq - self.next_sequence
        self.next_sequence = seq + 1
        self._ack(seq + 1)
        if data.is_end_of_stream:
            self.eos = True
            return None
        self.received += 1
        return data

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for owner in list(self._owners):  # no sample may outlive its subscriber
            owner.__del__()
        with contextlib.suppress(Exception):
            self._ack(_GONE)


def cleanup_dead_nodes() -> int:
    """Remove the shared memory of iceoryx2 nodes whose process died (e.g. SIGKILL).

    Returns how many dead nodes were cleaned up."""
    node = (iox2.NodeBuilder.new().signal_handling_mode(iox2.SignalHandlingMode.Disabled)
            .create(iox2.ServiceType.Ipc))
    try:
        result = node.try_cleanup_dead_nodes()
    except Exception:  # noqa: BLE001 - nothing to clean, or not permitted
        return 0
    finally:
        del node
    cleaned = getattr(result, "cleanups", None)
    return int(cleaned) if isinstance(cleaned, int) else 0


def shm_files() -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith("iox2_"))
