"""Node manifests: what a node type is, what it accepts and emits, what it may do.

A manifest's ``params`` map is a small JSON-Schema-like spec; ``params_model()`` turns it into
a pydantic model, which validates pipeline configs in the host and builds ``self.params`` in
the node's process.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENTRYPOINT = r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$"
PYTHON_VERSION = r"^3\.\d+$"


def check_pattern(value: str, pattern: str, what: str) -> str:
    """``value`` if it matches ``pattern`` as a whole, else an error saying what was expected.

    Used instead of ``Field(pattern=...)``, whose message shows the raw regex; the pattern
    still goes into the JSON Schema through ``json_schema_extra``.
    """
    if not re.fullmatch(pattern, value):
        raise PydanticCustomError(
            "pattern", "{value} is not {what}", {"value": repr(value), "what": what}
        )
    return value


class DataType(StrEnum):
    AUDIO = "audio"
    VIDEO = "video"
    TEXT = "text"
    TENSOR = "tensor"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    """Let a constraint be written as one value or a list of accepted values."""
    if value is None or isinstance(value, list):
        return value
    return [value]


class PortSpec(_Strict):
    """One input or output port. Constraints left out accept anything."""

    data_type: DataType
    description: str = ""
    sample_rate: list[int] | None = Field(default=None, description="accepted audio rates (Hz)")
    channels: list[int] | None = Field(default=None, description="accepted channel counts")
    sample_format: list[Literal["f32", "s16"]] | None = None
    format: list[str] | None = Field(default=None, description="video pixel formats")
    dtype: list[str] | None = Field(default=None, description="tensor dtypes")
    language: list[str] | None = Field(default=None, description="text languages")
    sample_rate_from_param: str | None = Field(
        default=None, description="output ports: the rate is the value of this param"
    )
    channels_from_param: str | None = Field(
        default=None, description="output ports: the channel count is the value of this param "
                                  "(when it is set; unset: any)"
    )

    _normalize = field_validator(
        "sample_rate", "channels", "sample_format", "format", "dtype", "language", mode="before"
    )(_as_list)

    @field_validator("sample_rate", "channels")
    @classmethod
    def _positive(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and any(v <= 0 for v in values):
            raise PydanticCustomError("positive", "every value must be greater than 0")
        return values


ParamType = Literal["number", "integer", "string", "boolean", "array", "object"]
_PY_TYPES: dict[str, Any] = {
    "number": float,
    "integer": int,
    "string": str,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "number": (int, float),
    "integer": (int,),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class ParamSpec(_Strict):
    """One parameter of a node type.

    Unless ``required``, a param may be left out of a pipeline config; it then takes its
    ``default``, or None.
    """

    type: ParamType
    description: str = ""
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: list[Any] | None = None
    format: Literal["path"] | None = Field(
        default=None, description='"path": a relative value in a config file is resolved '
                                  "against the config file's folder")
    access: Literal["read", "write", "lookup"] | None = Field(
        default=None, description='for format "path": what the node does with it, checked '
                                  "before anything starts. read (the default): it must exist "
                                  "and be readable under the node's sandbox; write: its folder "
                                  "must exist and the path be writable; lookup: a path when it "
                                  "exists (then readable), else a name the node looks up (a "
                                  "model id)")

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.format == "path" and self.type != "string":
            raise PydanticCustomError("format", 'format "path" applies to string params')
        if self.access is not None and self.format != "path":
            raise PydanticCustomError("access", 'access applies to params of format "path"')
        bounded = self.minimum is not None or self.maximum is not None
        if bounded and self.type not in ("number", "integer"):
            raise PydanticCustomError(
                "bounds", "minimum/maximum apply to number and integer params, not {type}",
                {"type": self.type},
            )
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise PydanticCustomError("range", "minimum is greater than maximum")
        if self.required and self.default is not None:  # ``default: null`` means no default
            raise PydanticCustomError("required", "a required param cannot have a default")
        if self.enum is not None:
            if not self.enum:
                raise PydanticCustomError("enum", "enum must list at least one value")
            if self.type in ("array", "object"):
                raise PydanticCustomError(
                    "enum", "enum applies to scalar params, not {type}", {"type": self.type}
                )
            for value in self.enum:
                problem = self._type_problem(value)
                if problem:
                    raise PydanticCustomError(
                        "enum", "enum value {value} {problem}",
                        {"value": repr(value), "problem": problem},
                    )
        if self.has_default and self.default is not None:
            problem = self.value_problem(self.default)
            if problem:
                raise PydanticCustomError(
                    "default", "default {value} {problem}",
                    {"value": repr(self.default), "problem": problem},
                )
        return self

    def _type_problem(self, value: Any) -> str | None:
        # bool is an int in Python, but not a number in a manifest.
        if isinstance(value, bool) and self.type != "boolean":
            return f"is not of type {self.type}"
        if not isinstance(value, _JSON_TYPES[self.type]):
            return f"is not of type {self.type}"
        return None

    def value_problem(self, value: Any) -> str | None:
        """Why ``value`` does not satisfy this spec, or None when it does."""
        problem = self._type_problem(value)
        if problem:
            return problem
        if self.minimum is not None and value < self.minimum:
            return f"is less than the minimum {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"is greater than the maximum {self.maximum:g}"
        if self.enum is not None and value not in self.enum:
            return f"is not one of {self.enum!r}"
        return None

    @property
    def path_access(self) -> str | None:
        """How a ``format: path`` param's file is used (None for other params)."""
        if self.format != "path":
            return None
        return self.access or "read"

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


