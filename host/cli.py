"""The ``nodehost`` command line. Exit codes: 0 success, 1 session failed, 2 bad input/usage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost.errors import ConfigError, NodehostError

if TYPE_CHECKING:
    from nodehost.config import ResolvedNode
    from nodehost.discovery import NodeType, Registry

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SCHEMA_FILES = {"manifest": "node-manifest.schema.json", "pipeline": "pipeline.schema.json"}


def _registry() -> Registry:
    from nodehost.discovery import discover

    return discover()


def _ports(ports: dict[str, Any]) -> str:
    return ", ".join(f"{name}:{spec.data_type.value}" for name, spec in ports.items()) or "-"


def _node_summary(node_type: NodeType) -> dict[str, Any]:
    m = node_type.manifest
    return {
        "node_type": m.node_type,
        "version": m.version,
        "plugin": node_type.plugin,
        "plugin_version": node_type.plugin_version,
        "description": m.description,
        "inputs": {k: v.data_type.value for k, v in m.inputs.items()},
        "outputs": {k: v.data_type.value for k, v in m.outputs.items()},
        "runtime": m.runtime.model_dump() if m.runtime else None,
    }


def cmd_nodes(args: argparse.Namespace) -> int:
    import logging

    # The listing reports plugin problems itself: discovery's warnings would repeat them.
    logging.getLogger("nodehost.discovery").setLevel(logging.ERROR)
    registry = _registry()
    types = sorted(registry.node_types.values(), key=lambda t: t.name)
    if args.json:
        print(json.dumps({
            "nodes": [_node_summary(t) for t in types],
            "plugins": [vars(p) for p in registry.plugins.values()],
            "failures": [{"plugin": f.plugin, "entry_point": f.entry_point, "reason": f.reason}
                         for f in registry.failures],
        }, indent=2))
        return EXIT_OK
    if not types:
        print("No node types installed. Install a plugin, e.g. "
              "`pip install -e plugins/nodehost-audio`.")
    rows = [("TYPE", "VERSION", "PLUGIN", "INPUTS", "OUTPUTS")]
    rows += [(t.name, t.manifest.version, t.plugin, _ports(t.manifest.inputs),
              _ports(t.manifest.outputs)) for t in types]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if types:
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if registry.failures:
        print(f"\n{len(registry.failures)} plugin problem(s):")
        for failure in registry.failures:
            print(f"  {failure.plugin}: {failure.reason}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from nodehost.inspect_view import manifest_doc, render

    registry = _registry()
    node_type = registry.get(args.type)
    if args.json:
        data = node_type.manifest.model_dump(mode="json", exclude_none=True)
        print(json.dumps({"plugin": node_type.plugin, "source": node_type.source,
                          "manifest": data}, indent=2))
        return EXIT_OK
    if not args.yaml:
        print(render(node_type))
        return EXIT_OK
    import yaml

    print(f"# {node_type.name} from {node_type.plugin} {node_type.plugin_version} "
          f"({node_type.source})")
    print(yaml.safe_dump(manifest_doc(node_type.manifest), sort_keys=False,
                         default_flow_style=None, allow_unicode=True).rstrip())
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from nodehost import remote
    from nodehost.config import load_config, validate_pipeline

    config = load_config(args.config)
    registry = _registry()
    try:
        if remote.placed(config):  # nodes on other machines: ask their agents
            pipeline, notes = remote.validate_placed(config, registry)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        else:
            pipeline = validate_pipeline(config, registry.node_types)
    except ConfigError as exc:
        raise ConfigError(exc.issues, source=str(args.config)) from exc
    print(f"{args.config}: valid pipeline {config.name!r}: {len(pipeline.nodes)} nodes, "
          f"{len(pipeline.connections)} connections")
    for port in (*pipeline.inputs.values(), *pipeline.outputs.values()):
        print(f"  session {port.direction} {port.describe()}")
    for node in pipeline.nodes.values():
        print(f"  nodes[{node.index}] {node.id} ({node.manifest.node_type}): "
              f"{_resources_summary(node)}")
    return EXIT_OK


def _resources_summary(node: ResolvedNode) -> str:
    """What the node will run with, and where each value comes from."""
    limit = node.memory_mb
    source = "config" if node.memory_mb_from_config else "manifest"
    text = f"memory limit {limit} MiB ({source})" if limit is not None else \
        f"no memory limit ({source})"
    if node.env:
        text += ", env " + " ".join(f"{k}={v}" for k, v in sorted(node.env.items()))
    return text


def schemas() -> dict[str, dict[str, Any]]:
    from nodehost.config import PipelineConfig
    from nodehost.manifest import NodeManifest

    return {
        "manifest": NodeManifest.model_json_schema(),
        "pipeline": PipelineConfig.model_json_schema(by_alias=True),
    }


def cmd_schema(args: argparse.Namespace) -> int:
    docs = schemas()
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for key, filename in SCHEMA_FILES.items():
            (out / filename).write_text(json.dumps(docs[key], indent=2) + "\n")
            print(f"wrote {out / filename}")
        return EXIT_OK
    print(json.dumps(docs, indent=2))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from nodehost.runview import run_pipeline

    return run_pipeline(args.config, events=args.events, log_dir=args.log_dir,
                        overrides=args.set or (), metrics_port=args.metrics_port)


def cmd_graph(args: argparse.Namespace) -> int:
    from nodehost.config import load_config, validate_pipeline
    from nodehost.graph import RENDERED, picture

    if args.format in RENDERED and args.output is None and sys.stdout.isatty():
        print(f"error: --format {args.format} is binary: write it with -o FILE",
              file=sys.stderr)
        return EXIT_USAGE
    config = load_config(args.config)
    try:
        pipeline = validate_pipeline(config, _registry().node_types)
    except ConfigError as exc:
        raise ConfigError(exc.issues, source=str(args.config)) from exc
    data = picture(pipeline, args.format, args.stats)
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output} ({args.format}, {len(data)} bytes)", file=sys.stderr)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from nodehost import bench

    code: int = bench.main(args.bench_args)
    return code




def cmd_agent(args: argparse.Namespace) -> int:
    from nodehost import agent

    return agent.main(args.agent_args)


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn", "websockets")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: nodehost serve needs {', '.join(missing)}: pip install "
              "'nodehost[serve]'", file=sys.stderr)
        return EXIT_USAGE
    from nodehost.serve import main_serve

    return main_serve(args)


def add_metrics_port(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", metavar="P", type=int,
                   help="serve Prometheus metrics on http://127.0.0.1:P/metrics (needs the "
                        "nodehost-prometheus plugin; 0: any free port)")


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a pipeline to WebSocket clients and a browser page, "
                                     "one session per client")
    p.add_argument("config", help="pipeline config file with session inputs/outputs")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free)")
    p.add_argument("--warm", type=int, default=0, metavar="N",
                   help="keep N sessions started and Ready for the next clients")
    p.add_argument("--max-sessions", type=int, default=None, metavar="M",
                   help="at most M sessions (idle warm ones included); clients past it are "
                        "refused at once")
    p.add_argument("--token", default=None, metavar="T",
                   help="secret a client must give (?token=T or 'Authorization: Bearer T'); "
                        "default: $NODEHOST_SERVE_TOKEN")
    p.add_argument("--max-frame-bytes", type=int, default=4 * 1024 * 1024, metavar="B",
                   help="largest binary frame a client may send (default 4 MiB)")
    add_metrics_port(p)
    p.set_defaults(func=cmd_serve)


def cmd_new(args: argparse.Namespace) -> int:
    from nodehost.scaffold import create, names

    target = Path(args.dir) if args.dir else Path(names(args.name, args.node).dist)
    written = create(target, args.name, args.node)
    n = names(args.name, args.node)
    where = target.as_posix() if target.is_absolute() else f"./{target.as_posix()}"
    print(f"created {where}/ ({len(written)} files): plugin {n.dist}, node type {n.node_type}")
    print(f"""
