"""Audio node types for nodehost.

Deliberately empty: the host imports ``nodehost_audio.plugin`` during discovery, and importing
this package must stay cheap (no numpy, soundfile or soxr).
"""
