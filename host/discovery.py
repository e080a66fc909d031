"""Plugin discovery: entry points → pluggy plugins → node types.

Each entry point of group ``nodehost`` is loaded, registered and asked for its manifests on
its own, so that one broken plugin is recorded with its distribution and reason while every
other plugin still loads. The host only reads manifests: a node's ``entrypoint`` is imported
in the node's own process, never here.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import pluggy
import yaml
from pydantic import ValidationError

from nodehost import hookspecs
from nodehost.errors import DiscoveryError, pydantic_issues
from nodehost.errors import HookTimeout as HookTimeout
from nodehost.manifest import NodeManifest

ENTRY_POINT_GROUP = "nodehost"
DISABLE_ENV = "NODEHOST_DISABLE_PLUGINS"  # comma-separated distribution or entry-point names
NO_AUTOLOAD_ENV = "NODEHOST_DISABLE_PLUGIN_AUTOLOAD"  # any non-empty value: skip entry points
TIMEOUT_ENV = "NODEHOST_HOOK_TIMEOUT_S"  # seconds a plugin's import or hook may take
HOOK_TIMEOUT_S = 10.0
# A session-event hook runs on the session's supervisor thread: one that does not return in
# this time is left running on its own thread and gets no further events until it returns.
EVENT_HOOK_TIMEOUT_S = 1.0

log = logging.getLogger("nodehost.discovery")

# The node types of the plugins in nodehost's own plugins/ folder: a config that names one
# which is not installed is told what to install (tests/test_discovery.py checks this table
# against those manifests).
BUNDLED_NODE_TYPES: dict[str, str] = {
    **dict.fromkeys(("AudioBuffer", "AudioChunker", "Gain", "Resample", "WavSink", "WavSource"),
                    "nodehost-audio"),
    "LFM2Audio": "nodehost-lfm2audio",
    **dict.fromkeys(("PiperTTS", "ReplyText", "SileroVAD", "WhisperASR"), "nodehost-speech"),
    "VibeVoiceTTS": "nodehost-vibevoice",
}
T = TypeVar("T")


@dataclass(frozen=True)
class NodeType:
    """A node type as discovered: its manifest and where it came from."""

    manifest: NodeManifest
    plugin: str  # distribution name, or the name an in-process plugin was registered under
    plugin_version: str
    source: str  # manifest file, or "<dict>" / "<object>"

    @property
    def name(self) -> str:
        return self.manifest.node_type


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    reason: str
    entry_point: str = ""

    def __str__(self) -> str:
        return f"{self.plugin}: {self.reason}"


@dataclass
class PluginInfo:
    name: str
    version: str
    entry_point: str
    hooks: list[str] = field(default_factory=list)
    node_types: list[str] = field(default_factory=list)


def _call_with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Run plugin code in a daemon thread so that a hanging plugin cannot hang the host."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="nodehost-plugin-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise HookTimeout(f"no answer within {timeout:g} s (set {TIMEOUT_ENV} to wait longer)")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def hook_timeout() -> float:
    """The time a plugin gets to import and to answer a hook (``NODEHOST_HOOK_TIMEOUT_S``)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return HOOK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %g s", TIMEOUT_ENV, raw, HOOK_TIMEOUT_S)
        return HOOK_TIMEOUT_S
    return value if value > 0 else HOOK_TIMEOUT_S


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifests_in(package: str | None, folder: str = "manifests") -> list[Traversable]:
    """The manifest files (``*.yaml``, ``*.yml``, ``*.json``) in ``package``'s ``folder``,
    sorted by name: all a plugin module's hook has to return::

        @nodehost.hookimpl
        def nodehost_node_manifests():
            return nodehost.manifests_in(__package__)

    Works from a wheel, an editable install or a zip (``importlib.resources``), and imports
    only the package itself (keep its ``__init__.py`` free of node code)."""
    from importlib.resources import files

    if not package:
        raise ValueError("manifests_in() needs the plugin's package name: pass __package__ "
                         "from a module inside the package")
    base = files(package) / folder
    if not base.is_dir():
        raise FileNotFoundError(f"{package} has no {folder}/ folder (is it package data? "
                                f"[tool.setuptools.package-data] {package} = "
                                f"[\"{folder}/*.yaml\"])")
    return sorted((p for p in base.iterdir() if p.name.endswith(MANIFEST_SUFFIXES)),
                  key=lambda p: p.name)


