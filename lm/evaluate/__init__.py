"""`python -m lm.evaluate`: a checkpoint's loss, perplexity and bits per byte on a split (command.py), computed
by scoring.py, which training's evaluations use too."""