class Resources(_Strict):
    memory_mb: int | None = Field(default=None, gt=0, description="hard memory limit (MiB)")


class SandboxPolicy(_Strict):
    """What a node may do; everything else is denied."""

    network: bool = False
    fs_read: list[str] = Field(default_factory=list)
    fs_write: list[str] = Field(default_factory=list)

    @field_validator("fs_read", "fs_write")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise PydanticCustomError(
                    "absolute_path", "sandbox paths must be absolute: {path}", {"path": repr(path)}
                )
        return paths

    def merged(self, grant: SandboxPolicy | None) -> SandboxPolicy:
        """The policy plus what the operator granted in the pipeline config."""
        if grant is None:
            return self
        return SandboxPolicy(
            network=self.network or grant.network,
            fs_read=sorted({*self.fs_read, *grant.fs_read}),
            fs_write=sorted({*self.fs_write, *grant.fs_write}),
        )


class RuntimeSpec(_Strict):
    """A node's own Python environment, built and cached by the host."""

    python: str = Field(json_schema_extra={"pattern": PYTHON_VERSION})
    requirements: list[str] = Field(default_factory=list)

    @field_validator("python")
    @classmethod
    def _python(cls, python: str) -> str:
        return check_pattern(python, PYTHON_VERSION, 'a Python version like "3.12"')


_RESERVED_PARAM_NAMES = frozenset(n for n in dir(BaseModel) if n.startswith("model_"))


class NodeManifest(_Strict):
    node_type: str = Field(json_schema_extra={"pattern": IDENTIFIER})
    version: str
    description: str = ""
    entrypoint: str = Field(json_schema_extra={"pattern": ENTRYPOINT},
                            description='"package.module:Class"')
    inputs: dict[str, PortSpec] = Field(default_factory=dict)
    outputs: dict[str, PortSpec] = Field(default_factory=dict)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)
    runtime: RuntimeSpec | None = None

    @field_validator("node_type")
    @classmethod
    def _node_type(cls, node_type: str) -> str:
        return check_pattern(node_type, IDENTIFIER,
                             "a valid node type (letters, digits and _, not starting with a digit)")

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, entrypoint: str) -> str:
        return check_pattern(entrypoint, ENTRYPOINT, 'of the form "package.module:Class"')

    @field_validator("version")
    @classmethod
    def _semver(cls, version: str) -> str:
        if not SEMVER.fullmatch(version):
            raise PydanticCustomError(
                "semver", "{version} is not a semantic version (e.g. 1.0.0)",
                {"version": repr(version)},
            )
        return version

    @field_validator("inputs", "outputs", "params")
    @classmethod
    def _port_names(cls, ports: dict[str, Any]) -> dict[str, Any]:
        for name in ports:
            if not re.fullmatch(IDENTIFIER, name):
                raise PydanticCustomError(
                    "name", "{name} is not a valid name (letters, digits, _)", {"name": repr(name)}
                )
        return ports

    @field_validator("params")
    @classmethod
    def _param_names(cls, params: dict[str, Any]) -> dict[str, Any]:
        # The params model is a pydantic model: these names would fail to build it
        # (NameError), be taken as its config, or break validation (model_post_init).
        for name in params:
            if name.startswith("_") or name in _RESERVED_PARAM_NAMES:
                raise PydanticCustomError(
                    "param_name", "{name} cannot be a param name (reserved by the params "
                    "model: names starting with _ and pydantic's model_* attributes)",
                    {"name": repr(name)},
                )
        return params

    @model_validator(mode="after")
    def _derived_rates(self) -> NodeManifest:
        for field in ("sample_rate_from_param", "channels_from_param"):
            for port_name, port in self.outputs.items():
                ref = getattr(port, field)
                if ref is not None and ref not in self.params:
                    raise PydanticCustomError(
                        "unknown_param", "outputs.{port}.{field} names unknown param {ref}",
                        {"port": port_name, "field": field, "ref": repr(ref)},
                    )
            for port_name, port in self.inputs.items():
                if getattr(port, field) is not None:
                    raise PydanticCustomError(
                        "input_derived", "inputs.{port}: {field} is only meaningful on outputs",
                        {"port": port_name, "field": field},
                    )
        return self

    @property
    def is_source(self) -> bool:
        return not self.inputs

    @property
    def is_sink(self) -> bool:
        return not self.outputs

    @cached_property
    def params_model(self) -> type[BaseModel]:
        """A pydantic model of this node type's params; unknown params are errors."""
        fields: dict[str, Any] = {}
        for name, spec in self.params.items():
            annotation: Any = _PY_TYPES[spec.type]
            if spec.enum is not None:
                annotation = Literal[tuple(spec.enum)]
            constraints: dict[str, Any] = {"description": spec.description or None}
            if spec.minimum is not None:
                constraints["ge"] = spec.minimum
            if spec.maximum is not None:
                constraints["le"] = spec.maximum
            default: Any = ... if spec.required else spec.default
            # Optional without a default, or with ``default: null``: None stands for unset.
            if not spec.required and spec.default is None:
                annotation = annotation | None
            fields[name] = (annotation, Field(default, **constraints))
        model: type[BaseModel] = create_model(
            f"{self.node_type}Params",
            __config__=ConfigDict(extra="forbid", strict=False, frozen=True),
            **fields,
        )
        return model
