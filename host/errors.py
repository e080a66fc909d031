"""The exceptions nodehost raises, in one place: every class of the tree lives here (the
modules that raise them re-export their own, e.g. ``nodehost.channels.ChannelClosed``).

    NodehostError
    ├── ConfigError            bad manifest or pipeline config; carries located issues
    ├── DiscoveryError         no such node type, or a plugin problem surfaced to the user
    │   └── HookTimeout        a plugin's import or hook did not return in time
    ├── IllegalTransition      a lifecycle or channel state change the model forbids
    ├── WireFormatError        a RuntimeData header or payload that must not be trusted
    │   └── InvalidRuntimeData arguments that cannot make a valid message (also ValueError)
    ├── FrameError             a `nodehost serve` binary frame off its layout (also ValueError)
    ├── ChannelError           a data-plane failure (closed channel, payload too big, ...)
    │   ├── ChannelClosed      the channel or its data plane was closed while in use
    │   └── ChannelTimeout     a blocking channel operation timed out
    │       └── SendTimeout    Session.send found no room in time (also a TimeoutError)
    ├── SessionError           a session could not start or was misused
    │   ├── HostClosed         start_session() after Host.close() or Host.cancel()
    │   ├── SessionEnded       the session is over (send/outputs after its end); .result
    │   │   └── SessionFailed  ... because it failed: .result names the node and the cause
    │   └── MachineError       another machine's agent unreachable, refusing or lying
    ├── EnvError               a node's own Python environment cannot be found or built
    │   ├── InterpreterNotFound   the Python version its manifest asks for
    │   └── EnvBuildError      venv or pip failed; .requirement, .log_tail
    ├── SandboxError           a sandbox plan that cannot be honoured
    ├── GraphError             `nodehost graph` cannot draw (no Graphviz, unreadable stats)
    ├── ScaffoldError          `nodehost new`: the name or target folder cannot be used
    └── ServeUsageError        options `nodehost serve` refuses to start with

Errors are chained: where a backend's error (iceoryx2, the OS, pydantic) is turned into one
of these, ``raise ... from exc`` keeps it as ``__cause__``. Not in the tree, on purpose:
control flow inside one module that never reaches a user (the runner's ``Stopped``, a
BaseException like KeyboardInterrupt; ``nodehost.serve``'s ``Refused``/``ProtocolError``;
the client's and the Zenoh link's own errors).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


class HookTimeout(DiscoveryError):
    """A plugin's import or hook did not return in time."""


class IllegalTransition(NodehostError):
    """A state change that the lifecycle model forbids."""


class WireFormatError(NodehostError):
    """Bytes that do not form a valid RuntimeData message."""


class InvalidRuntimeData(WireFormatError, ValueError):
    """Arguments that cannot make a valid message (raised when building, not when parsing)."""


class FrameError(NodehostError, ValueError):
    """A binary frame of ``nodehost serve`` that does not follow its layout."""


class ChannelError(NodehostError):
    """A shared-memory channel cannot do what was asked."""


class ChannelClosed(ChannelError):
    """The channel (or its whole data plane) was closed or shut down while in use."""


class ChannelTimeout(ChannelError):
    """A blocking channel operation did not complete in time."""


class SendTimeout(ChannelTimeout, TimeoutError):
    """``send()`` or ``close_input()`` waited ``timeout`` seconds for room in the channel."""


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


class EnvError(NodehostError):
    """A node's Python environment could not be found or built."""


class InterpreterNotFound(EnvError):
    def __init__(self, version: str, searched: Sequence[str]) -> None:
        self.version = version
        self.searched = list(searched)
        where = "\n  ".join(self.searched)
        super().__init__(
            f"Python {version} not found; searched:\n  {where}\n"
            f"Install it (e.g. `pyenv install {version}`, `uv python install {version}` or "
            f"your distribution's python{version} package) or put python{version} on PATH, "
            f"or set NODEHOST_PYTHON_{version.replace('.', '_')} to its path.")


class EnvBuildError(EnvError):
    """pip (or venv) failed; ``requirement`` is the one pip could not install, when known."""

    def __init__(self, message: str, *, requirement: str | None = None,
                 log_tail: str = "") -> None:
        super().__init__(message)
        self.requirement = requirement
        self.log_tail = log_tail


class SandboxError(NodehostError):
    """A sandbox plan that cannot be enforced as written (a misconfiguration, not a kernel gap)."""


class GraphError(NodehostError):
    """The picture cannot be made (no Graphviz, unreadable stats)."""


class ScaffoldError(NodehostError):
    """The name or the target folder cannot be used."""


class ServeUsageError(NodehostError):
    """Options ``nodehost serve`` refuses to start with."""
