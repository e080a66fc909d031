"""The exporter, scraped over HTTP while real sessions run (installed through entry points)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nodehost import Host

TIMEOUT = 120


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in metrics.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def pipeline(out: Path, count: int, interval_ms: float) -> dict[str, Any]:
    return {"name": "metrics", "nodes": [
        {"id": "src", "type": "ProbeSource",
         "params": {"count": count, "payload_bytes": 1024, "interval_ms": interval_ms}},
        {"id": "sink", "type": "ProbeSink", "params": {"out_path": str(out), "delay_ms": 8.0},
         "sandbox": {"fs_write": [str(out)]}}],
        "connections": [{"from": "src.out", "to": "sink.in", "backpressure": False}]}


def test_scraped_during_and_after_a_real_session(host: Host, tmp_out: Path) -> None:
    exporter = host.start_metrics(0)
    try:
        session = host.start_session(pipeline(tmp_out / "sum.json", 500, 3.0))
        during = None
        seen = 0
        for event in session.events(timeout=TIMEOUT):
            if event["event"] != "stats":
                continue
            final = event
            # Plugins get an event as it is queued for us: scrape at the second one that
            # shows the stream running, when the first has surely reached the plugin.
            seen += event["nodes"]["sink"]["received"] > 0
            if during is None and seen == 2:
                during = scrape(exporter.url)
        assert session.wait(TIMEOUT).ok
        assert during is not None, "the session ended before a scrape"
        labels = {"session": session.id}
        assert value(during, "nodehost_sessions_running") >= 1
        assert value(during, "nodehost_node_received_messages_total", node="sink",
                     node_type="ProbeSink", **labels) > 0
        assert value(during, "nodehost_channel_state", channel="src.out", state="Active",
                     **labels) == 1
        assert value(during, "nodehost_channel_ends", channel="src.out", role="subscriber",
                     **labels) == 1
        assert value(during, "nodehost_node_processing_seconds", node="sink",
                     quantile="0.5", **labels) >= 0.008
        after = scrape(exporter.url)
        [channel] = final["channels"]
        assert channel["dropped"] > 0  # a slow reader in drop mode
        assert value(after, "nodehost_channel_dropped_messages_total", channel="src.out",
                     to="sink.in", **labels) == channel["dropped"]
        assert value(after, "nodehost_channel_sent_messages_total", channel="src.out",
                     **labels) == 500
        assert value(after, "nodehost_node_received_messages_total", node="sink",
                     **labels) == final["nodes"]["sink"]["received"]
        assert value(after, "nodehost_channel_state", channel="src.out", state="Destroyed",
                     **labels) == 1
        assert value(after, "nodehost_sessions_ended_total", ok="true") >= 1
    finally:
        exporter.close()
    with pytest.raises(urllib.error.URLError):
        scrape(exporter.url)


def nodehost_run(config: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nodehost.cli", "run", str(config),
                             "--events", "json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_run_metrics_port_serves_on_loopback(tmp_out: Path) -> None:
    config = tmp_out / "p.yaml"
    config.write_text(yaml.safe_dump(pipeline(tmp_out / "sum.json", 10**9, 5.0)))
    proc = nodehost_run(config, "--metrics-port", "0")
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = proc.stderr.readline()
        assert line.startswith("metrics: http://127.0.0.1:"), line
        url = line.split()[1]
        seen = 0
        for raw in proc.stdout:  # the second stats event of a running stream (see above)
            event = json.loads(raw)
            seen += event["event"] == "stats" and event["nodes"]["src"]["sent"] > 0
            if seen == 2:
                break
        metrics = scrape(url)
        assert value(metrics, "nodehost_node_sent_messages_total", node="src") > 0
        assert value(metrics, "nodehost_channel_capacity_bytes", channel="src.out") == 1 << 24
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM  # stopped in order by the signal


def test_metrics_port_without_the_plugin_says_what_to_install(tmp_out: Path) -> None:
    config = tmp_out / "p.yaml"
    config.write_text(yaml.safe_dump(pipeline(tmp_out / "sum.json", 5, 0.0)))
    env = dict(os.environ, NODEHOST_DISABLE_PLUGINS="nodehost-prometheus")
    proc = nodehost_run(config, "--metrics-port", "0", env=env)
    _out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2
    assert "serving metrics needs a metrics plugin: pip install nodehost-prometheus" in err
    assert "Traceback" not in err


def test_serve_metrics_port_shows_its_warm_session(tmp_out: Path) -> None:
    pytest.importorskip("uvicorn")
    config = tmp_out / "served.yaml"
    config.write_text(yaml.safe_dump({
        "name": "served", "nodes": [{"id": "fwd", "type": "Forward"}],
        "inputs": {"in": "fwd.in"}, "outputs": {"out": "fwd.out"}}))
    proc = subprocess.Popen([sys.executable, "-m", "nodehost.cli", "serve", str(config),
                             "--port", "0", "--warm", "1", "--metrics-port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("metrics: http://127.0.0.1:"), line
        url = line.split()[1]
        deadline = time.monotonic() + TIMEOUT
        metrics: dict[Any, float] = {}
        while time.monotonic() < deadline:  # the warm session reports every 0.5 s
            metrics = scrape(url)
            if any(name == "nodehost_channel_state" for name, _ in metrics):
                break
            time.sleep(0.5)
        assert value(metrics, "nodehost_sessions_running") == 1
        assert value(metrics, "nodehost_channel_capacity_bytes", channel="input:in") > 0
        assert value(metrics, "nodehost_node_received_messages_total", node="fwd") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=TIMEOUT)
