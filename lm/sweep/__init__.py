"""`python -m lm.sweep`: the command (command.py) and experiments, their runs and results (experiment.py)."""
