"""The exceptions nodehost raises, in one place.

    NodehostError
    ├── ConfigError            bad manifest or pipeline config; carries located issues
    ├── DiscoveryError         no such node type, or a plugin problem surfaced to the user
    ├── IllegalTransition      a lifecycle or channel state change the model forbids
    ├── WireFormatError        a RuntimeData header or payload that must not be trusted
    ├── ChannelError           a data-plane failure (closed channel, payload too big, ...)
    │   └── ChannelTimeout     a blocking channel operation timed out (nodehost.channels)
    │       └── SendTimeout    Session.send found no room in time (also a TimeoutError)
    ├── SessionError           a session could not start or was misused
    │   └── SessionEnded       the session is over (send/outputs after its end); .result
    │       └── SessionFailed  ... because it failed: .result names the node and the cause
    └── SandboxError           a sandbox plan that cannot be honoured (nodehost.sandbox)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydantic is not imported here: errors must stay cheap to import
    from pydantic import ValidationError

    from nodehost.session import SessionResult


class NodehostError(Exception):
    """Base of every error nodehost raises on purpose."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a config or manifest, with where it is."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


def format_loc(loc: Iterable[int | str]) -> str:
    """``("nodes", 2, "params", "x")`` → ``nodes[2].params.x``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker after a mapping key that failed: the key says it
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isidentifier():  # '', 'a.b', 'sample-rate': quoted, unambiguous
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_issues(exc: ValidationError, prefix: str = "") -> list[Issue]:
    """One located Issue per error of a pydantic ValidationError."""
    issues = []
    for err in exc.errors():
        loc = format_loc(err["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        issues.append(Issue(loc, err["msg"]))
    return issues


class ConfigError(NodehostError):
    """A config or manifest is invalid. ``issues`` lists every problem with its location."""

    def __init__(self, issues: list[Issue] | Issue | str, *, source: str | None = None) -> None:
        if isinstance(issues, str):
            issues = [Issue("", issues)]
        elif isinstance(issues, Issue):
            issues = [issues]
        self.issues = issues
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.issues) == 1:
            return head + str(self.issues[0])
        lines = [f"{head}{len(self.issues)} problems:"]
        lines += [f"  {issue}" for issue in self.issues]
        return "\n".join(lines)


class DiscoveryError(NodehostError):
    """A node type cannot be found or a plugin cannot be used."""


class IllegalTransition(NodehostError):
    """A state change that the lifecycle model forbids."""


class WireFormatError(NodehostError):
    """Bytes that do not form a valid RuntimeData message."""


class ChannelError(NodehostError):
    """A shared-memory channel cannot do what was asked."""


class SessionError(NodehostError):
    """A session cannot start, or was used in a way its state does not allow."""


class HostClosed(SessionError):
    """``Host.start_session`` after ``Host.close()`` or ``Host.cancel()``."""


class SessionEnded(SessionError):
    """The session has ended; ``result`` says how. Its inputs take nothing more."""

    def __init__(self, message: str, result: SessionResult) -> None:
        super().__init__(message)
        self.result = result


class SessionFailed(SessionEnded):
    """The session failed (a node crashed, failed or timed out): ``result`` names the node
    and the cause. Raised by ``send()`` and ``outputs()`` instead of hanging."""


class MachineError(SessionError):
    """Another machine's agent could not be reached, refused a request, or answered falsely."""
