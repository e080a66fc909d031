"""``nodehost serve``: one session per WebSocket client, a page for people, a pool of warm
sessions.

Ownership runs one way: ``SessionPool`` owns every session the server started (idle ones in
the warm pool and those lent to a client), a ``Lease`` owns one session from its start to its
teardown, and a client ``Connection`` borrows a lease for as long as it stays connected. The
transport is only an input and an output of the session (as in pipecat): binary frames go to
``Session.asend``, ``Session.aoutputs`` goes back as binary frames, session events go out as
JSON. The protocol is in ``docs/serve.md``; its frame layout in ``nodehost.serve_protocol``.

Blocking calls (starting and stopping sessions) run in
threads of their own (``off_loop``), never in the loop's few default workers, which sessions
that wait on one another could all hold.

Memory stays bounded whatever a client does: a frame is at most ``max_frame_bytes``; the
server reads the next frame only after the session took the previous one (``asend`` blocks
under backpressure, and TCP carries that back to the client); an output is sent only after
the previous one left the socket's write buffer (so a slow reader slows the session down,
not the server's memory); events for a slow reader wait in a bounded queue that drops stats,
progress and log events first (the client is told how many).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from nodehost import serve_protocol as proto
from nodehost.config import ValidatedPipeline
from nodehost.data import monotonic_stamp
from nodehost.endpoints import off_loop
from nodehost.errors import NodehostError, SessionEnded, WireFormatError
from nodehost.errors import ServeUsageError as ServeUsageError
from nodehost.lifecycle import ProcessStatus
from nodehost.session import Host, Session, SessionResult

log = logging.getLogger("nodehost.serve")

WEB_DIR = Path(__file__).with_name("web")
DEFAULT_MAX_FRAME = 4 * 1024 * 1024   # bytes; 20 ms of 48 kHz stereo float is 7.7 KB
EVENT_QUEUE = 256                     # events waiting for one slow client, before dropping
DROPPABLE = frozenset({"stats", "progress", "log"})
LIVE = frozenset({ProcessStatus.READY.value, ProcessStatus.PROCESSING.value})
REFILL_BACKOFF_S = (1.0, 30.0)        # a warm session that fails to start: retry after 1..30 s
# A refill loads models while clients talk to their sessions: at this nice value it takes
# the CPU only when theirs do not need it (back to 0 when the session is lent).
WARMING_NICE = 10


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    warm: int = 0
    max_sessions: int | None = None
    token: str | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    metrics_port: int | None = None  # Prometheus metrics on 127.0.0.1 (nodehost-prometheus)

    def check(self) -> None:
        if self.warm < 0:
            raise ServeUsageError(f"--warm {self.warm}: must be 0 or more")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ServeUsageError(f"--max-sessions {self.max_sessions}: must be 1 or more")
        if self.max_sessions is not None and self.warm > self.max_sessions:
            raise ServeUsageError(f"--warm {self.warm} is more than --max-sessions "
                                  f"{self.max_sessions}: idle sessions count towards the limit")
        if not is_loopback(self.host) and not self.token:
            raise ServeUsageError(
                f"--host {self.host} is reachable from other machines: anyone who can connect "
                "could start sessions on this host. Give a secret with --token T (or the "
                "NODEHOST_SERVE_TOKEN environment variable), or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class Refused(Exception):
    """No session for this client; the message says why."""


# ------------------------------------------------------------------------------ sessions

@dataclass(eq=False)
class Lease:
    """One session from its start to its teardown, with what a client needs to know about it:
    its nodes' latest status events, whether it is Ready, and its events for the client."""

    session: Session
    loop: asyncio.AbstractEventLoop
    started: float = field(default_factory=time.monotonic)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_after_s: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    events: deque[dict[str, Any]] = field(default_factory=deque)
    event_waiter: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    attached: bool = False
    warm: bool = False  # lent from the pool, Ready before its client connected
    _pump: threading.Thread | None = None

    def start_pump(self) -> None:
        """Drain the session's events (in a thread: ``Session.events`` blocks) into the loop."""
        self._pump = threading.Thread(target=self._pump_events, daemon=True,
                                      name=f"nodehost-serve-{self.session.id}")
        self._pump.start()

    def _pump_events(self) -> None:
        for event in self.session.events():
            try:
                self.loop.call_soon_threadsafe(self._on_event, event)
            except RuntimeError:  # the loop is closed: the server is gone
                return

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "status":
            self.statuses[event["node"]] = event
            if not self.ready.is_set() and len(self.statuses) == len(self.session.launches) \
                    and all(e["status"] in LIVE for e in self.statuses.values()):
                self.ready_after_s = time.monotonic() - self.started
                self.ready.set()
        if kind == proto.SESSION_END:
            self.ended.set()
            self.ready.set()  # wakes whoever waits for Ready; they check ``ended``
            return  # the connection sends session_end itself, after the last output
        if not self.attached:
            return
        if len(self.events) >= EVENT_QUEUE and kind in DROPPABLE:
            self.dropped += 1
            return
        self.events.append(event)
        self.event_waiter.set()

    def attach(self) -> None:
        """A client takes this session: it first gets every node's latest status."""
        self.attached = True
        self.events.extend(self.statuses.values())
        self.event_waiter.set()

    def renice(self, nice: int) -> None:
        """Set the CPU priority of every thread of the session's node processes (on Linux,
        nice is per thread: the threads a node already started need it too). Best effort:
        raising it back needs CAP_SYS_NICE, without which a warm session keeps running niced."""
        for process in self.session.processes().values():
            try:
                tids = os.listdir(f"/proc/{process.pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                except ProcessLookupError:
                    continue
                except PermissionError:
                    log.debug("session %s stays at its lower CPU priority: no permission to "
                              "raise it", self.session.id)
                    return

    @property
    def usable(self) -> bool:
        return not self.ended.is_set() and self.session.result is None

    async def stop(self, reason: str) -> SessionResult:
        result = await off_loop(self.session.stop, reason)
        if self._pump is not None:
            await off_loop(self._pump.join)
        return result


class SessionPool:
    """Every session of the server: ``warm`` idle ones kept started and Ready (refilled in the
    background), and those lent to clients; at most ``max_sessions`` in all."""

    def __init__(self, host: Host, pipeline: ValidatedPipeline, options: ServeOptions) -> None:
        self.host = host
        self.pipeline = pipeline
        self.options = options
        self.idle: list[Lease] = []      # warm: started, not lent (Ready or getting there)
        self.lent: set[Lease] = set()
        self._starting = 0
        self._closed = False
        self._wake_filler = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[SessionResult]] = set()

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.lent) + self._starting

    def counts(self) -> dict[str, int | None]:
        return {"idle_ready": sum(lease.ready.is_set() and lease.usable for lease in self.idle),
                "idle": len(self.idle), "lent": len(self.lent), "starting": self._starting,
                "warm": self.options.warm, "max_sessions": self.options.max_sessions}

    def start(self) -> None:
        if self.options.warm:
            self._filler = asyncio.create_task(self._fill(), name="nodehost-serve-warm-pool")

    async def _new_lease(self) -> Lease:
        self._starting += 1
        try:
            session = await off_loop(self.host.start_session, self.pipeline.config)
        finally:
            self._starting -= 1
        lease = Lease(session, asyncio.get_running_loop())
        lease.start_pump()
        return lease

    async def _fill(self) -> None:
        """Keep ``warm`` idle sessions, within ``max_sessions``; back off when they fail."""
        backoff = REFILL_BACKOFF_S[0]
        while not self._closed:
            self._prune_idle()
            limit = self.options.max_sessions
            if len(self.idle) < self.options.warm and (limit is None or self.total < limit):
                try:
                    lease = await self._new_lease()
                except NodehostError as exc:
                    log.error("warm session could not start: %s (retrying in %.0f s)", exc,
                              backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, REFILL_BACKOFF_S[1])
                    continue
                if self._closed:
                    await lease.stop("server shutting down")
                    return
                lease.renice(WARMING_NICE)
                self.idle.append(lease)
                await lease.ready.wait()
                if not lease.usable:
                    log.error("warm session %s ended before it was Ready: %s", lease.session.id,
                              lease.session.result and lease.session.result.reason)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, REFILL_BACKOFF_S[1])
                else:
                    backoff = REFILL_BACKOFF_S[0]
                continue
            self._wake_filler.clear()
            await self._wake_filler.wait()

    def _prune_idle(self) -> None:
        """Drop idle sessions that ended on their own (a node crashed while waiting)."""
        for lease in [lease for lease in self.idle if not lease.usable]:
            self.idle.remove(lease)
            task = asyncio.create_task(lease.stop("warm session ended"))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def acquire(self) -> Lease:
        """A session for a new client: a warm one if there is one (Ready ones first), else a
        new one. Raises ``Refused`` at once when ``max_sessions`` are in use."""
        if self._closed:
            raise Refused("the server is shutting down")
        self._prune_idle()
        if self.idle:
            ready = [lease for lease in self.idle if lease.ready.is_set()]
            lease = (ready or self.idle)[0]
            self.idle.remove(lease)
            lease.warm = lease.ready.is_set()
            lease.renice(0)
            self.lent.add(lease)
            self._wake_filler.set()
            return lease
        limit = self.options.max_sessions
        if limit is not None and self.total >= limit:
            raise Refused(f"server busy: all {limit} sessions (--max-sessions {limit}) are in "
                          "use; try again later")
        self._starting += 1  # hold the slot while the session starts
        try:
            lease = await self._new_lease()
        finally:
            self._starting -= 1
        self.lent.add(lease)
        return lease

    async def release(self, lease: Lease, reason: str) -> None:
        try:
            await lease.stop(reason)
        finally:
            self.lent.discard(lease)
            self._wake_filler.set()

    async def close(self) -> None:
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        leases = [*self.idle, *self.lent]
        self.idle = []
        await asyncio.gather(*(lease.stop("server shutting down") for lease in leases),
                             *self._stopping)


