"""The nodehost plugin: one collector per host process, fed by session events, served on
demand by prometheus_client's HTTP server (loopback only)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

import nodehost
from nodehost_prometheus.collector import SessionCollector

ADDRESS = "127.0.0.1"  # metrics say what runs here: never served beyond this machine

collector = SessionCollector()
registry = CollectorRegistry(auto_describe=True)
registry.register(collector)


class Exporter:
    """A running metrics HTTP server; ``close()`` stops it."""

    def __init__(self, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=ADDRESS, registry=registry)
        self.port = int(self.server.server_address[1])
        self.url = f"http://{ADDRESS}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@nodehost.hookimpl
def nodehost_session_event(event: dict[str, Any]) -> None:
    collector.observe(event)


@nodehost.hookimpl
def nodehost_metrics_exporter(port: int) -> Exporter:
    return Exporter(port)
