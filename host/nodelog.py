"""A node's stdout and stderr, as the session reads them: lines, a tail, a file, a budget.

The session reads every node's output pipe whatever happens (a node blocked on a full pipe
would stall), splits it into lines and keeps the last ``TAIL_LINES`` for crash reports. Each
line may also become a ``log`` event, within a budget: at most ``RATE`` lines a second after
a burst of ``BURST``; what the budget refuses is counted and reported as one line, so a node
printing in a tight loop costs the host a bounded number of events. ``--log-dir`` files get
every line.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import IO

TAIL_LINES = 20
MAX_LINE = 2000          # characters of one line kept (a line without newlines is cut)
RATE = 50.0              # log events a second per node, sustained
BURST = 200


class NodeOutput:
    """One node's output stream."""

    def __init__(self, node_id: str, log_dir: Path | None = None) -> None:
        self.node_id = node_id
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = b""
        self._tokens = float(BURST)
        self._refilled = time.monotonic()
        self.suppressed = 0            # lines refused since the last report of them
        self.lines = 0
        self._file: IO[str] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(log_dir / f"{node_id}.log", "a", encoding="utf-8")  # noqa: SIM115

    def feed(self, chunk: bytes) -> list[str]:
        """Take a chunk read from the pipe (b"" at EOF); return the lines to emit as events,
        ending with a "… N lines not shown" line when the budget refused some."""
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        if not chunk and self._partial:  # EOF: the last line had no newline
            complete.append(self._partial)
            self._partial = b""
        if len(self._partial) > MAX_LINE * 4:  # no newline in sight: cut it here
            complete.append(self._partial)
            self._partial = b""
        emit = []
        now = time.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        for raw in complete:
            line = raw.decode(errors="replace").rstrip("\r")[:MAX_LINE]
            self.lines += 1
            self.tail.append(line)
            if self._file is not None:
                self._file.write(line + "\n")
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                emit.append(line)
            else:
                self.suppressed += 1
        if self._file is not None and complete:
            self._file.flush()
        if self.suppressed and (self._tokens >= 1.0 or not chunk):
            self._tokens -= 1.0
            emit.append(f"… {self.suppressed} more output lines not shown (rate limit; "
                        "--log-dir keeps them all)")
            self.suppressed = 0
        return emit

    def record(self, level: str, message: str) -> None:
        """A node log record (``self.logger``): into the file too, marked by its level."""
        if self._file is not None:
            self._file.write(f"[{level}] {message}\n")
            self._file.flush()

    def last_lines(self, count: int = 10) -> list[str]:
        lines = [line for line in self.tail if line.strip()]
        return lines[-count:]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
