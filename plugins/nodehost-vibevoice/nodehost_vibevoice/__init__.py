"""nodehost-vibevoice: the VibeVoiceTTS node type (Microsoft VibeVoice through transformers).

Importing this package imports nothing heavy: the node (``nodehost_vibevoice.node``) runs in
its own environment that the host builds from the manifest's ``runtime``.
"""
