"""lm: pretraining of decoder-only Transformers in JAX/Flax, from one CPU to a device mesh.

Importing the package does nothing but define it: each `python -m lm.<command>` sets up its own process.
"""

__version__ = "0.1.0"
