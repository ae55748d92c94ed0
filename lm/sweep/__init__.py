"""`python -m lm.sweep`: the command (command.py), experiments, their runs and results (experiment.py), and the
statistics across seeds (seeds.py)."""
