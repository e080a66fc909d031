"""The exceptions nodehost raises, in one place.

    NodehostError
    ├── ConfigError            bad manifest or pipeline config; carries located issues
    ├── DiscoveryError         no such node type, or a plugin problem surfaced to the user
    ├── IllegalTransition      a lifecycle or channel state change the model forbids
    ├── WireFormatError        a RuntimeData header or payload that must not be trusted
    ├── ChannelError           a data-plane failure (closed channel, payload too big, ...)
    ├── SessionError           a session could not start or was misused
    └── SandboxError           a sandbox plan that cannot be honoured (nodehost.sandbox)
"""

from __future__ import annotations

from dataclasses import dataclass


class NodehostError(Exception):
    """Base of every error nodehost raises on purpose."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a config or manifest, with where it is."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


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
