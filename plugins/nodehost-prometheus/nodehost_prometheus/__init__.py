"""Prometheus metrics for nodehost: every session's node and channel figures.

Installed, it observes the host's session events (``nodehost_session_event``) and, when
asked (``nodehost run --metrics-port P``), serves them on http://127.0.0.1:P/metrics.
"""

from nodehost_prometheus.collector import SessionCollector

__all__ = ["SessionCollector"]
