"""`python -m lm.train`: the loop (loop.py) and what it hands off to: start-up for a fresh run, a resume or
`init_from` (startup.py), the pure step (step.py), the state (state.py), metrics (metrics.py), checkpoints
and evaluation (duties.py), the non-finite policy (nonfinite.py), preemption (preemption.py), the workdir's
lock (workdir.py) and faults injected on purpose (faults.py)."""
