"""Command-line plumbing of every `python -m lm.<command>`: process set-up (process.py, before JAX is imported),
flag parsing (flags.py) and the one-line ends of a command (runner.py)."""
