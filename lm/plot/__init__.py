"""`python -m lm.plot`: the command (command.py) and the figure of runs' loss curves (figure.py)."""
