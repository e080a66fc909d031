"""nodehost-lfm2audio: the LFM2Audio node type (Liquid AI LFM2-Audio through liquid-audio).

Importing this package imports nothing heavy: the node (``nodehost_lfm2audio.node``) runs in
its own Python 3.12 environment that the host builds from the manifest's ``runtime``.
"""
