"""The base class plugin authors subclass. It runs only inside a node's own process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from nodehost.data import RuntimeData

EmitFn = Callable[[str, "RuntimeData"], None]
ProgressFn = Callable[[float, str], None]


class Node:
    """One node of a pipeline. Override what your node needs; every method is optional.

    - ``initialize()`` loads models; call ``self.progress(fraction, message)`` while it works.
    - ``process(data, port)`` handles one input; return a RuntimeData, an iterable of them,
      or None. Returned data goes to the node's only output port; ``self.emit(port, data)``
      targets a named one. ``async def`` forms are accepted.
    - ``generate()`` (source nodes only) yields RuntimeData until done; returning ends the stream.
    - ``end_of_stream(port)`` is called when an input port's upstream has finished; it may
      return data like ``process`` (e.g. a buffer flushing what it holds).
    - ``cleanup()`` releases resources at the end.
    """

    params: BaseModel
    node_id: str
    session_id: str
    logger: logging.Logger

    def __init__(self, params: BaseModel, *, node_id: str = "node", session_id: str = "local",
                 emit: EmitFn | None = None, progress: ProgressFn | None = None) -> None:
        self.params = params
        self.node_id = node_id
        self.session_id = session_id
        self.logger = logging.getLogger(f"nodehost.node.{node_id}")
        self._emit_fn = emit
        self._progress_fn = progress

    def initialize(self) -> Any:
        return None

    def process(self, data: RuntimeData, port: str) -> Any:
        return None

    def generate(self) -> Any:
        return iter(())

    def end_of_stream(self, port: str) -> Any:
        return None

    def cleanup(self) -> Any:
        return None

    def emit(self, port: str, data: RuntimeData) -> None:
        """Send ``data`` on the named output port now (blocks while the channel is full)."""
        if self._emit_fn is None:
            raise RuntimeError("emit() is only available while the node runs in a session")
        self._emit_fn(port, data)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report initialization (or other long work) progress, 0.0 .. 1.0."""
        if self._progress_fn is not None:
            self._progress_fn(max(0.0, min(1.0, float(fraction))), str(message))
