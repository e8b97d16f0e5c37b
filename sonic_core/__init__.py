"""Sonic inference engine: pure torch models and sampler math (no Ray, no network, no storage)."""
