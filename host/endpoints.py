"""The application's ends of a session: session inputs it writes, session outputs it reads.

A pipeline config may name session inputs (``inputs: {mic: resample.in}``) and outputs
(``outputs: {reply: tts.out}``). The host process then takes part in the session's data
plane like a node: it owns one iceoryx2 node (``<session id>/host``), is the publisher of one
channel per session input (the target ports subscribe to it) and one more subscriber of each
node output channel named as a session output. Those are ordinary channels (see
``nodehost.channels``), so backpressure, end of stream and crash handling are the same as
between two nodes:

- ``send()`` copies the payload once into a shared-memory sample and blocks while the
  channel is full (``SendTimeout`` after ``timeout`` seconds); before the nodes are Ready it
  fills the channel and then blocks until they start (``Session.wait_ready()`` tells when).
- ``close_input()`` sends end of stream; it flows downstream like a source node's.
- ``outputs()`` yields ``(name, RuntimeData)`` in order per output until every output
  reached end of stream; a failed session ends it with ``SessionFailed`` (never a hang), a
  stopped one ends it quietly.

A yielded RuntimeData is a read-only view onto the node's shared-memory sample. It stays
valid as long as it (or an array from ``as_array()``) is referenced — even after the session
ended — and the sample goes back to the node when the last reference dies, or at once with
``data.release()`` (or ``with data: ...``). Up to ``BORROW - 1`` received messages are held
zero-copy; a reader that keeps more gets private copies of the later ones (see
``ChannelReader.receive``), so holding on to data never stalls or crashes a session.

Threads: one thread may send on each input while another sends on a different input and a
third reads the outputs; each input and the outputs have their own lock, so two senders on
the same input take turns. The asyncio forms never block the event loop: a send or a take
that can complete at once runs in the loop's thread; waiting happens in a thread of its own
(``off_loop``), which a wake-up eventfd releases when an awaiting ``aoutputs`` is cancelled.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from nodehost.channels import (
    ChannelClosed,
    ChannelReader,
    ChannelTimeout,
    ChannelWriter,
    DataPlane,
)
from nodehost.data import RuntimeData
from nodehost.errors import (
    InvalidRuntimeData,
    SessionEnded,
    SessionError,
    SessionFailed,
    WireFormatError,
)
from nodehost.errors import (
    SendTimeout as SendTimeout,
)

if TYPE_CHECKING:
    from nodehost.config import SessionPort, ValidatedPipeline
    from nodehost.plan import HostEnds
    from nodehost.session import SessionResult

T = TypeVar("T")
CLOSE_WAIT_S = 5.0  # at session end: how long to wait for an application thread to leave


class _Pending:
    """Nothing to take yet (the outputs are not over)."""


_PENDING = _Pending()


def check_accepts(port: SessionPort, data: RuntimeData) -> None:
    """Raise InvalidRuntimeData unless ``data`` is what every port of input ``port`` takes."""
    if not isinstance(data, RuntimeData):
        raise TypeError(f"session input {port.name!r} takes RuntimeData, got "
                        f"{type(data).__name__} (build one with RuntimeData.audio(...) etc.)")
    spec = port.spec
    if data.data_type != spec.data_type.value:
        raise InvalidRuntimeData(f"session input {port.name!r} takes {spec.data_type.value}, "
                                 f"got {data.data_type}")
    meta = data.metadata
    checks = (("sample_rate", "sample rate"), ("channels", "channel count"),
              ("sample_format", "sample format"), ("format", "pixel format"),
              ("dtype", "dtype"), ("language", "language"))
    for attr, what in checks:
        accepted = getattr(spec, attr)
        value = getattr(meta, attr, None)
        if accepted is not None and value is not None and value not in accepted:
            shown = accepted[0] if len(accepted) == 1 else f"one of {accepted}"
            raise InvalidRuntimeData(f"session input {port.name!r} takes {what} {shown} "
                                     f"({', '.join(map(str, port.ports))}), got {value}")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread of its own, awaited without blocking the event loop.

    Not the loop's default executor: its few workers would all end up blocked in sends and
    output waits of many sessions (each waiting on another), and nothing would move."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="nodehost-session-io", daemon=True).start()
    return await future


class SessionEnds:
    """The host's channel ends of one session. Owned by its ``Session``, which calls
    ``end()`` when the session is over; that releases the iceoryx2 node."""

    def __init__(self, session_id: str, pipeline: ValidatedPipeline, ends: HostEnds) -> None:
        self.session_id = session_id
        self.inputs = dict(pipeline.inputs)
        self.outputs = dict(pipeline.outputs)
        self._plane = DataPlane(f"{session_id}/host", session_id)
        self._writers: dict[str, ChannelWriter] = {}
        self._readers: dict[str, ChannelReader] = {}
        try:
            for name, binding in ends.inputs.items():
                self._writers[name] = self._plane.open_writer(
                    binding.channel, binding.capacity, True,
                    max_subscribers=binding.subscribers)
            for name, binding in ends.outputs.items():
                self._readers[name] = self._plane.open_reader(
                    binding.channel, binding.capacity, True,
                    max_subscribers=binding.subscribers)
        except BaseException:
            self._plane.close(drain_timeout=0)
            raise
        self._send_locks = {name: threading.Lock() for name in self._writers}
        self._read_lock = threading.Lock()
        self._closed_inputs: set[str] = set()
        self._open_outputs = list(self._readers)  # not yet at end of stream, in turn order
        # wakes a waiting outputs() (cancelled aoutputs task, session end)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._result: SessionResult | None = None
        self._failed = False
        self._released = False
        atexit.register(self._at_exit)

    # -- state ---------------------------------------------------------------------------
    def _ended_error(self, doing: str) -> SessionEnded:
        result = self._result
        assert result is not None
        kind = SessionFailed if self._failed else SessionEnded
        state = "failed" if self._failed else "ended"
        return kind(f"session {self.session_id} {state} ({result.reason}): cannot {doing}",
                    result)

    def _name(self, name: str) -> str:
        if name not in self._writers:
            known = ", ".join(sorted(self._writers)) or "none"
            raise SessionError(f"session {self.session_id} has no input {name!r} (its "
                               f"inputs: {known})")
        return name

    def _writer(self, name: str) -> ChannelWriter:
        return self._writers[self._name(name)]

    # -- inputs --------------------------------------------------------------------------
    def send(self, name: str, data: RuntimeData, timeout: float | None = None) -> None:
        writer = self._writer(name)
        check_accepts(self.inputs[name], data)
        with self._send_locks[name]:
            self._send_locked(name, writer, data, timeout)

    def _send_locked(self, name: str, writer: ChannelWriter, data: RuntimeData,
                     timeout: float | None) -> None:
        if self._result is not None:
            raise self._ended_error(f"send to input {name!r}")
        if name in self._closed_inputs:
            raise SessionError(f"session input {name!r} was closed (close_input); nothing "
                               "more can be sent to it")
        try:
            writer.send(data, timeout)
        except ChannelTimeout as exc:
            raise SendTimeout(f"session {self.session_id}: input {name!r} stayed full for "
                              f"{timeout} s ({', '.join(map(str, self.inputs[name].ports))} "
                              "did not take what was sent)") from exc
        except ChannelClosed as exc:
            if self._result is None:
                raise
            raise self._ended_error(f"send to input {name!r}") from exc

    async def asend(self, name: str, data: RuntimeData, timeout: float | None = None) -> None:
        check_accepts(self.inputs[self._name(name)], data)
        await self._awrite(name, data.payload_size,
                           lambda writer: self._send_locked(name, writer, data, 0),
                           lambda: self.send(name, data, timeout))

    async def _awrite(self, name: str, nbytes: int, now: Callable[[ChannelWriter], None],
                      blocking: Callable[[], None]) -> None:
        """``now(writer)`` in the loop's thread, under the input's lock, when the channel
        has room for ``nbytes``; else ``blocking()`` in a thread of its own."""
        writer = self._writer(name)
        lock = self._send_locks[name]
        if lock.acquire(blocking=False):
            try:
                if not self._send_would_block(name, writer, nbytes):
                    now(writer)
                    return
            finally:
                lock.release()
        await off_loop(blocking)

    def _send_would_block(self, name: str, writer: ChannelWriter, nbytes: int) -> bool:
        if self._result is not None or name in self._closed_inputs or writer.closed or \
                nbytes > writer.capacity:
            return False  # _send_locked raises the right error at once
        return not writer.can_send(nbytes)

    def close_input(self, name: str, timeout: float | None = None) -> None:
        writer = self._writer(name)
        with self._send_locks[name]:
            self._close_locked(name, writer, timeout)

    async def aclose_input(self, name: str, timeout: float | None = None) -> None:
        await self._awrite(name, 0, lambda writer: self._close_locked(name, writer, 0),
                           lambda: self.close_input(name, timeout))

    def _close_locked(self, name: str, writer: ChannelWriter, timeout: float | None) -> None:
        if name in self._closed_inputs:
            return
        if self._result is not None:
            raise self._ended_error(f"close input {name!r}")
        try:
            writer.send_eos(timeout)
        except ChannelTimeout as exc:
            raise SendTimeout(f"session {self.session_id}: no room for the end of stream "
                              f"of input {name!r} within {timeout} s") from exc
        except ChannelClosed as exc:
            if self._result is None:
                raise
            raise self._ended_error(f"close input {name!r}") from exc
        # The publisher stays open until the session ends: it owns the samples in
        # flight, which the nodes may not have taken yet.
        self._closed_inputs.add(name)

    # -- outputs -------------------------------------------------------------------------
    def _take(self) -> tuple[str, RuntimeData] | _Pending | None:
        """One output message without waiting: ``(name, data)``, None when the outputs are
        over, or ``_PENDING``. Call with the read lock held."""
        order = self._open_outputs
        for _ in range(len(order)):
            name = order.pop(0)
            reader = self._readers[name]
            try:
                data = reader.receive()
            except WireFormatError:
                order.insert(0, name)  # counted in reader.rejected; the channel goes on
                continue
            if data is not None:
                order.append(name)  # round robin: the other outputs come first next time
                return name, data
            if not reader.eos:
                order.append(name)
        if not order:
            return None
        if self._result is not None:
            if self._failed:
                raise self._ended_error("read outputs")
            return None
        return _PENDING

    def _wait(self, timeout: float | None) -> None:
        """Until an output has something, the wake-up fd fired or the session ended. Call
        with the read lock held."""
        readers = [self._readers[name] for name in self._open_outputs]
        if self._result is not None:
            return
        with contextlib.suppress(ChannelClosed):
            self._plane.wait(readers, fds=[self._wake_fd], timeout=timeout)
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake_fd)

    def read(self) -> Iterator[tuple[str, RuntimeData]]:
        while True:
            with self._read_lock:
                item = self._take()
                while isinstance(item, _Pending):
                    self._wait(None)
                    item = self._take()
            if item is None:
                return
            yield item

    async def aread(self) -> AsyncIterator[tuple[str, RuntimeData]]:
        while True:
            item: tuple[str, RuntimeData] | _Pending | None = _PENDING
            if self._read_lock.acquire(blocking=False):
                try:
                    item = self._take()
                finally:
                    self._read_lock.release()
            if item is None:
                return
            if isinstance(item, _Pending):
                await self._await_output()
                continue
            yield item

    def _wait_for_output(self) -> None:
        with self._read_lock:
            if self._take_would_wait():
                self._wait(None)

    def _take_would_wait(self) -> bool:
        if self._result is not None:
            return False
        return not any(self._readers[name].has_data() for name in self._open_outputs)

    async def _await_output(self) -> None:
        try:
            await off_loop(self._wait_for_output)
        except asyncio.CancelledError:
            # Release the waiting thread (and the read lock): it only waits and takes no
            # message, so nothing is lost to the cancelled task.
            self._wake()
            raise

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake_fd, 1)

    # -- readiness and the end -----------------------------------------------------------
    def announce(self) -> None:
        """Once every node is Ready (its channels open): make sure each node writer knows
        the host reader. Its first announcement may have gone out before the node's writer
        existed; a waiting ``outputs()`` also answers the writers' roll calls itself."""
        if not self._read_lock.acquire(blocking=False):
            return
        try:
            if self._result is None:
                for name in self._open_outputs:
                    self._readers[name]._send_ack()
        finally:
            self._read_lock.release()

    def end(self, result: SessionResult, failed: bool) -> None:
        """The session is over: wake every blocked call (they raise or end) and release the
        channels and the iceoryx2 node."""
        if self._result is not None:
            return
        self._failed = failed
        self._result = result
        self._shut_down(CLOSE_WAIT_S)

    def _shut_down(self, patience: float) -> None:
        """Wake every blocked call, then release everything once no thread is inside (a
        thread still inside after ``patience`` seconds keeps it until the process exits)."""
        self._plane.shutdown()
        self._wake()
        locks = [self._read_lock, *self._send_locks.values()]
        held = [lock for lock in locks if lock.acquire(timeout=patience)]
        try:
            if len(held) == len(locks):
                self._release()
        finally:
            for lock in held:
                lock.release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        atexit.unregister(self._at_exit)
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close(drain_timeout=0, eos=False)
        self._plane.close(drain_timeout=0)
        with contextlib.suppress(OSError):
            os.close(self._wake_fd)

    def _at_exit(self) -> None:
        # A host that exits with the session still running: the nodes die with it (their
        # parent-death signal); this releases the host's own shared memory.
        if not self._released:
            with contextlib.suppress(Exception):
                self._shut_down(1.0)


