"""`lm`'s train step against the PyTorch peer, interleaved in one process: the same GPT-2 shapes trained by
`lm` and by Hugging Face's GPT2LMHeadModel + AdamW in eager PyTorch (nanoGPT's model and loop), step after step,
so that a noisy shared machine slows both alike.

    python experiments/torch_peer.py       # needs torch and transformers beside lm (not dependencies of lm)

Prints tokens/s of each and their ratio per round and over all rounds (medians of per-step times).
"""

import time

import jax
import numpy as np
from absl import app

from lm import config as config_lib
from lm import optim
from lm import sharding as shd
from lm import state as state_lib
from lm.bench import synthetic_batch
from lm.model import TransformerLM
from lm.train import make_train_step

SHAPES = {  # name: (config file, overrides, lm steps and torch steps per round, rounds)
    "shakespeare_char recipe (4L/4H/128, ctx 64, batch 12)": ("configs/shakespeare_char.py", {}, 20, 6),
    "gpt2_124m, float32, batch 4 x 256": (
        "configs/gpt2_124m.py", {"model.dtype": "float32", "train.batch_size": 4, "model.max_len": 256}, 1, 3),
}


def _load(path: str, overrides: dict) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return cfg


def lm_step(cfg):
    """A closure running one `lm` train step of `cfg` on synthetic tokens."""
    count = shd.cpu_device_count(cfg.mesh, cfg.train.batch_size, jax.device_count())
    layout = shd.make_layout(cfg.mesh, jax.devices()[:count])  # the devices lm.train would split the host into
    c = config_lib.model_config(cfg, 68 if cfg.tokenizer.type == "char" else cfg.tokenizer.vocab_size)
    model = TransformerLM(c)
    tx, lr = optim.optimizer(cfg.optim, cfg.train.steps)
    holder = [state_lib.create(model, tx, layout, 0)]
    batch = synthetic_batch(layout, cfg.train.batch_size, c.max_len, c.vocab_size)
    step = jax.jit(make_train_step(model, tx, lr), donate_argnums=0)

    def run() -> None:
        with layout.scope():
            holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics)

    return run, c


def torch_step(c: config_lib.ModelConfig, batch: int):
    """A closure running one eager PyTorch train step of the same shape."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_len, n_embd=c.embed_dim,
                                     n_layer=c.num_layers, n_head=c.num_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    x = torch.randint(0, c.vocab_size, (batch, c.max_len))

    def run() -> None:
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def _times(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv) -> None:
    del argv
    import torch

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}")
    for name, (path, overrides, steps, rounds) in SHAPES.items():
        cfg = _load(path, overrides)
        run_lm, c = lm_step(cfg)
        run_torch = torch_step(c, cfg.train.batch_size)
        tokens = cfg.train.batch_size * c.max_len
        run_lm(), run_torch()  # compile and warm up
        all_lm, all_torch = [], []
        for r in range(rounds):
            t_lm, t_torch = _times(run_lm, steps), _times(run_torch, steps)
            all_lm += t_lm
            all_torch += t_torch
            print(f"  {name} round {r + 1}: lm {tokens / np.median(t_lm):,.0f} tokens/s, PyTorch "
                  f"{tokens / np.median(t_torch):,.0f}, ratio {np.median(t_torch) / np.median(t_lm):.2f}")
        print(f"{name}: lm {tokens / np.median(all_lm):,.0f} tokens/s, PyTorch "
              f"eager {tokens / np.median(all_torch):,.0f}: ratio {np.median(all_torch) / np.median(all_lm):.2f}")


if __name__ == "__main__":
    shd.split_cpu({"data": -1, "fsdp": 1, "tensor": 1, "cpu_devices": 0}, 12)  # one device per core
    app.run(main)
