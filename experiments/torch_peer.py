"""`lm`'s train step against the PyTorch peer: the same GPT-2 shapes trained by `lm` and by Hugging Face's
GPT2LMHeadModel + AdamW in eager PyTorch (nanoGPT's model and loop), in turns, so that a noisy shared machine
slows both alike.

    python experiments/torch_peer.py                     # needs torch and transformers beside lm (not lm's deps)
    python experiments/torch_peer.py --torch_env=lm      # PyTorch with the allocator setting lm's commands use
    python experiments/torch_peer.py --only=gpt2_124m    # one shape

Each framework runs in a process of its own (in one process, each slows the other: lm's GPT-2 124M step ran 15%
slower beside PyTorch's), started as its users start it: lm's with the huge-page tunable its commands set
(lm/cli/huge_pages.py), PyTorch's with the environment as it is, or with the same tunable (`--torch_env=lm`).
The bfloat16 shape runs lm's gpt2_124m as configured (bfloat16 compute, float32 parameters and optimizer state)
against PyTorch under autocast to bfloat16, its mixed precision. The driver asks each for a few steps in turn and
prints tokens/s of each and their ratio per round and over all rounds (medians of per-step times).

Each turn starts with `--warmup` untimed steps (default 1) of the framework whose turn it is: a training run's steps
follow one another, but here each framework waits idle through the other's turn, and this project's VM hands
memory that a process frees back to its host, which makes touching it again slow. XLA maps a step's temporary
buffer afresh at every step (2.7 GB for GPT-2 124M at batch 4 x 256), so lm's first step after a wait paid
~3 s more than the next ones; PyTorch keeps its allocations and did not. `--warmup=0` times every step.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from lm import config as config_lib
from lm import optim
from lm.backends import cpu_devices, select
from lm.bench.step import synthetic_batch
from lm.cli import huge_pages
from lm.parallel import mesh as shd
from lm.train import state as state_lib
from lm.train.step import make_train_step

SHAPES = {  # name: (config file, overrides, lm steps and torch steps per round, rounds)
    "shakespeare_char recipe (4L/4H/128, ctx 64, batch 12)": ("configs/shakespeare_char.py", {}, 20, 6),
    "gpt2_124m, float32, batch 4 x 256": (
        "configs/gpt2_124m.py", {"model.dtype": "float32", "train.batch_size": 4, "model.max_len": 256}, 3, 3),
    "gpt2_124m, bfloat16 compute, batch 4 x 256": (
        "configs/gpt2_124m.py", {"train.batch_size": 4, "model.max_len": 256}, 3, 3),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path: str, overrides: dict) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return cfg


def _vocab(cfg) -> int:
    return 68 if cfg.tokenizer.type == "char" else cfg.tokenizer.vocab_size


def lm_step(cfg):
    """A closure running one `lm` train step of `cfg` (a RunConfig) on synthetic tokens."""
    count = cpu_devices.cpu_device_count(cfg.mesh, cfg.train.batch_size, jax.device_count())
    layout = shd.make_layout(cfg.mesh, jax.devices()[:count])  # the devices lm.train would split the host into
    c = config_lib.model_config(cfg, _vocab(cfg))
    model = select.model(c)
    tx, lr, *_ = optim.optimizer(cfg.optim, cfg.train.steps)
    holder = [state_lib.create(model, tx, layout, 0)]
    batch = synthetic_batch(layout, cfg.train.batch_size, c.max_len, c.vocab_size)
    step = jax.jit(make_train_step(model, tx, lr, sums=select.gradient_sums(layout, holder[0].params)),
                   donate_argnums=0)

    def run() -> None:
        with layout.scope():
            holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics)

    return run, c


def torch_step(c: config_lib.ModelConfig, batch: int):
    """A closure running one eager PyTorch train step of the same shape; with bfloat16 compute in `c`, under
    autocast to bfloat16 (PyTorch's mixed precision: float32 parameters, bfloat16 matmuls)."""
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.dtype == "bfloat16"):
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def _serve(framework: str, shape: str) -> None:
    """Worker: builds the step of `framework` for `shape`, then for each line N on stdin runs N steps and writes
    their times (JSON) on stdout."""
    path, overrides, _, _ = SHAPES[shape]
    cfg = config_lib.build(_load(path, overrides))
    if framework == "lm":  # the devices lm.train makes of this host for cfg
        cpu_devices.split_cpu(cpu_devices.cpu_device_count(cfg.mesh, cfg.train.batch_size, cpu_devices.cores()))
        run, _ = lm_step(cfg)
    else:
        import torch

        c = config_lib.model_config(cfg, _vocab(cfg))
        run = torch_step(c, cfg.train.batch_size)
        print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)", file=sys.stderr)
    run()  # compile and warm up
    print("@ready", flush=True)  # protocol lines start with @: libraries may print too
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        print("@" + json.dumps(times), flush=True)


