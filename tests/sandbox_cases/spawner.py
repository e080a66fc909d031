"""An intermediate "host": spawn one grandchild that waits forever, print its pid, wait.

    python spawner.py preexec_fn|in_child|none

``preexec_fn`` starts the grandchild with ``preexec_fn=sandbox.preexec``; ``in_child`` has
the grandchild call ``sandbox.preexec`` itself first thing (as the runner does); either way it
must die when this process is SIGKILLed. ``none`` is the control: it survives. The grandchild
does not read its stdin: a closed pipe must not be what ends it.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

from nodehost import sandbox

mode = sys.argv[1]
arm = ""
if mode == "in_child":
    arm = f"from nodehost import sandbox; sandbox.preexec({os.getpid()}); "
child = subprocess.Popen(
    [sys.executable, "-c", f"{arm}import signal; print('waiting', flush=True); signal.pause()"],
    stdin=subprocess.DEVNULL,
    stdout=subprocess.PIPE,
    preexec_fn=functools.partial(sandbox.preexec, os.getpid()) if mode == "preexec_fn" else None,
)
assert child.stdout is not None
child.stdout.readline()  # the grandchild runs past its start-up (and past preexec)
print(child.pid, flush=True)
signal.pause()
