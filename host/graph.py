"""A picture of a pipeline: nodes with their types and ports, connections with what flows
through them — as Mermaid or Graphviz DOT text, or SVG/PNG rendered by Graphviz's ``dot``.

With the events of a run (``nodehost run --events json > events.jsonl``) the picture is
annotated with what happened: per node messages in/out and rates, per connection messages
sent, dropped, the fullest the channel got and the time its writer was blocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodehost.config import ValidatedPipeline
from nodehost.errors import GraphError as GraphError

FORMATS = ("mermaid", "dot", "svg", "png")
RENDERED = ("svg", "png")


@dataclass
class NodeBox:
    id: str
    node_type: str
    inputs: dict[str, str]          # port -> data type
    outputs: dict[str, str]
    note: str = ""                  # from --stats


@dataclass
class Edge:
    source: str                     # "node.port", or "input:NAME" for a session input
    target: str                     # "node.port", or "output:NAME" for a session output
    data_type: str
    capacity: int | None
    backpressure: bool | None
    note: str = ""


@dataclass
class Graph:
    name: str
    nodes: list[NodeBox] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)   # "input:NAME" / "output:NAME"


def build(pipeline: ValidatedPipeline) -> Graph:
    graph = Graph(pipeline.config.name)
    for node_id in pipeline.order:
        m = pipeline.nodes[node_id].manifest
        graph.nodes.append(NodeBox(node_id, m.node_type,
                                   {p: s.data_type.value for p, s in m.inputs.items()},
                                   {p: s.data_type.value for p, s in m.outputs.items()}))
    for conn in pipeline.connections:
        spec = pipeline.nodes[conn.source.node].manifest.outputs[conn.source.port]
        graph.edges.append(Edge(str(conn.source), str(conn.target), spec.data_type.value,
                                conn.capacity, conn.backpressure))
    for name, port in pipeline.inputs.items():
        graph.ends.append(f"input:{name}")
        for target in port.ports:
            graph.edges.append(Edge(f"input:{name}", str(target), port.spec.data_type.value,
                                    None, True))
    for name, port in pipeline.outputs.items():
        graph.ends.append(f"output:{name}")
        graph.edges.append(Edge(str(port.ports[0]), f"output:{name}",
                                port.spec.data_type.value, None, True))
    return graph


# -- annotations from a saved event stream ----------------------------------------------
def load_stats(path: str | Path) -> list[dict[str, Any]]:
    """The ``stats`` events of a ``--events json`` stream (one JSON object a line)."""
    events = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise GraphError(f"{path}:{number}: not a JSON event ({exc.msg}); save "
                                     "one with `nodehost run CONFIG --events json > FILE`"
                                     ) from exc
                if isinstance(event, dict) and event.get("event") == "stats":
                    events.append(event)
    except OSError as exc:
        raise GraphError(f"cannot read {path}: {exc.strerror}") from exc
    if not events:
        raise GraphError(f"{path}: no stats events in it (save a run with "
                         "`nodehost run CONFIG --events json > FILE`)")
    return events


def annotate(graph: Graph, events: list[dict[str, Any]]) -> None:
    """Write what the run did onto the graph's nodes and edges."""
    last = events[-1]
    for box in graph.nodes:
        figures = last["nodes"].get(box.id)
        if figures is None:
            continue
        parts = [f"in {figures['received']} / out {figures['sent']}"]
        rate = _rate(events, box.id)
        if rate is not None:
            parts.append(f"{rate:.0f} msg/s")
        age = (figures.get("input_age_s") or {}).get("p50")
        if age is not None:
            parts.append(f"age p50 {age * 1e3:.1f} ms")
        box.note = ", ".join(parts)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        for channel in event["channels"]:
            by_source.setdefault(channel["from"], []).append(channel)
    for edge in graph.edges:
        history = by_source.get(edge.source)
        if not history:
            continue
        final = history[-1]
        parts = [f"{final['sent']} sent"]
        if final["dropped"]:
            parts.append(f"{final['dropped']} dropped")
        fullest = max((c["occupancy"] or 0) / c["capacity"] for c in history)
        if final["backpressure"]:
            parts.append(f"max {fullest:.0%} full")
        if final["blocked_s"]:
            parts.append(f"blocked {final['blocked_s']:.2f} s")
        edge.note = ", ".join(parts)


def _rate(events: list[dict[str, Any]], node: str) -> float | None:
    """Messages a second while the node was busy: from the last event before its first
    message to the first event that shows its final count."""
    def count(event: dict[str, Any]) -> int:
        figures = event["nodes"].get(node) or {}
        return max(int(figures.get("received", 0)), int(figures.get("sent", 0)))

    final = count(events[-1])
    idle = [float(e["ts"]) for e in events if count(e) == 0]
    done = [float(e["ts"]) for e in events if count(e) == final]
    if not final or not idle or not done or done[0] <= idle[-1]:
        return None
    return final / (done[0] - idle[-1])


