"""The node implementations: imported only in a node's own process, never by the host.

When NODEHOST_FIXTURE_IMPORT_MARKER names a file, importing this module creates it, so a test
can prove that the host never imported it.
"""

import os
from pathlib import Path

import nodehost

_marker = os.environ.get("NODEHOST_FIXTURE_IMPORT_MARKER")
if _marker:
    Path(_marker).write_text(f"imported by pid {os.getpid()}\n")


class Tone(nodehost.Node):
    pass


class Gain(nodehost.Node):
    pass
