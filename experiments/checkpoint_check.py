"""What does verifying a checkpoint's checksums cost at restore, for GPT-2 124M's full train state?

    python experiments/checkpoint_check.py [--config configs/gpt2_124m.py] [--repeats 3]

Saves one freshly initialized train state (parameters and AdamW moments) of the config's model to a temporary
folder, then restores it in turns: orbax's restore alone, and `Checkpointer.restore` (the same restore, then every
array's checksum compared with the one written at save and the parameters checked to be finite). Prints each
time and the checksum pass alone.
"""

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
import warnings

import jax
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm import optim
from lm.backends import select
from lm.checkpoint import integrity, manager
from lm.parallel import mesh as shd
from lm.train import state as state_lib


def _load(path: str):
    """`get_config()` of a config file."""
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "gpt2_124m.py"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = _load(args.config)
    layout = shd.tensor_layout(1)
    model = select.model(config_lib.model_config(config_lib.build(cfg), vocab_size=cfg.tokenizer.vocab_size))
    tx, *_ = optim.optimizer(cfg.optim, cfg.train.steps)
    state = state_lib.create(model, tx, layout, seed=0)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    abstract = state_lib.abstract(model, tx, layout)
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = manager.Checkpointer(workdir)
        ckpt.save(1, state, {"position": 0}, {"note": "checkpoint_check"})
        ckpt.wait()
        del state
        plain_args = ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract.params),
            opt_state=ocp.args.StandardRestore({"step": abstract.step, "opt_state": abstract.opt_state}),
            data=ocp.args.JsonRestore())
        plain, checked, sums = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = ckpt.manager.restore(1, args=plain_args)
            jax.block_until_ready((out.params, out.opt_state))
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            integrity.fingerprint(out.params)
            integrity.fingerprint(out.opt_state)
            sums.append(time.perf_counter() - t)
            del out
            t = time.perf_counter()
            restored, _ = ckpt.restore(1, abstract)
            jax.block_until_ready(restored)
            checked.append(time.perf_counter() - t)
            del restored
        ckpt.close()
    med = statistics.median
    print(f"{os.path.basename(args.config)}: train state {nbytes / 2**20:,.0f} MiB, {args.repeats} turns "
          f"({jax.devices()[0].device_kind}, {os.cpu_count()} cores)")
    print(f"  orbax restore alone:        median {med(plain):.2f} s  {[round(x, 2) for x in plain]}")
    print(f"  restore with verification:  median {med(checked):.2f} s  {[round(x, 2) for x in checked]}")
    print(f"  checksum pass alone:        median {med(sums):.2f} s  {[round(x, 2) for x in sums]}")
    print(f"  cost of the check: {med(checked) - med(plain):+.2f} s ({med(checked) / med(plain) - 1:+.0%})")


if __name__ == "__main__":
    main()