def _read_manifest_file(item: str | Path | Traversable) -> Any:
    if isinstance(item, str):
        item = Path(item)
    text = item.read_text(encoding="utf-8")
    if item.name.endswith(".json"):
        return json.loads(text)
    # libyaml when available: a dozen plugins' manifests would otherwise cost ~70 ms
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _as_manifest(item: Any) -> tuple[NodeManifest, str]:
    if isinstance(item, NodeManifest):
        return item, "<object>"
    if isinstance(item, Mapping):
        return NodeManifest.model_validate(dict(item)), "<dict>"
    if isinstance(item, str | Path | Traversable):
        source = str(item)
        data = _read_manifest_file(item)
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} does not hold a mapping")
        return NodeManifest.model_validate(dict(data)), source
    raise TypeError(f"expected a NodeManifest, a dict or a manifest path, got "
                    f"{type(item).__name__}")


def _label(item: Any, position: int) -> str:
    """How a failure names one item of a plugin's manifest list."""
    if isinstance(item, str | Path | Traversable):
        return str(item)
    if isinstance(item, Mapping) and isinstance(item.get("node_type"), str):
        return f"#{position} ({item['node_type']})"
    return f"#{position}"


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {_norm(name) for name in raw.split(",") if name.strip()}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry:
    """The installed node types and plugins, and the failures met while discovering them."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.node_types: dict[str, NodeType] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self.timeout = hook_timeout()
        self._busy: dict[str, threading.Thread] = {}  # plugins stuck in an event hook

    # -- loading -------------------------------------------------------------------------
    def load_entry_points(self, disabled: Iterable[str] = ()) -> None:
        skip = _disabled_names() | {_norm(n) for n in disabled}
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: ((e.dist.name if e.dist else ""), e.name)):
            dist_name = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else "?"
            if _norm(dist_name) in skip or _norm(ep.name) in skip:
                log.debug("plugin %s disabled by %s", dist_name, DISABLE_ENV)
                continue
            try:
                plugin = _call_with_timeout(ep.load, self.timeout)
            except KeyboardInterrupt:
                raise  # Ctrl-C while waiting for a plugin: the user's, not the plugin's
            except BaseException as exc:
                self._fail(dist_name, f"import of {ep.value!r} failed: {_describe(exc)}", ep.name)
                continue
            self.add_plugin(plugin, dist_name, version, ep.name)

    def add_plugin(self, plugin: object, name: str, version: str = "?",
                   entry_point: str = "") -> None:
        """Register one plugin object and take its node types. Failures are recorded."""
        pm = self.plugin_manager
        # A distribution may declare several entry points; each registers under its own name.
        key = f"{name}:{entry_point}" if entry_point else name
        try:
            pm.register(plugin, name=key)
        except ValueError as exc:  # already registered: the first line says so, then a dump
            self._fail(name, f"invalid plugin: {str(exc).splitlines()[0]}", entry_point)
            return
        except Exception as exc:  # pluggy's validation: its last line names the problem
            self._fail(name, f"invalid plugin: {_describe(exc)}", entry_point)
            return
        callers = pm.get_hookcallers(plugin) or []
        unknown = [hc.name for hc in callers if not hc.has_spec()]
        if unknown:
            pm.unregister(plugin)
            self._fail(name, f"implements unknown hook(s) {', '.join(unknown)}; known hooks: "
                             "nodehost_node_manifests, nodehost_session_event, "
                             "nodehost_metrics_exporter", entry_point)
            return
        info = PluginInfo(name, version, entry_point, sorted(hc.name for hc in callers))
        self.plugins[key] = info
        for impl in pm.hook.nodehost_node_manifests.get_hookimpls():
            if impl.plugin is plugin:
                self._take_manifests(info, impl.function)

    def _take_manifests(self, info: PluginInfo, hook: Callable[[], Any]) -> None:
        try:
            items = _call_with_timeout(hook, self.timeout)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self._fail(info.name, f"nodehost_node_manifests() failed: {_describe(exc)}",
                       info.entry_point)
            return
        if items is None:
            items = []
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
            self._fail(info.name, "nodehost_node_manifests() must return a list, got "
                                  f"{type(items).__name__}", info.entry_point)
            return
        for position, item in enumerate(items):
            where = _label(item, position)
            try:
                manifest, source = _as_manifest(item)
            except ValidationError as exc:
                problems = "; ".join(str(i) for i in pydantic_issues(exc))
                self._fail(info.name, f"invalid manifest {where}: {problems}", info.entry_point)
                continue
            except Exception as exc:
                self._fail(info.name, f"invalid manifest {where}: {_describe(exc)}",
                           info.entry_point)
                continue
            existing = self.node_types.get(manifest.node_type)
            if existing is not None:
                self._fail(info.name, f"node type {manifest.node_type!r} is already provided "
                                      f"by {existing.plugin}; ignored", info.entry_point)
                continue
            self.node_types[manifest.node_type] = NodeType(
                manifest, info.name, info.version, source
            )
            info.node_types.append(manifest.node_type)

    def _fail(self, plugin: str, reason: str, entry_point: str = "") -> None:
        log.warning("plugin %s: %s", plugin, reason)
        self.failures.append(PluginFailure(plugin, reason, entry_point))

    # -- use -----------------------------------------------------------------------------
    def get(self, node_type: str) -> NodeType:
        try:
            return self.node_types[node_type]
        except KeyError as exc:
            raise DiscoveryError(f"unknown node type {node_type!r}"
                                 f"{unknown_type_hint(node_type, self.node_types)}") from exc

    def notify(self, event: Mapping[str, Any]) -> None:
        """Deliver a session event to every plugin; a failing plugin is logged and skipped.

        The caller is a session's supervisor thread, so a plugin must not be able to stall
        it: each call runs on a thread of its own, and a plugin that has not returned within
        ``EVENT_HOOK_TIMEOUT_S`` is skipped for later events until that call returns."""
        for impl in self.plugin_manager.hook.nodehost_session_event.get_hookimpls():
            name = impl.plugin_name
            stuck = self._busy.get(name)
            if stuck is not None:
                if stuck.is_alive():
                    continue
                del self._busy[name]
            box: dict[str, BaseException] = {}

            def call(fn: Callable[..., Any] = impl.function,
                     box: dict[str, BaseException] = box) -> None:
                try:
                    fn(event=dict(event))
                except Exception as exc:
                    box["error"] = exc

            thread = threading.Thread(target=call, name=f"nodehost-event-{name}", daemon=True)
            thread.start()
            thread.join(EVENT_HOOK_TIMEOUT_S)
            if thread.is_alive():
                self._busy[name] = thread
                log.warning("plugin %s: nodehost_session_event did not return within %g s; "
                            "no events for it until it does", name, EVENT_HOOK_TIMEOUT_S)
            elif "error" in box:
                log.warning("plugin %s: nodehost_session_event failed: %s", name,
                            _describe(box["error"]))


def unknown_type_hint(node_type: str, known: Iterable[str]) -> str:
    """What to say after "unknown node type 'X'": the distribution that provides a bundled
    type, else the closest installed names."""
    dist = BUNDLED_NODE_TYPES.get(node_type)
    if dist is not None:
        return (f"; it is provided by {dist}, which is not installed: "
                f"pip install -e plugins/{dist} (in a nodehost checkout)")
    close = difflib.get_close_matches(node_type, list(known), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"{hint}; `nodehost nodes` lists the installed ones"


def discover(*, plugins: Iterable[object] = (), disabled: Iterable[str] = (),
             entry_points: bool | None = None) -> Registry:
    """Find every installed node type.

    ``plugins`` are extra in-process plugin objects (embedding, tests); ``entry_points``
    defaults to True unless ``NODEHOST_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """
    registry = Registry()
    if entry_points is None:
        entry_points = not os.environ.get(NO_AUTOLOAD_ENV)
    if entry_points:
        registry.load_entry_points(disabled)
    for index, plugin in enumerate(plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
        registry.add_plugin(plugin, str(name))
    return registry
