"""``nodehost env list|prune|build`` (also spelled ``nodehost envs``; ``python -m
nodehost.envs`` runs the same parser): the one command line of per-node environments."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from nodehost.env_cache import list_envs, prune_envs
from nodehost.env_plan import envs_dir
from nodehost.errors import EnvBuildError, EnvError


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return "just now"


def cmd_env_list(args: argparse.Namespace) -> int:
    envs = list_envs()
    if args.json:
        print(json.dumps({"cache": str(envs_dir()), "envs": [e.as_json() for e in envs]},
                         indent=2))
        return 0
    if not envs:
        print(f"No node environments in {envs_dir()}.")
        return 0
    rows = [("KEY", "PYTHON", "SIZE", "LAST USED", "STATE", "REQUIREMENTS")]
    for e in envs:
        state = "building" if e.building else "ready" if e.complete else "incomplete"
        if e.in_use_by:
            state += f" (in use: {len(e.in_use_by)} proc)"
        rows.append((e.key, e.python or "?", _human(e.size_bytes), _age(e.last_used), state,
                     " ".join(e.requirements) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)),
                         row[-1]]).rstrip())
    print(f"\n{len(envs)} env(s), {_human(sum(e.size_bytes for e in envs))} in {envs_dir()}")
    return 0


def cmd_env_prune(args: argparse.Namespace) -> int:
    removed = prune_envs(everything=args.all, unused_days=args.older_than,
                         dry_run=args.dry_run, force=args.force)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.key} ({e.python or '?'}, {_human(e.size_bytes)})")
    print(f"{verb} {len(removed)} env(s), {_human(sum(e.size_bytes for e in removed))}")
    return 0


def cmd_env_build(args: argparse.Namespace) -> int:
    """Build (or find) the env of each named node type: for CI warm-up and for debugging."""
    from nodehost.discovery import discover
    from nodehost.envs import env_for_node_type

    registry = discover()
    code = 0
    for name in args.types:
        node_type = registry.get(name)
        if node_type.manifest.runtime is None:
            print(f"{name}: no runtime in its manifest; it runs in the host's environment")
            continue

        def show(fraction: float, message: str, name: str = name) -> None:
            print(f"[{name} {fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)

        started = time.monotonic()
        try:
            python = env_for_node_type(node_type, show)
        except EnvError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            if isinstance(exc, EnvBuildError) and exc.log_tail and args.verbose:
                print(exc.log_tail, file=sys.stderr)
            code = 1
            continue
        print(f"{name}: {python} ({time.monotonic() - started:.2f} s)")
    return code


def add_cli(subparsers: Any) -> None:
    """Add ``nodehost env list|prune|build`` to the CLI's subparsers."""
    p = subparsers.add_parser("env", aliases=["envs"],
                              help="per-node Python environments: list, prune, build")
    sub = p.add_subparsers(dest="env_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("list", help="cached environments with size, last use and state")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_env_list)
    q = sub.add_parser("prune", help="remove incomplete envs, and unused or all envs")
    q.add_argument("--all", action="store_true", help="remove every env not in use")
    q.add_argument("--older-than", type=float, metavar="DAYS",
                   help="remove envs not used for DAYS days")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    q.add_argument("--force", action="store_true",
                   help="also remove envs that running node processes use")
    q.set_defaults(func=cmd_env_prune)
    q = sub.add_parser("build", help="build (or reuse) the env of node types now")
    q.add_argument("types", nargs="+", metavar="TYPE", help="node type, e.g. LFM2Audio")
    q.add_argument("-v", "--verbose", action="store_true", help="pip's output on failure")
    q.set_defaults(func=cmd_env_build)