def _worker(framework: str, shape: str, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, f"--worker={framework}", f"--shape={shape}"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert _reply(proc) == "ready", f"the {framework} worker did not start"
    return proc


def _reply(proc: subprocess.Popen) -> str:
    """The worker's next protocol line, without its @ (other lines it prints are passed on)."""
    while line := proc.stdout.readline():
        if line.startswith("@"):
            return line[1:].strip()
        print(line, end="", file=sys.stderr)
    raise RuntimeError("the worker ended")


def _steps(proc: subprocess.Popen, n: int) -> list[float]:
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    return json.loads(_reply(proc))


def main(argv) -> None:
    del argv
    if flags.FLAGS.worker:
        return _serve(flags.FLAGS.worker, flags.FLAGS.shape)
    user = dict(os.environ)
    lm_env = huge_pages.environment(user)
    torch_env = lm_env if flags.FLAGS.torch_env == "lm" else user
    print(f"jax {jax.__version__}; lm's GLIBC_TUNABLES={lm_env.get('GLIBC_TUNABLES', '')!r}, "
          f"PyTorch's {torch_env.get('GLIBC_TUNABLES', '')!r}")
    for name, (_, _, steps, rounds) in SHAPES.items():
        if flags.FLAGS.only not in name:
            continue
        rounds = flags.FLAGS.rounds or rounds
        path, overrides = SHAPES[name][:2]
        cfg = _load(path, overrides)
        tokens = cfg.train.batch_size * cfg.model.max_len
        lm_proc, torch_proc = _worker("lm", name, lm_env), _worker("torch", name, torch_env)
        all_lm, all_torch = [], []
        warm = flags.FLAGS.warmup
        for r in range(rounds):
            t_lm, t_torch = _steps(lm_proc, warm + steps)[warm:], _steps(torch_proc, warm + steps)[warm:]
            all_lm += t_lm
            all_torch += t_torch
            print(f"  {name} round {r + 1}: lm {tokens / np.median(t_lm):,.0f} tokens/s, PyTorch "
                  f"{tokens / np.median(t_torch):,.0f}, ratio {np.median(t_torch) / np.median(t_lm):.2f}")
        for proc in (lm_proc, torch_proc):
            proc.stdin.close()
            proc.wait()
        print(f"{name}: lm {tokens / np.median(all_lm):,.0f} tokens/s, PyTorch "
              f"eager {tokens / np.median(all_torch):,.0f}: ratio {np.median(all_torch) / np.median(all_lm):.2f}")


if __name__ == "__main__":
    flags.DEFINE_string("worker", "", "Internal: run as the worker of this framework (lm or torch).")
    flags.DEFINE_string("shape", "", "Internal: the worker's shape (a key of SHAPES).")
    flags.DEFINE_string("only", "", "Only the shapes whose name contains this, e.g. gpt2_124m.")
    flags.DEFINE_enum("torch_env", "user", ["user", "lm"], "PyTorch's environment: as it is, or with lm's tunable.")
    flags.DEFINE_integer("rounds", 0, "Turns of each framework per shape (0: the shape's own number).")
    flags.DEFINE_integer("warmup", 1, "Untimed steps at the start of each framework's turn (see the docstring).")
    app.run(main)
