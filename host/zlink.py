"""What the coordinator, the agents and the bridge nodes share about Zenoh: how a Zenoh
session is configured, the key expressions of the protocol, and signed control messages.

Key expressions (``<sid>`` a session id, ``<name>`` a machine name):

    nodehost/agent/<name>                 liveliness token of a running agent
    nodehost/agent/<name>/control         queryable: describe, launch, stop (signed)
    nodehost/coordinator/<sid>            liveliness token of a session's coordinator
    nodehost/session/<sid>/<name>/events  the session's events on that machine (JSON)
    nodehost/link/<sid>/<n>/data          a crossing connection: messages (wire format)
    nodehost/link/<sid>/<n>/credit        ... and the receiver's credits back

Control requests and replies carry an HMAC-SHA256 of their body under the agent's token, a
timestamp and a nonce: an agent acts only on requests signed with its token, at most once,
within ``MAX_SKEW_S`` of its clock; the coordinator believes only replies signed with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from typing import Any

from nodehost.errors import MachineError

LEASE_MS = 800  # a silent link is declared dead after this: failures seen within 1 s
KEEP_ALIVES_PER_LEASE = 8
MAX_SKEW_S = 30.0
TOKEN_ENV = "NODEHOST_AGENT_TOKEN"
CONFIG_ENV = "NODEHOST_ZENOH_CONFIG"  # a Zenoh config file (TLS, mTLS) merged under ours


class AuthError(Exception):
    """A control message that is not signed with the expected token (or is replayed)."""


def agent_key(name: str) -> str:
    return f"nodehost/agent/{name}"


def control_key(name: str) -> str:
    return f"nodehost/agent/{name}/control"


def coordinator_key(session_id: str) -> str:
    return f"nodehost/coordinator/{session_id}"


def events_key(session_id: str, machine: str) -> str:
    return f"nodehost/session/{session_id}/{machine}/events"


def link_key(session_id: str, index: int) -> str:
    return f"nodehost/link/{session_id}/{index}"


def session_config(mode: str, *, listen: list[str] | None = None,
                   connect: list[str] | None = None) -> Any:
    """A Zenoh config: no multicast scouting (peers are named, never discovered), a short
    lease (a dead link is noticed within a second), and the operator's own settings (TLS)
    from ``NODEHOST_ZENOH_CONFIG`` when set."""
    import zenoh

    path = os.environ.get(CONFIG_ENV)
    config = zenoh.Config.from_file(path) if path else zenoh.Config()
    config.insert_json5("mode", json.dumps(mode))
    config.insert_json5("listen/endpoints", json.dumps(list(listen or [])))
    config.insert_json5("connect/endpoints", json.dumps(list(connect or [])))
    config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("scouting/gossip/enabled", "false")
    # Zenoh's own shared memory would hand large payloads over in /dev/shm segments, which
    # a sandboxed bridge node cannot map (and which never cross machines anyway).
    config.insert_json5("transport/shared_memory/enabled", "false")
    config.insert_json5("transport/link/tx/lease", str(LEASE_MS))
    config.insert_json5("transport/link/tx/keep_alive", str(KEEP_ALIVES_PER_LEASE))
    return config


def open_client(connect: str, what: str) -> Any:
    """A Zenoh client session to the agent at ``connect``; a clear error when unreachable."""
    import zenoh

    try:
        return zenoh.open(session_config("client", connect=[connect]))
    except zenoh.ZError as exc:
        raise MachineError(f"{what}: cannot reach {connect} ({exc})") from exc


# -- signed messages ---------------------------------------------------------------------
def _mac(token: str, body: str) -> str:
    return hmac.new(token.encode(), body.encode(), hashlib.sha256).hexdigest()


def sign(token: str, **fields: Any) -> bytes:
    body = json.dumps({**fields, "ts": time.time(), "nonce": secrets.token_hex(16)},
                      sort_keys=True)
    return json.dumps({"body": body, "mac": _mac(token, body)}).encode()


class Verifier:
    """Checks signed messages: right token, fresh, never seen before."""

    def __init__(self, token: str) -> None:
        self.token = token
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, raw: bytes) -> dict[str, Any]:
        try:
            envelope = json.loads(raw)
            body, mac = envelope["body"], envelope["mac"]
            if not isinstance(body, str) or not isinstance(mac, str):
                raise TypeError("body and mac must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"not a signed message ({exc})") from exc
        if not hmac.compare_digest(_mac(self.token, body), mac):
            raise AuthError("bad signature: the token does not match")
        fields: dict[str, Any] = json.loads(body)
        now = time.time()
        if abs(now - float(fields.get("ts", 0))) > MAX_SKEW_S:
            raise AuthError(f"stale or future message (clocks more than {MAX_SKEW_S:g} s "
                            "apart?)")
        nonce = str(fields.get("nonce", ""))
        with self._lock:
            self._seen = {n: t for n, t in self._seen.items() if now - t < 2 * MAX_SKEW_S}
            if not nonce or nonce in self._seen:
                raise AuthError("replayed message")
            self._seen[nonce] = now
        return fields
