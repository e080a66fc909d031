"""Test kit for nodehost and its plugins: run nodes in-process or for real, and fail the
test that leaks.

**In-process** (no processes, no shared memory; no pytest needed, so it also works inside a
node's own built environment)::

    from nodehost.testing import NodeHarness

    gain = NodeHarness("Gain", gain=2.0)       # manifest found among the installed plugins
    out = gain.feed([nodehost.RuntimeData.audio(samples, sample_rate=16000)])

``NodeHarness`` builds the node the way the runner does (params validated against its
manifest, ``emit`` and ``progress`` captured), calls ``initialize()``, and ``feed()`` /
``generate()`` return everything the node produced. ``package=`` reads the manifest from a
package's ``manifests/`` folder instead of the installed plugins.

**Real sessions** need pytest (``pip install nodehost[test]``). In a plugin's
``tests/conftest.py``::

    from nodehost.testing import host, make_node, tmp_out  # noqa: F401  (fixtures)

then in a test::

    from nodehost.testing import chain, run, sink, source

    def test_gain(host, tmp_out):
        done = run(host, chain("gain", source(wav_in), {"id": "g", "type": "Gain"},
                               sink(tmp_out / "out.wav")))
        done.assert_ok()

``host`` is a real ``nodehost.Host`` over the installed plugins; after the test it fails if
node processes are still running or iceoryx2 shared-memory files were left behind.
"""

from __future__ import annotations

import functools
import glob
import importlib
import importlib.util
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import psutil

if TYPE_CHECKING:
    from nodehost.data import RuntimeData
    from nodehost.manifest import NodeManifest

__all__ = ["Emitted", "NodeHarness", "Run", "as_list", "audio_chunks", "chain",
           "child_processes", "host", "is_resource_tracker", "joined", "leaked_shm_files",
           "load_manifest", "make_node", "run", "shm_files", "sine", "sink", "source",
           "tmp_out"]


# --------------------------------------------------------------------------- in-process

@functools.cache
def _installed_manifests() -> dict[str, NodeManifest]:
    from nodehost.discovery import discover

    return {name: t.manifest for name, t in discover().node_types.items()}


def load_manifest(node_type: str, package: str | None = None) -> NodeManifest:
    """``node_type``'s manifest: from ``package``'s ``manifests/`` folder when given (no
    plugin discovery: works where the plugin is not installed, e.g. in a node's own
    environment), else from the installed plugins."""
    from nodehost.discovery import _as_manifest, manifests_in

    if package is None:
        try:
            return _installed_manifests()[node_type]
        except KeyError as exc:
            raise LookupError(f"no installed plugin provides node type {node_type!r}; "
                              "`nodehost nodes` lists them") from exc
    for path in manifests_in(package):
        manifest, _source = _as_manifest(path)
        if manifest.node_type == node_type:
            return manifest
    raise LookupError(f"no manifest of node type {node_type!r} in {package}")


def as_list(result: Any) -> list[Any]:
    """What ``process()``/``end_of_stream()``/``generate()`` returned, as a list (the way the
    runner reads it: None → nothing, one RuntimeData, or an iterable of them)."""
    from nodehost.data import RuntimeData

    if result is None:
        return []
    if isinstance(result, RuntimeData):
        return [result]
    return list(result)


class Emitted(NamedTuple):
    """One ``self.emit(port, data)`` call, with ``time.monotonic()`` when it happened."""

    port: str
    data: RuntimeData
    at: float


