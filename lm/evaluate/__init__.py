"""`python -m lm.evaluate` (command.py): a checkpoint's loss, perplexity and bits per byte on a split (scoring.py,
which training's evaluations use too); downstream tasks from JSONL files (tasks.py, scored by loglikelihood.py);
lm-evaluation-harness tasks through its model interface (harness.py)."""
