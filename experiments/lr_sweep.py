"""Which peak learning rate trains the bundled character-level model best in 2,000 steps?

    python -m lm.sweep experiments/lr_sweep.py          # 5 runs on 2 CPU cores
"""

BASE = "configs/shakespeare_char.py"
FIXED = {"train.steps": 2000, "train.eval_every": 250}


def sweep(add):
    for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        add({"optim.lr": lr})