class NodeHarness:
    """One node in this process, built as the runner builds it: params validated against the
    manifest, ``emit`` and ``progress`` captured. ``initialize()`` runs at once unless
    ``initialize=False``. Async node methods are not awaited here: test those in a session."""

    def __init__(self, node_type: str, /, *, package: str | None = None,
                 node_id: str | None = None, initialize: bool = True,
                 **params: Any) -> None:
        self.manifest = load_manifest(node_type, package)
        module_name, _, class_name = self.manifest.entrypoint.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        self.emitted: list[Emitted] = []
        self.progress: list[tuple[float, str]] = []
        self.node = cls(self.manifest.params_model(**params),
                        node_id=node_id or node_type.lower(),
                        emit=lambda port, data: self.emitted.append(
                            Emitted(port, data, time.monotonic())),
                        progress=lambda f, m: self.progress.append((f, m)))
        if initialize:
            self.node.initialize()

    def process(self, data: RuntimeData, port: str = "in") -> list[Any]:
        """One ``process()`` call: what it returned, then what it emitted meanwhile."""
        before = len(self.emitted)
        out = as_list(self.node.process(data, port))
        return out + [e.data for e in self.emitted[before:]]

    def feed(self, items: Iterable[RuntimeData], port: str = "in") -> list[Any]:
        """``process()`` each item, then ``end_of_stream(port)`` and ``cleanup()``: every
        message the node produced (returned ones first, then the ones it emitted)."""
        before = len(self.emitted)
        out: list[Any] = []
        for item in items:
            out += as_list(self.node.process(item, port))
        out += as_list(self.node.end_of_stream(port))
        self.node.cleanup()
        return out + [e.data for e in self.emitted[before:]]

    def generate(self) -> list[Any]:
        """A source node's whole stream, then ``cleanup()``."""
        out = list(self.node.generate())
        self.node.cleanup()
        return out


# Audio test signals, for audio nodes' tests.

def sine(freq: float, seconds: float, rate: int, channels: int = 1,
         amp: float = 0.5) -> np.ndarray:
    """A float32 sine wave, ``(frames,)`` for mono or ``(frames, channels)``."""
    t = np.arange(int(seconds * rate)) / rate
    mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def audio_chunks(samples: np.ndarray, size: int, rate: int) -> list[RuntimeData]:
    """``samples`` as audio messages of ``size`` frames each (the last may be shorter)."""
    from nodehost.data import RuntimeData

    channels = 1 if samples.ndim == 1 else samples.shape[1]
    return [RuntimeData.audio(samples[i:i + size], sample_rate=rate, channels=channels)
            for i in range(0, len(samples), size)]


def joined(items: list[Any]) -> np.ndarray:
    """All samples of audio messages as one ``(frames, channels)`` array."""
    if not items:
        return np.zeros((0, 1), np.float32)
    return np.concatenate([np.asarray(d.as_array()).reshape(-1, d.metadata.channels or 1)
                           for d in items])


# --------------------------------------------------------------------------- leak checks

def shm_files() -> set[str]:
    """The iceoryx2 shared-memory files on this machine now."""
    return set(glob.glob("/dev/shm/iox2_*"))


def _mapped_shm_files() -> set[str]:
    """iceoryx2 files some live process still maps (another test run's, on a shared
    machine): those are not leaks of ours."""
    mapped: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, encoding="utf-8", errors="replace") as fh:
                mapped.update(line.split()[-1] for line in fh if "/dev/shm/iox2_" in line)
        except OSError:
            continue
    return mapped


def leaked_shm_files(before: set[str]) -> set[str]:
    """Files that appeared since ``before`` and that no live process maps."""
    new_files = shm_files() - before
    return new_files - _mapped_shm_files() if new_files else new_files


def _foreign_nodes() -> bool:
    """Node processes that are not this test's (another test run or a benchmark on the
    same machine): files they create are not this test's leak."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        # exec'd runners, and zygotes (whose forked runners carry the zygote's cmdline)
        if ("nodehost.runner" in cmdline or "nodehost.zygote" in cmdline) and \
                proc.info["pid"] not in mine:
            return True
    return False


def is_resource_tracker(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker: started by a test's first "spawn" child and kept,
    by design, for the life of the test process."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def child_processes() -> list[psutil.Process]:
    """This process's live descendants (the resource tracker excepted)."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and \
                    not is_resource_tracker(proc):
                out.append(proc)
        except psutil.Error:
            continue
    return out


