"""``nodehost inspect TYPE``: one node type as a readable table, or its manifest as YAML/JSON.

The table is for people (like ``gst-inspect``): ports with their constraints, params with
type, default, range or choices, resources, sandbox and runtime. ``--yaml`` prints the manifest
the way an author writes it (nothing left at its default, integers as integers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nodehost.discovery import NodeType
    from nodehost.manifest import NodeManifest, ParamSpec, PortSpec

CONSTRAINTS = ("sample_rate", "channels", "sample_format", "format", "dtype", "language")


def _number(value: float | None, integer: bool) -> Any:
    if value is None:
        return None
    return int(value) if integer and float(value).is_integer() else value


def manifest_doc(manifest: NodeManifest) -> dict[str, Any]:
    """The manifest as an author writes it: fields at their default left out."""
    doc: dict[str, Any] = manifest.model_dump(mode="json", exclude_defaults=True)
    for name, spec in doc.get("params", {}).items():
        integer = manifest.params[name].type == "integer"
        for key in ("minimum", "maximum"):
            if key in spec:
                spec[key] = _number(spec[key], integer)
    return doc


def _port_line(name: str, port: PortSpec) -> str:
    parts = []
    for key in CONSTRAINTS:
        values = getattr(port, key)
        if values:
            parts.append(f"{key} {'|'.join(str(v) for v in values)}")
    if port.sample_rate_from_param:
        parts.append(f"sample_rate from params.{port.sample_rate_from_param}")
    text = f"  {name:<10} {port.data_type.value:<7} {', '.join(parts) or 'any'}"
    return text + (f"  — {port.description}" if port.description else "")


def _range(spec: ParamSpec) -> str:
    integer = spec.type == "integer"
    if spec.enum:
        return " | ".join(str(v) for v in spec.enum)
    low, high = _number(spec.minimum, integer), _number(spec.maximum, integer)
    if low is not None and high is not None:
        return f"{low} … {high}"
    if low is not None:
        return f"≥ {low}"
    if high is not None:
        return f"≤ {high}"
    return ""


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [(indent + "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)),
                                 r[-1]])).rstrip() for r in rows]


def render(node_type: NodeType) -> str:
    m = node_type.manifest
    lines = [f"{m.node_type} {m.version}" + (f" — {m.description}" if m.description else ""),
             f"  plugin      {node_type.plugin} {node_type.plugin_version}",
             f"  manifest    {node_type.source}",
             f"  entrypoint  {m.entrypoint}", ""]
    lines.append("INPUTS" if m.inputs else "INPUTS      none (a source: generate() sends)")
    lines += [_port_line(n, p) for n, p in m.inputs.items()]
    lines.append("OUTPUTS" if m.outputs else "OUTPUTS     none (a sink)")
    lines += [_port_line(n, p) for n, p in m.outputs.items()]
    lines.append("")
    if m.params:
        lines.append("PARAMS")
        rows: list[tuple[str, ...]] = [("NAME", "TYPE", "DEFAULT", "RANGE", "DESCRIPTION")]
        for name, spec in m.params.items():
            kind = spec.type + (f" ({spec.format})" if spec.format else "")
            default = "required" if spec.required else "-" if spec.default is None \
                else repr(spec.default) if isinstance(spec.default, str) else str(spec.default)
            rows.append((name, kind, default, _range(spec), spec.description))
        lines += _table(rows)
    else:
        lines.append("PARAMS      none")
    lines.append("")
    memory = m.resources.memory_mb
    limit = f"{memory} MiB (private memory, RLIMIT_DATA)" if memory else "not limited"
    lines.append(f"RESOURCES   memory {limit}")
    sandbox = m.sandbox
    grants = [f"network {'allowed' if sandbox.network else 'denied'}"]
    grants.append(f"reads {', '.join(sandbox.fs_read)}" if sandbox.fs_read else
                  "reads only Python, its own package and its temp dir")
    grants.append(f"writes {', '.join(sandbox.fs_write)}" if sandbox.fs_write else
                  "writes only its temp dir")
    lines.append(f"SANDBOX     {'; '.join(grants)} (a pipeline config may grant more)")
    runtime = m.runtime
    lines.append("RUNTIME     the host's Python environment" if runtime is None else
                 f"RUNTIME     its own Python {runtime.python} environment: "
                 f"{', '.join(runtime.requirements) or 'no extra requirements'} "
                 "(`nodehost env build " + m.node_type + "`)")
    return "\n".join(lines)
