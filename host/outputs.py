"""Output files that are never half-written: for nodes that write files (sinks).

A node writes to ``OutputFile(path).temp`` and calls ``commit()`` when its stream ended; a
failed or stopped session calls ``discard()`` (or leaves the ``with`` block by an exception),
so the file at ``path`` is either the previous one, untouched, or the complete new one.

Where the temporary file goes depends on the node's grant:

- a grant of the **folder** (``fs_write: [/out/]``): next to the target, renamed into place —
  atomic;
- a grant of the **file** alone (``fs_write: [/out/reply.wav]``): the sandbox lets the node
  create nothing beside it, so the temporary file goes to the node's private temp dir and is
  copied over the target at ``commit()`` — the target is only touched once the output is
  complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = ["OutputFile"]


class OutputFile:
    """A file written under a temporary name and put at ``path`` only by :meth:`commit`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # The temporary name keeps the extension: libraries pick the format from it.
        prefix, suffix = f".{self.path.stem}.", f".part{self.path.suffix}"
        try:
            fd, temp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self.path.parent)
        except OSError:  # no right to create files in that folder (a grant of the file only)
            fd, temp = tempfile.mkstemp(prefix=prefix, suffix=suffix)
        os.close(fd)
        self.temp = temp
        self.done = False

    def commit(self) -> None:
        """Put the finished file at ``path`` (closing it is the writer's job)."""
        if self.done:
            return
        try:
            os.replace(self.temp, self.path)
        except OSError:  # another filesystem, or the sandbox allows writing the file only
            shutil.copyfile(self.temp, self.path)
            os.unlink(self.temp)
        self.done = True

    def discard(self) -> None:
        """Forget the output: ``path`` keeps what it had."""
        if self.done:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)
        self.done = True

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