# --------------------------------------------------------------------------- fixtures

# Without pytest (a node's own environment) the in-process harness above still works.
if importlib.util.find_spec("pytest") is not None:
    import pytest

    @pytest.fixture
    def make_node() -> Callable[..., NodeHarness]:
        """``make_node("Gain", gain=2.0)``: an initialized node of an installed plugin."""
        return NodeHarness

    @pytest.fixture
    def host() -> Iterator[Any]:
        """A real Host over the installed plugins; fails the test that leaves node processes or
        shared-memory files behind."""
        yield from host_fixture()

    @pytest.fixture
    def tmp_out(tmp_path: Path) -> Path:
        """A temp folder node processes can reach (pytest makes it 0700)."""
        os.chmod(tmp_path, 0o755)
        return tmp_path


def host_fixture(**host_args: Any) -> Iterator[Any]:
    """The ``host`` fixture's body, for a fixture of one's own (``Host(**host_args)``)."""
    import nodehost

    before = shm_files()
    with nodehost.Host(**host_args) as h:
        yield h
    leftover = [p.pid for p in child_processes()]
    assert not leftover, f"node processes left running: {leftover}"
    new_files = leaked_shm_files(before)
    assert not new_files or _foreign_nodes(), \
        f"shared-memory files left behind: {sorted(new_files)}"


# --------------------------------------------------------------------------- sessions

@dataclass
class Run:
    """What a finished session left: its result and every event."""

    result: Any
    events: list[dict[str, Any]] = field(default_factory=list)

    def logs(self, node: str) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == "log" and e["node"] == node]

    def pids(self) -> dict[str, set[int]]:
        pids: dict[str, set[int]] = {}
        for e in self.events:
            if e["event"] == "status":
                pids.setdefault(e["node"], set()).add(e["pid"])
        return pids

    def stats(self, node: str) -> dict[str, Any]:
        """The node's figures in the session's last ``stats`` event (received, sent, ...)."""
        last: dict[str, Any] = {}
        for e in self.events:
            if e["event"] == "stats" and node in e["nodes"]:
                last = e["nodes"][node]
        return last

    def assert_ok(self) -> None:
        assert self.result.ok, self.result.reason
        pids = self.pids()
        # Every node ran in its own process: one pid each, none shared.
        assert all(len(p) == 1 for p in pids.values()), pids
        assert len({next(iter(p)) for p in pids.values()}) == len(pids), pids
        assert os.getpid() not in {next(iter(p)) for p in pids.values()}


def source(path: Path, node_id: str = "src", **params: Any) -> dict[str, Any]:
    """A ``WavSource`` node (nodehost-audio) reading ``path``, granted read access to it."""
    return {"id": node_id, "type": "WavSource", "params": {"path": str(path), **params},
            "sandbox": {"fs_read": [str(path)]}}


def sink(path: Path, node_id: str = "sink", **params: Any) -> dict[str, Any]:
    """A ``WavSink`` node (nodehost-audio) writing ``path``, granted write access to it."""
    return {"id": node_id, "type": "WavSink", "params": {"path": str(path), **params},
            "sandbox": {"fs_write": [str(path)]}}


def chain(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    """A pipeline config connecting ``nodes`` one after the other."""
    ids = [n["id"] for n in nodes]
    return {"name": name, "init_timeout_s": 120, "nodes": list(nodes),
            "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]}


def run(host: Any, config: Any, timeout: float = 300) -> Run:
    """Run ``config`` to its end. ``timeout`` only guards against a hang (a quiet gap that
    long ends the wait, and the host fixture then stops the session); it times nothing."""
    session = host.start_session(config)
    events = list(session.events(timeout=timeout))
    return Run(session.wait(timeout=1 if events[-1]["event"] != "session_end" else None),
               events)
