"""The model, the same on every backend: its config (config.py), building blocks (layers.py), attention
(attention.py), the decoder (transformer.py), the causal-LM objective (objective.py), the operations a backend may
swap (ops.py) and how layers are named in a parameter tree (tree.py). Logical axis names: lm/axes.py."""
