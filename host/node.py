"""The base class plugin authors subclass. It runs only inside a node's own process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from nodehost.data import RuntimeData

EmitFn = Callable[[str, "RuntimeData"], None]
ProgressFn = Callable[[float, str], None]

# The params model of a node type. ``Node`` alone means ``Node[BaseModel]``; a node that
# declares its params as a pydantic model gets ``self.params.gain`` type-checked:
#
#     class GainParams(BaseModel):
#         gain: float = 1.0
#
#     class Gain(nodehost.Node[GainParams]): ...
#
# ``self.params`` is then an instance of that model, validated from the params the host
# checked against the manifest (so the manifest stays what configs are validated against).
ParamsT = TypeVar("ParamsT", bound="BaseModel", default="BaseModel")


class Node(Generic[ParamsT]):
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

    params: ParamsT
    node_id: str
    session_id: str
    logger: logging.Logger

    def __init__(self, params: ParamsT, *, node_id: str = "node", session_id: str = "local",
                 emit: EmitFn | None = None, progress: ProgressFn | None = None) -> None:
        self.params = _as_declared_params(type(self), params)
        self.node_id = node_id
        self.session_id = session_id
        self.logger = logging.getLogger(f"nodehost.node.{node_id}")
        self._emit_fn = emit
        self._progress_fn = progress
        self._loan_fn: Callable[..., Any] | None = None

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

    @property
    def can_loan(self) -> bool:
        """True when outputs are shared-memory channels that can be filled in place."""
        return self._loan_fn is not None

    def loan_tensor(self, port: str | None, shape: tuple[int, ...], dtype: Any) -> Any:
        """``with self.loan_tensor("out", shape, dtype) as array:`` fill ``array`` in place;
        it is sent (zero-copy) when the block ends without an exception."""
        if self._loan_fn is None:
            raise RuntimeError("loan_tensor() is only available while the node runs in a session")
        return self._loan_fn(port, "tensor", shape, dtype)

    def loan_audio(self, port: str | None, frames: int, sample_rate: int, channels: int = 1,
                   dtype: Any = "float32") -> Any:
        """Like ``loan_tensor`` for audio: an array of ``frames`` × ``channels`` samples."""
        if self._loan_fn is None:
            raise RuntimeError("loan_audio() is only available while the node runs in a session")
        return self._loan_fn(port, "audio", frames, sample_rate, channels, dtype)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report initialization (or other long work) progress, 0.0 .. 1.0."""
        if self._progress_fn is not None:
            self._progress_fn(max(0.0, min(1.0, float(fraction))), str(message))


def declared_params_model(cls: type[Node[Any]]) -> type[BaseModel] | None:
    """The model a node class names in ``Node[Model]`` (or in a generic node base class,
    ``Faulty[Model]``), or None for a plain ``Node``."""
    import typing

    from pydantic import BaseModel

    for klass in cls.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            origin = typing.get_origin(base)
            if not (isinstance(origin, type) and issubclass(origin, Node)):
                continue
            for arg in typing.get_args(base):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and \
                        arg is not BaseModel:
                    return arg
    return None


def _as_declared_params(cls: type[Node[Any]], params: ParamsT) -> ParamsT:
    """``params`` (the manifest's model) as the model the class declares, which must have
    the same field names: a node whose code and manifest disagree fails at once."""
    model = declared_params_model(cls)
    if model is None or params is None or isinstance(params, model):
        return params
    values: dict[str, Any] = params.model_dump()
    declared, manifest = set(model.model_fields), set(values)
    if declared != manifest:
        raise TypeError(
            f"{cls.__name__} declares params {sorted(declared)} ({model.__name__}) but its "
            f"manifest has {sorted(manifest)}; make them the same "
            f"(only in the class: {sorted(declared - manifest)}, only in the manifest: "
            f"{sorted(manifest - declared)})")
    return model.model_validate(values)  # type: ignore[return-value]
