"""Pretext tasks, one file per task: each wires the encoder, its heads, its sampler and its
loss, declares its own options (a frozen dataclass), and registers itself
(:func:`pimpic.registry.register`). A new file here is a new method:
:func:`pimpic.registry.discover` imports every module whose name does not start with ``_``."""
