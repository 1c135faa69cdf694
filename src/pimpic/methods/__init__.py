"""Pretext tasks: each wires the encoder, its heads, its sampler and its loss."""