# ------------------------------------------------------------------------------ clients

class ProtocolError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Connection:
    """One client on ``/ws``: feeds its frames to the session and the session's outputs and
    events back, until the session ends, the client leaves or breaks the protocol."""

    def __init__(self, ws: Any, lease: Lease, options: ServeOptions) -> None:
        self.ws = ws
        self.lease = lease
        self.session = lease.session
        self.options = options
        self.connected_at = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._seq = 0

    async def send_json(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(message, default=str))

    async def send_bytes(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(frame)

    async def run(self) -> str:
        """Serve the client; returns why the session is being torn down."""
        self.lease.attach()
        events = asyncio.create_task(self._forward_events())
        workers = [asyncio.create_task(self._receive()),
                   asyncio.create_task(self._send_outputs())]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            # both, when the client hung up on the session's end: the session's end it is
            first = workers[1] if workers[1] in done else done.pop()
            exc = first.exception()
            if exc is None:
                reason: str = first.result()
            elif isinstance(exc, ProtocolError):
                await self._close_with_error(str(exc), exc.code)
                reason = f"protocol error: {exc}"
            elif isinstance(exc, WebSocketDisconnect | OSError) or self._client_gone():
                reason = "client disconnected"  # e.g. a send that raced the client's leaving
            else:
                raise exc
        finally:
            for task in (events, *workers):
                task.cancel()
            await asyncio.gather(events, *workers, return_exceptions=True)
        return reason

    def _client_gone(self) -> bool:
        return WebSocketState.DISCONNECTED in (self.ws.client_state, self.ws.application_state)

    async def _close_with_error(self, message: str, code: int) -> None:
        with contextlib.suppress(Exception):
            await self.send_json({"event": proto.ERROR, "error": message, "code": code})
            await self.ws.close(code, message[:120])

    async def _forward_events(self) -> None:
        lease = self.lease
        while True:
            await lease.event_waiter.wait()
            lease.event_waiter.clear()
            while lease.events:
                await self.send_json(lease.events.popleft())
            if lease.dropped:
                dropped, lease.dropped = lease.dropped, 0
                await self.send_json({"event": proto.DROPPED, "count": dropped})

    async def _wait_ready(self) -> bool:
        await self.lease.ready.wait()
        return self.lease.usable

    def _ready_message(self) -> dict[str, Any]:
        pipeline = self.session.pipeline

        def streams(ports: dict[str, Any]) -> dict[str, Any]:
            return {name: p.spec.model_dump(mode="json", exclude_none=True,
                                            exclude={"description", "sample_rate_from_param"})
                    for name, p in ports.items()}

        return {"event": proto.READY, "session": self.session.id, "pipeline": self.session.name,
                "inputs": streams(pipeline.inputs), "outputs": streams(pipeline.outputs),
                "warm": self.lease.warm,
                "connect_to_ready_s": round(time.monotonic() - self.connected_at, 6),
                "session_ready_after_s": self.lease.ready_after_s,
                "max_frame_bytes": self.options.max_frame_bytes}

    async def _receive(self) -> str:
        ready = False
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return "client disconnected"
            if not ready:
                ready = await self._wait_ready()
                if not ready:
                    await asyncio.Event().wait()  # the session ended: _send_outputs reports it
            raw = message.get("bytes")
            if raw is not None:
                await self._on_frame(raw)
            else:
                await self._on_control(message.get("text") or "")

    async def _on_frame(self, raw: bytes) -> None:
        limit = self.options.max_frame_bytes
        if len(raw) > limit:
            raise ProtocolError(f"binary frame of {len(raw)} bytes is over the limit of "
                                f"{limit} bytes", proto.CLOSE_TOO_BIG)
        try:
            name, data = proto.decode(raw)
        except (proto.FrameError, WireFormatError) as exc:
            raise ProtocolError(f"malformed binary frame: {exc}", proto.CLOSE_INVALID_DATA) \
                from exc
        self._check_input(name)
        if data is None:
            await self._close_input(name)
            return
        # The client's clock means nothing here, and readers refuse timestamps that do not
        # increase: the message enters the session stamped by this host.
        data.timestamp_ns = monotonic_stamp()
        data.session_id = self.session.id
        try:
            await self.session.asend(name, data)
        except SessionEnded:
            await asyncio.Event().wait()  # the session is over: _send_outputs reports how
        except NodehostError as exc:
            raise ProtocolError(f"input {name!r}: {exc}", proto.CLOSE_POLICY) from exc

    async def _close_input(self, name: str) -> None:
        try:  # the end of stream waits for room in the channel like data does
            await self.session.aclose_input(name)
        except SessionEnded:
            await asyncio.Event().wait()

    def _check_input(self, name: str) -> None:
        inputs = self.session.pipeline.inputs
        if name not in inputs:
            raise ProtocolError(f"no session input {name!r} (inputs: "
                                f"{', '.join(inputs) or 'none'})", proto.CLOSE_POLICY)

    async def _on_control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("control") != proto.CLOSE:
            raise ProtocolError(f"unknown control message {text[:80]!r}; expected "
                                '{"control": "close", "input": NAME}', proto.CLOSE_UNSUPPORTED)
        names = message.get("input")
        for name in list(self.session.pipeline.inputs) if names is None else [names]:
            self._check_input(str(name))
            await self._close_input(str(name))

    async def _send_outputs(self) -> str:
        if await self._wait_ready():
            # queued behind the status events that made the session Ready, so they come first
            self.lease.events.append(self._ready_message())
            self.lease.event_waiter.set()
            with contextlib.suppress(SessionEnded):  # a failure is told in session_end
                async for name, data in self.session.aoutputs():
                    self._seq += 1
                    frame = proto.encode(name, data, self._seq)
                    data.release()
                    await self.send_bytes(frame)
        await self.lease.ended.wait()  # every event before session_end is queued by now
        result = self.session.result
        assert result is not None  # set before the session_end event
        while self.lease.events:
            await self.send_json(self.lease.events.popleft())
        await self.send_json({"event": proto.SESSION_END, "session": self.session.id,
                              "ok": result.ok, "reason": result.reason,
                              "failed_node": result.failed_node,
                              "failed_node_type": result.failed_node_type,
                              "duration_s": round(result.duration_s, 6)})
        with contextlib.suppress(Exception):
            await self.ws.close(proto.CLOSE_NORMAL, "session ended")
        return "session ended"


# ------------------------------------------------------------------------------ the app

def authorized(token: str | None, headers: Any, query: Any) -> bool:
    if not token:
        return True
    given = query.get("token") or ""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def build_app(pool_factory: Callable[[], SessionPool], options: ServeOptions) -> Starlette:
    """The Starlette app: ``/`` (the page), ``/static/*`` (its files), ``/ws``."""
    state: dict[str, SessionPool] = {}

    async def index(request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        # What runs here is the operator's business: behind a token, like /ws.
        if not authorized(options.token, request.headers, request.query_params):
            return PlainTextResponse("missing or wrong token", status_code=401)
        return JSONResponse(state["pool"].counts(), headers={"Cache-Control": "no-store"})

    async def websocket(ws: WebSocket) -> None:
        if not authorized(options.token, ws.headers, ws.query_params):
            log.warning("refused %s: missing or wrong token", ws.client)
            await ws.send_denial_response(PlainTextResponse(
                "missing or wrong token: pass ?token=T or 'Authorization: Bearer T'",
                status_code=401))
            return
        await ws.accept()
        pool = state["pool"]
        try:
            lease = await pool.acquire()
        except (Refused, NodehostError) as exc:
            reason = str(exc) if isinstance(exc, Refused) else f"session could not start: {exc}"
            log.info("refused %s: %s", ws.client, reason)
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps({"event": proto.REFUSED, "reason": reason}))
                await ws.close(proto.CLOSE_TRY_LATER, reason[:120])
            return
        reason = "client gone"
        try:
            reason = await Connection(ws, lease, options).run()
        except Exception as exc:
            log.exception("connection of session %s failed", lease.session.id)
            reason = f"server error: {exc!r}"
            with contextlib.suppress(Exception):
                await ws.close(proto.CLOSE_INTERNAL, "server error")
        finally:
            log.info("session %s: %s", lease.session.id, reason)
            await asyncio.shield(pool.release(lease, reason))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = state["pool"] = pool_factory()
        pool.start()
        try:
            yield
        finally:
            await pool.close()

    return Starlette(routes=[
        Route("/", index),
        Route("/health", health),
        WebSocketRoute("/ws", websocket),
        Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
    ], lifespan=lifespan)


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the address it bound (``--port 0`` picks a free one)."""

    def __init__(self, config: uvicorn.Config, banner: Callable[[str], str]) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        for server in self.servers:
            for sock in server.sockets:
                address, port = sock.getsockname()[:2]
                shown = f"[{address}]" if ":" in address else address
                print(self.banner(f"http://{shown}:{port}/"), flush=True)


def serve(config: str | Path, options: ServeOptions) -> int:
    """Run the server until SIGINT/SIGTERM. The config is validated before anything binds."""
    options.check()
    # uvicorn's "websockets" protocol is the one that waits for the socket's write buffer to
    # drain on send (the sans-I/O one buffers without limit): it is how a slow reader holds
    # its session back instead of growing this process. It warns that it is deprecated.
    warnings.filterwarnings("ignore", message="The `websockets` implementation is deprecated")
    with Host() as host, contextlib.ExitStack() as stack:
        pipeline = host.validate(config)
        if options.metrics_port is not None:
            exporter = stack.enter_context(contextlib.closing(
                host.start_metrics(options.metrics_port)))
            print(f"metrics: {exporter.url}", file=sys.stderr, flush=True)
        app = build_app(lambda: SessionPool(host, pipeline, options), options)
        server = _Server(uvicorn.Config(
            app, host=options.host, port=options.port, ws="websockets",
            # a little above our own limit: frames up to it get our JSON error, not a bare 1009
            ws_max_size=options.max_frame_bytes + 65536, ws_max_queue=4,
            ws_per_message_deflate=False, log_level="warning", lifespan="on"),
            lambda url: f"nodehost serve: {pipeline.config.name} on {url} (WebSocket /ws; warm "
                        f"{options.warm}, max sessions {options.max_sessions or 'unlimited'})")
        server.run()
        return 0 if server.started else 1


def main_serve(args: Any) -> int:
    """The ``nodehost serve`` subcommand (``cli.cmd_serve``)."""
    options = ServeOptions(host=args.host, port=args.port, warm=args.warm,
                           max_sessions=args.max_sessions,
                           token=args.token or os.environ.get("NODEHOST_SERVE_TOKEN") or None,
                           max_frame_bytes=args.max_frame_bytes,
                           metrics_port=getattr(args, "metrics_port", None))
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    try:
        return serve(args.config, options)
    except ServeUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
