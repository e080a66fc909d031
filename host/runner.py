"""The node runner: the program that runs inside each node's own process.

    python -m nodehost.runner --control-fd N

Order matters and is the point of this module: die with the host, receive the launch spec,
import what nodehost itself needs and open the shared-memory channels, *then* lock the
process into its sandbox, and only then import the node's own code (which may be slow, crash
or be hostile) and drive it: initialize → Ready → (start) → process/generate → end of stream →
cleanup. Everything the host needs to know travels over the control socket.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost import protocol
from nodehost.plan import NodeLaunch
from nodehost.stats import Samples, percentiles_s

if TYPE_CHECKING:  # asyncio is imported only for a node that is async: it costs ~40 ms CPU
    import asyncio

from nodehost.protocol import Cause, ExitCode, Kind, ProcessStatus, Stage

_IDLE, _INITIALIZING = ProcessStatus.IDLE, ProcessStatus.INITIALIZING
_READY, _PROCESSING = ProcessStatus.READY, ProcessStatus.PROCESSING  # (hot loops: no lookups)
IDLE_S = 0.25  # Processing → Ready once no input arrived for this long (no status flapping)
BATCH = 64  # messages taken from one input before looking at control and stats again
CONTROL_POLL_S = 0.002  # a generating node looks at the control socket at most this often
_HOST_FILES = str(Path(__file__).resolve().parent)


class ControlLogHandler(logging.Handler):
    """Node log records (INFO and up) become ``log`` events in the host."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(logging.INFO)
        self.runner = runner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.runner.report(Kind.LOG, level=record.levelname, message=self.format(record))
        except Exception:
            self.handleError(record)


class Stopped(BaseException):
    """The host asked this node to stop (or went away). A BaseException, like
    KeyboardInterrupt: node code's ``except Exception`` must not swallow a stop."""


def node_traceback(exc: BaseException) -> str:
    """The exception with the node's own frames only: the runner's frames are noise."""
    every = traceback.extract_tb(exc.__traceback__)
    # Only the node's own frames — unless the error arose in nodehost itself, where the
    # whole stack is what a bug report needs.
    frames = [f for f in every if not f.filename.startswith(_HOST_FILES)] or every
    lines = traceback.format_list(frames) if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


