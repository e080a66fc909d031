"""Options, fixtures and the figures table of the reliability suite.

    pytest -q tests/reliability                       # the CI run (~7 minutes on 2 cores)
    pytest -q tests/reliability --storm-sessions 1000 --soak-sessions 3000 \
        --concurrency-rounds 20 --backpressure-seconds 600   # the long run

Every test runs under a watchdog (faulthandler): a hang dumps every thread's stack and ends
the run instead of blocking CI until its global timeout. The measured figures are printed at
the end of the run and written as JSON (``--figures PATH``).
"""

from __future__ import annotations

import faulthandler
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import FIGURES, Leftovers, leftovers, shm_files

WATCHDOG_S = 900.0  # per test, anti-hang only; the long options scale it


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nodehost reliability")
    group.addoption("--storm-sessions", type=int, default=120,
                    help="crash storm: sessions in total, 7 of every 8 failing (default 120)")
    group.addoption("--storm-concurrency", type=int, default=5,
                    help="crash storm: sessions running at once (default 5)")
    group.addoption("--host-crashes", type=int, default=3,
                    help="times a host with live sessions is SIGKILLed (default 3)")
    group.addoption("--soak-sessions", type=int, default=200,
                    help="soak: sessions through one host (default 200)")
    group.addoption("--concurrency-rounds", type=int, default=3,
                    help="concurrency: rounds of 10 concurrent sessions (default 3)")
    group.addoption("--backpressure-seconds", type=float, default=45.0,
                    help="backpressure: how long the fast source feeds the slow sink")
    group.addoption("--fuzz-examples", type=int, default=300,
                    help="hypothesis examples per fuzz test (default 300)")
    group.addoption("--fuzz-random", action="store_true",
                    help="explore new random inputs (default: hypothesis's fixed derandomized "
                         "sequence, so a CI run is repeatable; explore before a release)")
    group.addoption("--figures", default=None,
                    help="write the measured figures as JSON here (default: a temp file)")


def option(config: pytest.Config, name: str) -> Any:
    return config.getoption(name)


@pytest.fixture(autouse=True)
def watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    cfg = request.config
    scale = max(1.0,
                option(cfg, "--storm-sessions") / 120,
                option(cfg, "--soak-sessions") / 200,
                option(cfg, "--concurrency-rounds") / 3,
                option(cfg, "--backpressure-seconds") / 45,
                option(cfg, "--fuzz-examples") / 300)
    faulthandler.dump_traceback_later(WATCHDOG_S * scale, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class Tracker:
    """A Host that remembers the sessions it ran, so that what they left behind can be
    counted by session id (see support.py) rather than guessed from a diff of /dev/shm."""

    def __init__(self, plugins: tuple[object, ...] = ()) -> None:
        import nodehost

        self.shm_before = shm_files()
        self.session_ids: list[str] = []
        self._seen: set[str] = set()
        self.host = nodehost.Host(on_event=self._on_event, plugins=plugins)

    def _on_event(self, event: dict[str, Any]) -> None:
        sid = event.get("session")
        if sid and sid not in self._seen:
            self._seen.add(sid)
            self.session_ids.append(sid)

    def leftovers(self) -> Leftovers:
        return leftovers(self.session_ids, self.shm_before)

    def close(self) -> Leftovers:
        self.host.close()
        return self.leftovers()


@pytest.fixture
def tracked() -> Iterator[Tracker]:
    """A tracked Host; the test fails if its sessions leave anything behind."""
    tracker = Tracker()
    yield tracker
    left = tracker.close()
    assert left.total == 0, f"left behind: {left}"


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path


# ------------------------------------------------------------------------------ figures

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("nodehost reliability figures")
    for section, values in FIGURES.items():
        tr.write_line(f"{section}:")
        for key, value in values.items():
            tr.write_line(f"    {key:<38} {_fmt(value)}")
    path = option(config, "--figures")
    if path is None:
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "nodehost-reliability-figures.json")
    try:
        Path(path).write_text(json.dumps({"python": sys.version.split()[0],
                                          "cpus": os.cpu_count(), "figures": FIGURES},
                                         indent=2, default=str))
        tr.write_line(f"figures written to {path}")
    except OSError as exc:
        tr.write_line(f"could not write figures to {path}: {exc}")
