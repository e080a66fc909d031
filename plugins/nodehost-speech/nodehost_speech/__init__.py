"""Speech node types for nodehost.

Deliberately empty: the host imports ``nodehost_speech.plugin`` during discovery, and
importing this package must not pull in onnxruntime, CTranslate2 or numpy.
"""