next:
  pip install -e '{where}[test]'   # nodehost finds {n.node_type} through its entry point
  nodehost nodes                   # lists it
  nodehost run {where}/pipelines/sample.yaml   # TextSource → {n.node_type} → TextSink
  pytest {where}/tests             # in-process and real-session tests""")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from nodehost import doctor

    return doctor.main(as_json=args.json)


def cmd_completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError as exc:
        raise NodehostError("shell completion needs shtab: pip install 'nodehost[completion]'"
                            ) from exc
    print(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _add_author_commands(sub: Any) -> None:
    """``new`` (plugin scaffold), ``doctor`` (what this machine offers), ``completion``."""
    p = sub.add_parser("completion", help="print a shell completion script: "
                                          "eval \"$(nodehost completion bash)\"")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=cmd_completion)
    p = sub.add_parser("doctor", help="check kernel, sandbox layers, /dev/shm and plugins "
                                      "(exit 1 when something required is missing)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("new", help="create a plugin package: node, manifest, tests, pipeline")
    p.add_argument("name", help="distribution name, e.g. textstats (the package: textstats)")
    p.add_argument("--node", default="WordCount", metavar="TYPE",
                   help="the node type to create (CamelCase; default WordCount)")
    p.add_argument("--dir", metavar="DIR", help="where to create it (default ./NAME)")
    p.set_defaults(func=cmd_new)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodehost",
        description="Run pipelines of Python nodes, each in its own sandboxed process, linked "
                    "by zero-copy shared memory.",
    )
    from nodehost import __version__

    parser.add_argument("--version", action="version", version=f"nodehost {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("nodes", help="list installed node types and plugin problems")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("inspect", help="show one node type: ports, params, resources, sandbox")
    p.add_argument("type", help="node type, e.g. Gain")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--yaml", action="store_true", help="the manifest as YAML")
    form.add_argument("--json", action="store_true", help="the manifest and its source as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="check a pipeline config (exit 0 valid, 2 invalid)")
    p.add_argument("config", help="pipeline config file (YAML, JSON or TOML)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run one session of a pipeline config")
    p.add_argument("config", help="pipeline config file (YAML, JSON or TOML)")
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE",
                   help="override a node's param, typed by its manifest (repeatable), e.g. "
                        "--set asr.beam_size=2")
    p.add_argument("--events", choices=["json", "log", "live", "quiet"], default=None,
                   help="json: one JSON event per line on stdout; log: every state change; "
                        "live: terminal view (default when stdout is a terminal); quiet: "
                        "node logs, errors and the summary (default otherwise)")
    p.add_argument("--log-dir", metavar="DIR",
                   help="write every node's output lines and log records to DIR/<node>.log")
    add_metrics_port(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("graph", help="draw a pipeline: Mermaid, Graphviz DOT, SVG or PNG")
    p.add_argument("config", help="pipeline config file (YAML, JSON or TOML)")
    p.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid",
                   help="mermaid (default) and dot are text; svg and png need Graphviz")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--stats", metavar="EVENTS",
                   help="annotate with a saved run: `nodehost run CONFIG --events json > "
                        "EVENTS` (rates, occupancy, drops, blocked time)")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("bench", help="data-plane benchmark against baselines",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    from nodehost.env_cli import add_cli as add_env_cli  # argparse only: imports stay light

    add_env_cli(sub)

    p = sub.add_parser("agent", help="run nodes placed on this machine by coordinators "
                                     "elsewhere (Zenoh; token from NODEHOST_AGENT_TOKEN)",
                       add_help=False)
    p.add_argument("agent_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_agent)


    add_serve_parser(sub)

    p = sub.add_parser("schema", help="print (or --write) the JSON Schemas of manifests and "
                                      "pipeline configs")
    p.add_argument("--write", metavar="DIR", help="write one file per schema into DIR")
    p.set_defaults(func=cmd_schema)
    _add_author_commands(sub)
    return parser


# Subcommands with parsers of their own (and heavy imports): their arguments, --help
# included, go to them untouched.
_DELEGATED = {"bench": (cmd_bench, "bench_args"), "agent": (cmd_agent, "agent_args")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        func, dest = _DELEGATED[argv[0]]
        args = argparse.Namespace(func=func, **{dest: argv[1:]})
    else:
        args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NodehostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
