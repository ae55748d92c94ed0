"""`python -m lm.plot WORKDIR... [--x steps|tokens|flops] [--out loss.png]`: the loss curves of runs in one PNG
(figure.py)."""

from absl import flags

from lm.plot import figure

flags.DEFINE_enum("x", "steps", list(figure.AXES), "The horizontal axis: steps, training tokens or training FLOPs.")
flags.DEFINE_string("out", "loss.png", "The PNG to write.")
