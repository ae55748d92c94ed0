"""Test setup: 8 fake CPU devices (set before jax is imported), a shared dataset cache, a trained tiny run,
helpers that run the command-line tools as a user does, and a workdir's validation loss computed by hand."""

import atexit
import compileall
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

# The suite compiles hundreds of small programs and runs each for a few steps: XLA's CPU backend compiles them
# faster without its LLVM optimizations and its fusion emitters, in one thread (the workers share the cores), and
# every side of a comparison (in-process, subprocess) runs with the same flags.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                  "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS} "
                           "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests and the commands they run share compiled programs through JAX's persistent cache, in a folder of this
# session (many compile the same tiny model's steps): the suite takes about a quarter less time.
_COMPILED = tempfile.mkdtemp(prefix="lm-tests-compiled-")
atexit.register(shutil.rmtree, _COMPILED, True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_COMPILED, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The commands the tests start read lm's modules as bytecode compiled once here, also where PYTHONDONTWRITEBYTECODE
# is set (as it may be on a CI machine): otherwise each of the suite's hundreds of commands compiles them afresh.
if sys.dont_write_bytecode:
    compileall.compile_dir(os.path.join(ROOT, "lm"), quiet=1)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY = os.path.join(ROOT, "configs", "tiny.py")
USER_ENV = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # the CPU devices a user has, not the tests' eight


def run_module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m ARGS` as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=USER_ENV, capture_output=True, text=True,
                          timeout=timeout)


def train_command(workdir, cache_dir, *overrides) -> list[str]:
    """`python -m lm.train` on the tiny config, with the shared dataset cache and evaluation at the end only."""
    return [sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(workdir),
            "--config.train.eval_every=1000", f"--config.data.cache_dir={cache_dir}", *overrides]


def signal_at(signal_name: str, moment: str, workdir, cache_dir, *overrides) -> list[str]:
    """`train_command` run by tests/signal_at.py: the process sends itself SIGsignal_name at `moment` (see there)."""
    return [sys.executable, os.path.join(ROOT, "tests", "signal_at.py"), signal_name, moment,
            *train_command(workdir, cache_dir, *overrides)[2:]]


def start_training(workdir, cache_dir, ready, *overrides, poll=0.1, wrapper=()):
    """`train_command` in a subprocess, returned once `ready(its stdout so far)`: (process, command, stdout file).
    `wrapper`: (signal name, moment) for tests/signal_at.py to run it."""
    cmd = signal_at(*wrapper, workdir, cache_dir, *overrides) if wrapper else train_command(workdir, cache_dir,
                                                                                             *overrides)
    out = f"{workdir}.{time.time_ns()}.out"
    with open(out, "w") as stdout:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=USER_ENV, stdout=stdout, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ready(open(out).read()):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"training ended before the point it was waited for: {proc.communicate()[1]}")
        time.sleep(poll)
    return proc, cmd, out


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command failed with exit status 2 and one line on stderr that contains every fragment."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def load_config(path: str = TINY):
    """`get_config()` of a config file."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_config(cache_dir):
    """The tiny config with the shared dataset cache; tests copy it before changing it."""
    cfg = load_config()
    cfg.data.cache_dir = cache_dir
    return cfg


def contents(folder: str) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def unchanged(workdir: str):
    """Yields `workdir` to the tests that share it, then fails if any of them changed a file in it: such a test
    must copy the workdir first."""
    before = contents(workdir)
    yield
    assert contents(workdir) == before, f"a test wrote into the shared workdir {workdir}; copy it first"


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory):
    """A workdir in which the tiny config trained to the end: (workdir, final validation metrics). Tests read it
    and never write to it (copy it to change it; checked when the session ends)."""
    from lm.train.loop import train

    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    final = train(tiny_config, workdir)
    for _ in unchanged(workdir):
        yield workdir, final


def char_tokenizer(cache_dir: str, **data):
    """The character tokenizer a fresh run of the default data settings (and `data`) takes, as lm.train makes it."""
    from lm.data import corpus
    from lm.data.config import DataConfig
    from lm.tokenizer.config import TokenizerConfig

    d = DataConfig(cache_dir=str(cache_dir), **data)
    return corpus.fresh_tokenizer(d, TokenizerConfig(type="char", sample_chars=0))


def data_config(cache_dir, **overrides):
    """config.data with the defaults, the dataset cache `cache_dir` and `overrides`."""
    from lm.data.config import DataConfig

    return DataConfig(cache_dir=str(cache_dir), **overrides)


def prepared_documents(d, split: str, tok) -> list[str]:
    """The text of every document of a split of the data `d` prepared with `tok`, decoded from its tokens (BOS and
    EOS around each)."""
    from lm.data import corpus

    out = []
    for piece in corpus.open_splits(corpus.resolve(d)[0], tok, d)[split]:
        tokens, table = piece.tokens(), piece.docs()
        ends = [*table[1:, 0], len(tokens)]
        out += [tok.decode(tokens[a + 1:b - 1]) for (a, _), b in zip(table, ends, strict=True)]
    return out


def wide_params(cfg, seed: int):
    """Parameters of a model of `cfg` drawn wide (std 0.3; norm scales 1 + that): its greedy text varies from token
    to token and hangs on the whole context, as a default-initialized or briefly trained model's does not (it
    repeats one token)."""
    import flax.linen as nn

    from lm.model.transformer import TransformerLM
    from lm.parallel.placement import boxed_params

    shapes = jax.eval_shape(lambda: nn.unbox(boxed_params(TransformerLM(cfg), 0)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (path[-1].key == "scale") + rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="session")
def wide_run(cache_dir, tmp_path_factory) -> str:
    """A workdir of wide-drawn weights (see `wide_params`) with a character tokenizer of the bundled corpus:
    checkpoints 1 and 2 (other weights), for the sampling command; read only (checked when the session ends)."""
    from lm.checkpoint import manager
    from lm.model.config import ModelConfig
    tok = char_tokenizer(cache_dir)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_len=32, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
                      num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
                      tie_embeddings=False)  # Llama style: wide-drawn, its greedy text varies most
    workdir = str(tmp_path_factory.mktemp("wide_run"))
    ckpt = manager.Checkpointer(workdir)
    for step, seed in ((1, 1), (2, 3)):
        ckpt.save_params(step, wide_params(cfg, seed), manager.make_meta(cfg, tok, {"made_by": "wide_run"}))
    ckpt.wait()
    ckpt.close()
    for _ in unchanged(workdir):
        yield workdir


def final_state(workdir, step: int):
    """(train state on the host, data state) of a workdir's checkpoint `step`: parameters, optimizer moments, step."""

    from lm import optim
    from lm.backends import select
    from lm.checkpoint import reader
    from lm.parallel import mesh as shd
    from lm.parallel.config import MeshConfig
    from lm.train import state as state_lib

    ckpt, _, model_config, _, run_config = reader.open_run(str(workdir), step)
    tx, *_ = optim.optimizer(optim.OptimConfig(**run_config["optim"]), run_config["train"]["steps"])
    layout = shd.make_layout(MeshConfig())
    state, data_state = ckpt.restore(step, state_lib.abstract(select.model(model_config), tx, layout))
    return jax.device_get(state), data_state


def score_by_hand(workdir: str, max_batches: int = 0, cache_dir: str | None = None) -> tuple[float, int, int]:
    """(summed loss in nats, targets counted, UTF-8 bytes they stand for) of a workdir's latest checkpoint on its
    validation rows (the first `max_batches` batches; 0: all; the dataset built under `cache_dir` if given, else
    where the run's config says), computed without lm's objective or byte counts:
    a log-softmax of the model's logits at every target that continues its document, and the bytes of the text
    those targets decode to, run by run, each EOS standing for the separator."""
    from lm.checkpoint import reader
    from lm.config import RunConfig
    from lm.data import corpus
    from lm.data.batches import eval_batches
    from lm.model.transformer import TransformerLM
    from lm.parallel import mesh as shd
    from lm.parallel import placement

    ckpt, step, c, tok, run = reader.open_run(workdir)
    model = TransformerLM(c)
    layout = shd.tensor_layout(1)
    params = ckpt.params(step, placement.abstract_params(model, layout))
    forward = jax.jit(lambda t, p, s: model.apply({"params": params}, t, p, s))
    separator = len(run["data"]["separator"].encode("utf-8"))
    nll = count = nbytes = 0
    data = RunConfig.from_dict(run).data
    data = dataclasses.replace(data, cache_dir=cache_dir if cache_dir is not None else data.cache_dir)
    rows = eval_batches(corpus.eval_splits(data, tok, c.max_len + 1), run["train"]["batch_size"],
                        max_batches=max_batches)
    for b in rows:
        tokens, segments = b["tokens"], b["segment_ids"]
        logits = np.asarray(forward(tokens[:, :-1], b["positions"][:, :-1], segments[:, :-1]), np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
            logits.max(-1, keepdims=True)
        counted = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
        targets = tokens[:, 1:]
        nll -= np.take_along_axis(log_probs, targets[..., None], -1)[..., 0][counted].sum()
        count += int(counted.sum())
        for row, keep in zip(targets, counted, strict=True):
            run_ids = []
            for t in list(row[keep]) + [tok.eos_id]:  # each run of text ends at an EOS (or the row's end)
                if t == tok.eos_id:
                    nbytes += len(tok.decode(run_ids).encode("utf-8"))
                    run_ids = []
                else:
                    run_ids.append(int(t))
            nbytes += separator * int((row[keep] == tok.eos_id).sum())
    return nll, count, nbytes


class ReservedPorts:
    """`count` TCP ports that no other test takes and the kernel hands no one, held until `release()` (or the end
    of a `with` block, which gives the numbers): ports below the kernel's ephemeral range (port-0 binds and
    outgoing connections draw from it), each reserved by an exclusive lock on PORT_LOCKS/PORT.lock that this
    object holds, and none that a process has bound."""

    PORT_LOCKS = os.path.join(tempfile.gettempdir(), "lm-test-ports")

    def __init__(self, count: int = 1):
        import fcntl

        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
        os.makedirs(self.PORT_LOCKS, exist_ok=True)
        self.numbers, self._locks = [], []
        for port in range(ephemeral - 1, 1024, -1):
            if len(self.numbers) == count:
                break
            lock = open(os.path.join(self.PORT_LOCKS, f"{port}.lock"), "a")  # never inherited by children
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another test holds it
                lock.close()
                continue
            if _bound(port):
                lock.close()
                continue
            self.numbers.append(port)
            self._locks.append(lock)
        if len(self.numbers) < count:
            self.release()
            raise RuntimeError(f"no {count} free ports below the ephemeral range ({ephemeral} and up)")

    def release(self) -> None:
        for lock in self._locks:
            lock.close()  # and its lock with it
        self._locks = []

    def __enter__(self) -> list[int]:
        return self.numbers

    def __exit__(self, *exc) -> None:
        self.release()


def _bound(port: int) -> bool:
    """Whether a process has bound TCP `port` (IPv4 or IPv6, any address)."""
    import errno
    import socket

    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((address, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return True
    return False