def describe(exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last


class Runner:
    def __init__(self, sock: socket.socket, launch: NodeLaunch) -> None:
        self.sock = sock
        self.launch = launch
        self.status = _IDLE
        self.status_since = time.monotonic()
        self.blocked_ns = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.received = 0
        self.sent = 0
        # Sampled per message (one store, one add each); summarised in stats() only.
        self.processing_ns = Samples()   # process()/generate() time per message
        self.input_age_ns = Samples()    # now − the input's origin timestamp
        self.busy_ns = 0
        self.last_stats = time.monotonic()
        self.stats_interval_s = launch.stats_interval_s
        self.next_stats_ns = 0  # loops compare their own clock reading with this, per message
        self.io: NodeIO | None = None
        self.node: Any = None
        self.sandbox: Any = None  # the SandboxPlan applied to this process
        self.layers: list[str] = []
        self.started = False
        self.first_output_ts: float | None = None
        self.next_poll = 0.0

    # -- reporting -----------------------------------------------------------------------
    def report(self, kind: Kind, **fields: Any) -> None:
        protocol.send(self.sock, kind, **fields)

    def set_status(self, status: ProcessStatus, **fields: Any) -> None:
        if status == self.status:
            return
        self.status = status
        self.status_since = time.monotonic()
        self.report(Kind.STATUS, status=status, **fields)

    def stats(self, force: bool = False) -> None:
        """Report this node's figures and its channel ends' (at most every
        ``stats_interval_s`` unless forced): counters are read, percentiles computed here."""
        now = time.monotonic()
        elapsed = now - self.last_stats
        if not force and elapsed < self.stats_interval_s:
            return
        self.last_stats = now
        self.next_stats_ns = int((now + self.stats_interval_s) * 1e9)
        io = self.io
        outputs = [w.figures() for w in io.writers.values()] if io else []
        inputs = [dict(r.figures(), port=port) for port, r in io.readers.items()] if io else []
        # Time blocked on a full output is waiting, not work.
        blocked_ns = int(sum(o["blocked_s"] for o in outputs) * 1e9)
        busy_ns, self.busy_ns = self.busy_ns, 0
        busy = max(0.0, min(1.0, (busy_ns - (blocked_ns - self.blocked_ns)) / (elapsed * 1e9)))
        self.blocked_ns = blocked_ns
        processing = percentiles_s(self.processing_ns.take())
        age = percentiles_s(self.input_age_ns.take())
        self.report(Kind.STATS, received=self.received, sent=self.sent,
                    first_output_ts=self.first_output_ts, processing_s=processing,
                    input_age_s=age, busy=round(busy, 4) if elapsed > 0 else None,
                    outputs=outputs, inputs=inputs)

    def progress(self, fraction: float, message: str) -> None:
        self.report(Kind.PROGRESS, fraction=fraction, message=message)

    def cleanup(self) -> None:
        """The node's cleanup() after a stop; its failure is reported, not raised."""
        try:
            if self.node is not None:
                self.resolve(self.node.cleanup())
        except Exception as exc:
            self.report(Kind.LOG, level="WARNING", message=f"cleanup failed: {describe(exc)}")

    # -- control -------------------------------------------------------------------------
    def check_control(self, block: bool = False) -> None:
        """Handle pending host messages; raise Stopped on stop or a vanished host."""
        self.sock.setblocking(block)
        try:
            while True:
                try:
                    message = protocol.receive(self.sock)
                except BlockingIOError:
                    return
                if message is None or message["t"] == Kind.STOP:
                    raise Stopped()
                if message["t"] == Kind.START:
                    self.started = True
                    self.last_stats = time.monotonic()  # busy counts from the start on
                    self.next_stats_ns = int((self.last_stats + self.stats_interval_s) * 1e9)
                    self.busy_ns = 0
                    if block:
                        return
        finally:
            self.sock.setblocking(True)

    def poll(self) -> None:
        """Between generated messages: control and stats, at most every CONTROL_POLL_S
        (looking at the socket costs three syscalls and an exception; a message a few µs)."""
        now = time.monotonic()
        if now >= self.next_poll:
            self.next_poll = now + CONTROL_POLL_S
            self.check_control()
            self.stats()

    # -- calling node code ---------------------------------------------------------------
    def event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            import asyncio

            self.loop = asyncio.new_event_loop()
        return self.loop

    def resolve(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            return self.event_loop().run_until_complete(value)
        return value

    def iterate(self, value: Any) -> Iterator[Any]:
        """Whatever a node returned, as a stream of RuntimeData."""
        from nodehost.data import RuntimeData

        value = self.resolve(value)
        if value is None:
            return
        if isinstance(value, RuntimeData):
            yield value
        elif inspect.isasyncgen(value):
            loop = self.event_loop()
            while True:
                try:
                    item = loop.run_until_complete(value.__anext__())
                except StopAsyncIteration:
                    return
                if item is not None:
                    yield item
        else:
            try:
                items = iter(value)
            except TypeError as exc:
                raise TypeError(f"{self.launch.node_type} returned {type(value).__name__}; "
                                "expected RuntimeData, an iterable of them, or None") from exc
            for item in items:
                if item is not None:
                    yield self.resolve(item)


def _load_node_class(entrypoint: str) -> type[Any]:
    module_name, _, class_name = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    try:
        cls: type[Any] = getattr(module, class_name)
    except AttributeError as exc:
        raise ImportError(f"module {module_name!r} has no attribute {class_name!r} "
                          f"(manifest entrypoint {entrypoint!r})") from exc
    return cls


def run_node(runner: Runner) -> int:
    """Drive one node from launch to exit; returns the process exit code."""
    from nodehost import sandbox
    from nodehost.channels import DataPlane
    from nodehost.manifest import NodeManifest

    launch = runner.launch
    plane: DataPlane | None = None
    finished = False
    try:
        try:
            manifest = NodeManifest.model_validate(launch.manifest)
            params = manifest.params_model.model_validate(launch.params)
            plane = DataPlane(f"{launch.session_id}/{launch.node_id}")
            writers = {p.port: plane.open_writer(p.channel, capacity=p.capacity,
                                                  backpressure=p.backpressure,
                                                  readers=p.subscribers,
                                                  session_id=launch.session_id)
                       for p in launch.outputs}
            # A writer blocked by backpressure wakes on the control socket: stop is obeyed
            # at once, without polling; meanwhile it keeps reporting stats.
            plane.set_interrupt([runner.sock.fileno()], runner.check_control)
            for writer in writers.values():
                writer.on_blocked = runner.stats
                writer.blocked_tick_s = runner.stats_interval_s
            # Every reader is open before the session starts any source: each message is its.
            # Sized like the writer sizes it: whichever end comes first creates the channel.
            readers = {p.port: plane.open_reader(p.channel, capacity=p.capacity,
                                                  backpressure=p.backpressure, from_start=True,
                                                  max_subscribers=p.subscribers)
                       for p in launch.inputs}
            runner.sandbox = sandbox.SandboxPlan(
                network=launch.network,
                fs_read=tuple(launch.fs_read),
                fs_write=tuple(launch.fs_write),
                tmp_dir=launch.tmp_dir,
                memory_mb=launch.memory_mb,
                plugin_paths=tuple(launch.plugin_paths),
            )
            layers = runner.layers = sandbox.apply(runner.sandbox)
        except Exception as exc:
            runner.report(Kind.ERROR, stage=Stage.SETUP, error=describe(exc),
                          traceback=traceback.format_exc())
            return ExitCode.RUNNER_ERROR
        runner.io = io = NodeIO(runner, plane, writers, readers)
        node_logger = logging.getLogger("nodehost.node")
        node_logger.setLevel(logging.INFO)
        node_logger.addHandler(ControlLogHandler(runner))
        runner.set_status(_INITIALIZING, sandbox=layers)
        try:
            cls = _load_node_class(launch.entrypoint)
            runner.node = node = cls(params, node_id=launch.node_id,
                                     session_id=launch.session_id, emit=io.emit,
                                     progress=runner.progress)
            node._loan_fn = io.loan
            runner.resolve(node.initialize())
        except Stopped:
            raise
        except BaseException as exc:
            return io.fail(Stage.INITIALIZE, exc)
        runner.set_status(_READY)
        runner.check_control(block=True)
        try:
            if readers:
                io.consume()
            else:
                io.produce()
            io.finish()
            finished = True
        except Stopped:
            raise
        except BaseException as exc:
            return io.fail(Stage.PROCESS if readers else Stage.GENERATE, exc)
        runner.stats(force=True)
        runner.report(Kind.DONE)
        return ExitCode.OK
    except Stopped:
        # From here a SIGTERM means cleanup() overran the host's grace period: just die.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        runner.cleanup()
        runner.stats(force=True)
        return ExitCode.OK
    finally:
        if plane is not None:
            if not finished:
                # Failed or stopped: the stream did not end, so no end of stream goes
                # downstream (a sink would take a cut-off stream for a complete one), and
                # nothing waits for readers to drain (closing would send EOS and block).
                for writer in list(plane.writers):
                    with contextlib.suppress(Exception):
                        writer.close(drain_timeout=0, eos=False)
            plane.close()


class NodeIO:
    """Moves data between the node's code and its channels."""

    def __init__(self, runner: Runner, plane: Any, writers: dict[str, Any],
                 readers: dict[str, Any]) -> None:
        self.runner = runner
        self.plane = plane
        self.writers = writers
        self.readers = readers
        self.only_output = next(iter(writers)) if len(writers) == 1 else None
        from nodehost.data import RuntimeData, inherited_origin

        self.data_type = RuntimeData
        self.inherited_origin = inherited_origin
        # a returned RuntimeData goes straight to the only output's send (see take())
        self.send_direct = None if self.only_output is None else writers[self.only_output].send

    def writer(self, port: str | None) -> Any:
        if port is None:
            if self.only_output is None:
                raise RuntimeError(
                    f"{self.runner.launch.node_type} has {len(self.writers)} output ports; "
                    "return None and use self.emit(port, data) instead")
            port = self.only_output
        try:
            return self.writers[port]
        except KeyError as exc:
            raise KeyError(f"no output port {port!r} (outputs: "
                           f"{', '.join(self.writers) or 'none'})") from exc

    def emit(self, port: str | None, data: Any) -> None:
        self.writer(port).send(data)
        self.count_output()

    def count_output(self) -> None:
        runner = self.runner
        if runner.first_output_ts is None:
            runner.first_output_ts = time.time()
        runner.sent += 1

    def loan(self, port: str | None, kind: str, *args: Any, **kwargs: Any) -> Any:
        self.count_output()
        # A source that only loans yields nothing to produce()'s loop: look at control and
        # stats here too (poll() costs a clock read until they are due).
        self.runner.poll()
        return getattr(self.writer(port), f"loan_{kind}")(*args, **kwargs)

    def deliver(self, value: Any) -> None:
        for item in self.runner.iterate(value):
            self.emit(None, item)

    def produce(self) -> None:
        runner = self.runner
        runner.set_status(_PROCESSING)
        processing, mask = runner.processing_ns, Samples.MASK
        monotonic_ns = time.monotonic_ns
        started = monotonic_ns()
        for item in runner.iterate(runner.node.generate()):
            # A source's processing time: generate() making the item (its sleeps included).
            now = monotonic_ns()
            took = now - started
            processing.values[processing.count & mask] = took
            processing.count += 1
            runner.busy_ns += took
            self.emit(None, item)
            runner.poll()
            started = monotonic_ns()

    def consume(self) -> None:
        runner = self.runner
        node = runner.node
        open_ports = dict(self.readers)
        readers = list(open_ports.values())
        sock_fds = [runner.sock.fileno()]
        wait, take, monotonic = self.plane.wait, self.take, time.monotonic
        last_input = monotonic()
        while open_ports:
            timeout = runner.stats_interval_s
            if runner.status == _PROCESSING:
                timeout = max(0.0, min(timeout, last_input + IDLE_S - monotonic()))
            _ready, fds = wait(readers, fds=sock_fds, timeout=timeout)
            if fds:
                runner.check_control()
            for port, reader in list(open_ports.items()):
                if take(port, reader):
                    last_input = monotonic()
                if reader.eos:
                    del open_ports[port]
                    readers = list(open_ports.values())
                    self.deliver(node.end_of_stream(port))
            runner.stats()  # when due
            if runner.status == _PROCESSING and monotonic() - last_input >= IDLE_S:
                runner.set_status(_READY)

    def take(self, port: str, reader: Any) -> int:
        """Up to BATCH messages of one input through the node; returns how many.

        The per-message path: clock reads, the node's call and, when the node returns a
        RuntimeData and has one output, that output's ``send`` — no generator or awaitable
        checks in between. Figures are one store and one add each (summarised in stats()).
        What process() creates derives from its input, so it inherits the input's origin
        timestamp. The batch is bounded: under a stream that never pauses the loop must still
        come round to the control socket (stop) and to stats().
        """
        runner = self.runner
        process = runner.node.process
        receive = reader.receive
        clock = time.monotonic_ns
        direct = self.send_direct
        data_type = self.data_type
        inherited = self.inherited_origin
        ages, processing, mask = runner.input_age_ns, runner.processing_ns, Samples.MASK
        age_values, processing_values = ages.values, processing.values
        taken = 0
        try:
            while taken < BATCH and (data := receive()) is not None:
                taken += 1
                runner.received += 1
                if runner.status != _PROCESSING:
                    runner.set_status(_PROCESSING)
                started = clock()
                inherited.ns = origin = data.origin_ns
                age_values[ages.count & mask] = started - origin
                ages.count += 1
                result = process(data, port)
                if result is not None:
                    if direct is not None and type(result) is data_type:
                        direct(result)
                        self.count_output()
                    else:
                        self.deliver(result)
                took = clock() - started
                processing_values[processing.count & mask] = took
                processing.count += 1
                runner.busy_ns += took
                if started >= runner.next_stats_ns:  # a slow process() still reports
                    runner.stats()
        finally:
            inherited.ns = 0
        return taken

    def finish(self) -> None:
        """End of stream downstream, wait until readers took everything, then clean up."""
        for writer in self.writers.values():
            writer.send_eos()
        self.runner.stats(force=True)  # the host sees the channels Draining from here
        # The application reads session outputs at its own pace: wait for it (a stop still
        # ends the wait). Between nodes the default drain timeout applies.
        host_reads = {p.port for p in self.runner.launch.outputs if p.host_reads}
        for port, writer in self.writers.items():
            if port in host_reads:
                writer.close(drain_timeout=None)
            else:
                writer.close()
        self.runner.resolve(self.runner.node.cleanup())

    def fail(self, stage: Stage, exc: BaseException) -> int:
        from nodehost import sandbox

        runner = self.runner
        used = sandbox.memory_limit_hit(exc, runner.launch.memory_mb)
        if used is not None:
            # The host words it ("hit its memory limit of N MiB"); the native error is detail.
            runner.report(Kind.ERROR, stage=stage, cause=Cause.MEMORY, error=describe(exc),
                          memory_limit_mb=runner.launch.memory_mb, memory_used=used,
                          traceback=node_traceback(exc))
            return ExitCode.MEMORY_LIMIT
        denied = sandbox.denied_path(exc, runner.sandbox) if runner.sandbox else None
        if denied is not None and "landlock_fs" in runner.layers:
            path, grant = denied
            runner.report(Kind.ERROR, stage=stage, cause=Cause.SANDBOX, error=describe(exc),
                          path=path, grant=grant, traceback=node_traceback(exc))
        else:
            runner.report(Kind.ERROR, stage=stage, error=describe(exc),
                          traceback=node_traceback(exc))
        try:
            if runner.node is not None:
                runner.resolve(runner.node.cleanup())
        except Exception:
            pass
        return ExitCode.NODE_ERROR



def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nodehost.runner")
    parser.add_argument("--control-fd", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from nodehost import sandbox

    sandbox.preexec()  # die with the host, even if the host is SIGKILLed

    def on_sigterm(signum: int, frame: object) -> None:
        # Once: the host sends SIGTERM to interrupt a node that cannot hear its socket (in
        # initialize()), and again only when cleanup() overran its grace: then just die.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Stopped()

    signal.signal(signal.SIGTERM, on_sigterm)
    # The host stops nodes itself: a Ctrl-C meant for the host (sent to its process group
    # while this process was being spawned, blocked since) is dropped here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `kill -USR1 <pid>` prints every thread's stack: how to see where a node hangs.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        args = _parse(argv)
        sock = socket.socket(fileno=args.control_fd)
        message = protocol.receive(sock)
        if message is None or message.get("t") != Kind.LAUNCH:
            return ExitCode.RUNNER_ERROR
        launch = NodeLaunch.from_json(message["spec"])
        if os.getppid() != launch.host_pid:  # the host died before we could watch it
            return ExitCode.RUNNER_ERROR
        return run_node(Runner(sock, launch))
    except Stopped:  # stopped before the node was set up: nothing to clean up
        return ExitCode.OK


def exit_now(code: int) -> None:
    """End the process without finalizing the interpreter.

    By now everything the runner holds is released: the node's cleanup() ran, its channels
    are closed (run_node's ``finally``), its log records are sent. What normal interpreter
    exit adds is tearing down every module and object of numpy, pydantic and iceoryx2 —
    100–300 ms of CPU on a loaded machine, which every stop and every failure of a session
    would wait for. atexit handlers (the node's own too) still run; threads the node left
    running are not waited for (the process is ending: the host would kill them anyway).
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    exit_now(main())
