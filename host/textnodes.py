"""Text nodes bundled with nodehost, so any text node can be tried in a real pipeline:

- ``TextSource`` sends text given inline (``text``) or read from a file (``path``), one message
  per line (``split: lines``) or all of it as one message (``split: none``).
- ``TextSink`` logs every message it receives (shown by ``nodehost run``) and, with ``path``,
  also writes each one as a line to that file (put in place when the stream ended).
- ``JsonlSink`` writes one JSON object per message to ``path``: its text, language, sequence
  number and the node that wrote it, for tests and for tools that read JSON lines.

Like every node they run in their own sandboxed process; ``path`` params must be granted in
the pipeline config (``sandbox: {fs_read: [...]}`` / ``{fs_write: [...]}``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import IO, Any

from pydantic import BaseModel

import nodehost
from nodehost.data import RuntimeData
from nodehost.outputs import OutputFile


class TextSourceParams(BaseModel):
    text: str = ""
    path: str | None = None
    split: str = "lines"
    language: str | None = None
    interval_ms: float = 0.0


class TextSource(nodehost.Node[TextSourceParams]):
    def initialize(self) -> None:
        params = self.params
        if params.path:
            with open(params.path, encoding="utf-8") as fh:
                self._text = fh.read()
        else:
            self._text = params.text
        if not self._text.strip():
            raise ValueError("TextSource has nothing to send: set params.text or params.path")

    def generate(self) -> Iterator[RuntimeData]:
        params = self.params
        pieces = self._text.splitlines() if params.split == "lines" else [self._text]
        for index, piece in enumerate(p for p in pieces if p.strip()):
            if index and params.interval_ms > 0:
                time.sleep(params.interval_ms / 1000)
            yield RuntimeData.text(piece, language=params.language)


class _LineFile:
    """A sink's output file, put in place only when the stream ended (``OutputFile``): a
    failed or stopped session leaves the previous file untouched."""

    def __init__(self, path: str) -> None:
        self.output = OutputFile(path)
        self.file: IO[str] = open(self.output.temp, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, line: str) -> None:
        self.file.write(line + "\n")

    def close(self, *, commit: bool) -> None:
        self.file.close()
        if commit:
            self.output.commit()
        else:
            self.output.discard()


class TextSinkParams(BaseModel):
    path: str | None = None
    log: bool = True


class TextSink(nodehost.Node[TextSinkParams]):
    _file: _LineFile | None = None

    def initialize(self) -> None:
        self.received = 0
        if self.params.path:
            self._file = _LineFile(self.params.path)

    def process(self, data: RuntimeData, port: str) -> None:
        text = data.as_text()
        self.received += 1
        if self.params.log:
            self.logger.info("%s", text)
        if self._file is not None:
            self._file.write(text)

    def end_of_stream(self, port: str) -> None:
        _close(self, commit=True)

    def cleanup(self) -> None:
        _close(self, commit=False)


class JsonlSinkParams(BaseModel):
    path: str


class JsonlSink(nodehost.Node[JsonlSinkParams]):
    _file: _LineFile | None = None

    def initialize(self) -> None:
        self._file = _LineFile(self.params.path)

    def process(self, data: RuntimeData, port: str) -> None:
        record: dict[str, Any] = {"text": data.as_text(),
                                  "language": getattr(data.metadata, "language", None),
                                  "seq": data.seq, "node": self.node_id}
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False))

    def end_of_stream(self, port: str) -> None:
        _close(self, commit=True)

    def cleanup(self) -> None:
        _close(self, commit=False)


def _close(sink: TextSink | JsonlSink, *, commit: bool) -> None:
    """At end of stream the file goes in place; in cleanup() (after a failure or a stop,
    or after end of stream, when there is nothing left to do) it is dropped."""
    if sink._file is not None:
        sink._file.close(commit=commit)
        sink._file = None
