"""lm: pretraining of decoder-only Transformers in JAX/Flax, from one CPU to a device mesh."""

__version__ = "0.1.0"