class SessionIO:
    """The application-facing half of ``Session``: session inputs, outputs and readiness.
    (A mixin: ``Session`` sets these attributes and calls ``_io_started``/``_io_ended``.)"""

    id: str
    _ends: SessionEnds | None
    _ready: threading.Event
    _ready_or_ended: threading.Event
    _result: SessionResult | None
    _io_failed: bool = False

    def _io(self) -> SessionEnds:
        if self._ends is None:
            raise SessionError(f"session {self.id} has no session inputs or outputs (name "
                               "them under `inputs:`/`outputs:` in the pipeline config)")
        return self._ends

    def send(self, name: str, data: RuntimeData, timeout: float | None = None) -> None:
        """Write ``data`` to session input ``name``: one copy into shared memory. Blocks
        while the input's channel is full (backpressure), at most ``timeout`` seconds
        (then ``SendTimeout``). Before the nodes are Ready it fills the channel, then waits
        for them. Raises ``SessionFailed``/``SessionEnded`` once the session is over."""
        self._io().send(name, data, timeout)

    async def asend(self, name: str, data: RuntimeData, timeout: float | None = None) -> None:
        """``send`` for asyncio: never blocks the event loop (waiting happens in a worker
        thread; a cancelled ``asend`` may still deliver its message)."""
        await self._io().asend(name, data, timeout)

    def close_input(self, name: str, timeout: float | None = None) -> None:
        """End of stream on input ``name``: it flows downstream like a source node's.
        Idempotent; ``send`` to a closed input raises. Like ``send`` it may wait for room."""
        self._io().close_input(name, timeout)

    async def aclose_input(self, name: str, timeout: float | None = None) -> None:
        """``close_input`` for asyncio: never blocks the event loop."""
        await self._io().aclose_input(name, timeout)

    def outputs(self) -> Iterator[tuple[str, RuntimeData]]:
        """``(name, data)`` from the session outputs, in order per output, until every
        output reached end of stream or the session was stopped; raises ``SessionFailed``
        when the session failed. ``data`` is a read-only view onto shared memory, valid as
        long as it is referenced (``data.release()`` gives the sample back at once)."""
        return self._io().read()

    def aoutputs(self) -> AsyncIterator[tuple[str, RuntimeData]]:
        """``outputs()`` for ``async for``; never blocks the event loop."""
        return self._io().aread()

    @property
    def ready(self) -> bool:
        """True once every node is Ready and was told to start (until the session ends)."""
        return self._ready.is_set() and self._result is None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every node is Ready and started. Raises TimeoutError after
        ``timeout`` seconds, and ``SessionFailed``/``SessionEnded`` when the session ended
        first (e.g. a node failed in ``initialize()``)."""
        if not self._ready_or_ended.wait(timeout):
            raise TimeoutError(f"session {self.id} not Ready after {timeout} s")
        result = self._result
        if result is not None:
            kind = SessionFailed if self._io_failed else SessionEnded
            raise kind(f"session {self.id} ended before it was Ready: {result.reason}",
                       result)

    def _io_started(self) -> None:
        self._ready.set()
        self._ready_or_ended.set()
        if self._ends is not None:
            self._ends.announce()

    def _io_ended(self, result: SessionResult, failed: bool) -> None:
        self._io_failed = failed
        self._ready_or_ended.set()
        if self._ends is not None:
            self._ends.end(result, failed)


def open_ends(session_id: str, pipeline: ValidatedPipeline,
              ends: HostEnds) -> SessionEnds | None:
    """The host's channel ends of a new session, or None for a sealed pipeline."""
    if not ends.inputs and not ends.outputs:
        return None
    try:
        return SessionEnds(session_id, pipeline, ends)
    except Exception as exc:
        raise SessionError(f"session {session_id}: cannot open the host's ends of its "
                           f"session inputs/outputs: {exc}") from exc