# -- text formats ------------------------------------------------------------------------
def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return ""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):g} {unit}"
    return f"{nbytes} B"


def _edge_label(edge: Edge) -> str:
    parts = [edge.data_type]
    if edge.capacity is not None:
        parts.append(_size(edge.capacity))
    if edge.backpressure is False:
        parts.append("drop oldest")
    label = ", ".join(parts)
    return f"{label}\n{edge.note}" if edge.note else label


def _ident(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _ports(ports: dict[str, str]) -> str:
    return ", ".join(f"{p} ({t})" for p, t in ports.items())


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart LR"]
    for box in graph.nodes:
        text = [f"<b>{box.id}</b>", box.node_type]
        if box.inputs:
            text.append(f"← {_ports(box.inputs)}")
        if box.outputs:
            text.append(f"→ {_ports(box.outputs)}")
        if box.note:
            text.append(f"<i>{box.note}</i>")
        lines.append(f'    {_ident(box.id)}["{"<br/>".join(text)}"]')
    for end in graph.ends:
        lines.append(f'    {_ident(end)}(["{end}"])')
    for edge in graph.edges:
        label = _edge_label(edge).replace("\n", "<br/>")
        source = edge.source if edge.source.startswith("input:") else \
            edge.source.split(".", 1)[0]
        target = edge.target if edge.target.startswith("output:") else \
            edge.target.split(".", 1)[0]
        arrow = "-.->" if edge.backpressure is False else "-->"
        lines.append(f'    {_ident(source)} {arrow}|"{_port_pair(edge)}: {label}"| '
                     f"{_ident(target)}")
    return "\n".join(lines) + "\n"


def _port_pair(edge: Edge) -> str:
    source = edge.source.split(".", 1)[1] if "." in edge.source else edge.source
    target = edge.target.split(".", 1)[1] if "." in edge.target else edge.target
    return f"{source} → {target}"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Graph) -> str:
    # A long chain reads better top to bottom (the record labels flip with it).
    lines = [f"digraph {_dot_quote(graph.name)} {{",
             f"  rankdir={'TB' if len(graph.nodes) > 4 else 'LR'};",
             '  node [shape=record, fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for box in graph.nodes:
        ins = "|".join(f"<in_{_ident(p)}> {p}" for p in box.inputs) or " "
        outs = "|".join(f"<out_{_ident(p)}> {p}" for p in box.outputs) or " "
        middle = "\\n".join(_record(part) for part in (box.id, box.node_type, box.note)
                             if part)
        lines.append(f'  {_ident(box.id)} [label="{{{{{ins}}}|{middle}|{{{outs}}}}}"];')
    for end in graph.ends:
        lines.append(f"  {_ident(end)} [shape=oval, label={_dot_quote(end)}];")
    for edge in graph.edges:
        style = ', style=dashed' if edge.backpressure is False else ""
        lines.append(f"  {_dot_end(edge.source, 'out')} -> {_dot_end(edge.target, 'in')} "
                     f"[label={_dot_quote(_edge_label(edge))}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _record(text: str) -> str:
    """Escape what a record label gives meaning to (line breaks stay ``\\n``)."""
    for char in "{}|<>\"":
        text = text.replace(char, "\\" + char)
    return text


def _dot_end(end: str, side: str) -> str:
    if end.startswith(("input:", "output:")):
        return _ident(end)
    node, port = end.split(".", 1)
    return f"{_ident(node)}:{side}_{_ident(port)}"


# -- rendering ---------------------------------------------------------------------------
def render(dot_text: str, fmt: str) -> bytes:
    """SVG or PNG bytes from DOT text, through Graphviz's ``dot``."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphError(f"--format {fmt} needs Graphviz's `dot`, which is not installed: "
                         "`apt install graphviz` (Debian/Ubuntu), `brew install graphviz` "
                         "(macOS); or use --format dot or mermaid")
    try:
        done = subprocess.run([dot, f"-T{fmt}"], input=dot_text.encode(), capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GraphError(f"Graphviz's dot failed: {exc}") from exc
    if done.returncode != 0:
        raise GraphError(f"Graphviz's dot failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def picture(pipeline: ValidatedPipeline, fmt: str,
            stats_path: str | Path | None = None) -> bytes:
    """The pipeline in ``fmt`` (one of ``FORMATS``), annotated from a saved run if given."""
    graph = build(pipeline)
    if stats_path is not None:
        annotate(graph, load_stats(stats_path))
    if fmt == "mermaid":
        return to_mermaid(graph).encode()
    text = to_dot(graph)
    return text.encode() if fmt == "dot" else render(text, fmt)
