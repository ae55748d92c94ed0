"""The typed, frozen ModelConfig built once from the run's ConfigDict, and validation of the run config.

This is the only place where the ml_collections ConfigDict meets typed code: layers see a ModelConfig only.
"""

import dataclasses
import difflib
from typing import Any

import ml_collections

from lm.cli import UserError
from lm.sharding import DEFAULT_RULES

TOKENIZER_TYPES = ("char", "bpe", "unigram")
DTYPES = ("float32", "bfloat16")


POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
ATTENTIONS = ("auto", "xla", "cudnn", "cpu", "reference")
REMATS = ("none", "full", "dots", "dots_no_batch")
NONFINITE_POLICIES = ("stop", "skip")
DECODE_ERRORS = ("strict", "replace")
DATA_FORMATS = ("auto", "text", "jsonl")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only Transformer: GPT-2 style by default, Llama style by options."""

    vocab_size: int  # ids the tokenizer makes; logits cover exactly these
    max_len: int  # context length in tokens
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    num_kv_heads: int = 0  # 0: as many as num_heads; fewer: grouped-query attention; 1: multi-query
    position: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # gelu (tanh approximation, as GPT-2) | swiglu
    use_bias: bool = True
    tie_embeddings: bool = True
    vocab_multiple: int = 1  # embedding/head rows rounded up to a multiple of this (128: aligned GPU matmuls)
    qk_norm: bool = False
    attention: str = "auto"  # auto: cpu on CPUs, cudnn on NVIDIA GPUs in bfloat16, else xla; reference: einsum
    scan_layers: bool = True  # one compiled layer, scanned: compile time does not grow with depth
    scan_unroll: int = 1  # layers per iteration of the scanned loop; 0: all (straight-line code, stacked parameters)
    remat: str = "none"  # none | full | dots | dots_no_batch: what the backward pass recomputes
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"

    # What each logical parameter axis is called in the config, for error messages.
    AXIS_NAMES = {"embed": "model.embed_dim", "heads": "model.num_heads", "mlp": "model.mlp_dim",
                  "kv_heads": "model.num_kv_heads",
                  "vocab": "vocabulary size", "head_dim": "head dim (embed_dim / num_heads)",
                  "position": "model.max_len"}

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding table and columns of the head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)


def defaults() -> ml_collections.ConfigDict:
    """Every key a run config has, with its default; config files start here and override."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # init_from: 'WORKDIR' or 'WORKDIR:STEP' of another run (or an imported GPT-2) whose parameters and
    # tokenizer a new run starts from (not its optimizer state or step), e.g. to fine-tune; '' = from scratch.
    c.init_from = ""
    # path: a text or JSONL file, or a folder of .txt and .jsonl files ('' = the bundled tiny Shakespeare);
    # format: auto (by extension), text or jsonl. Text is cut into documents at `separator`; a JSONL row is a
    # document: its text_key field, after its prompt_key field if set (the loss skips the prompt's tokens).
    # cache_dir holds the built TFDS datasets ('' = ~/.cache/lm/tfds).
    # tfds_name: a TFDS catalog dataset instead (e.g. 'lm1b'), prepared as array_record in tfds_data_dir
    # ('' = ~/tensorflow_datasets; downloaded and prepared first if tfds_download), its text in the text_key
    # feature; validation reads tfds_validation_split ('' = 'validation', else 'test').
    # shards: independent pipelines the global batch is drawn from, split among the processes (0 = one per
    # process); runs with the same shards see the same batches whatever the process count. ahead: batches a
    # background thread prepares while the train step runs (0: prepared between steps).
    # decode_errors: what bytes that are not UTF-8 do: 'strict' stops with the file and offset, 'replace' reads
    # them as U+FFFD (and says how many).
    c.data = dict(path="", format="auto", text_key="text", prompt_key="", separator="\n\n", validation_fraction=0.1,
                  cache_dir="", shards=0, decode_errors="strict", tfds_name="", tfds_data_dir="",
                  tfds_validation_split="", tfds_download=False, ahead=2)
    # type: char, bpe or unigram, trained on the first sample_chars characters of the (shuffled) training
    # documents (0: all); or path: an existing SentencePiece .model file, used as it is.
    c.tokenizer = dict(type="char", vocab_size=256, sample_chars=20_000_000, path="")
    # mlp_dim 0 means 4 * embed_dim; max_len is the context length in tokens.
    # See ModelConfig for what each key means.
    c.model = dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=0, max_len=64, num_kv_heads=0,
                   position="learned", rope_theta=10000.0, norm="layernorm", norm_eps=1e-5, mlp="gelu",
                   use_bias=True, tie_embeddings=True, vocab_multiple=1, qk_norm=False, attention="auto",
                   scan_layers=True, scan_unroll=1, remat="none", dtype="float32", param_dtype="float32")
    # eval_batches 0 evaluates the whole validation split; microbatches > 1 accumulates gradients over that
    # many slices of each batch; z_loss weighs log(Z)^2 of the softmax normalizer.
    # nonfinite: what a step with a NaN or infinite loss or gradient does (lm/nonfinite.py): 'stop' the run, or
    # 'skip' its update (stopping after max_skips in a row); nan_steps: steps made NaN on purpose, to try that.
    c.train = dict(batch_size=12, steps=2000, log_every=100, eval_every=500, eval_batches=0, microbatches=1,
                   z_loss=0.0, nonfinite="stop", max_skips=10, nan_steps=())
    c.optim = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, b1=0.9, b2=0.99, weight_decay=0.1, grad_clip=1.0)
    c.checkpoint = dict(every=250, keep=3)
    # Axis sizes (one may be -1: the rest of the devices) and the logical-axis rules (lm/sharding.py).
    # cpu_devices: JAX devices to split a CPU host into (0: one per core); small models train faster so.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, rules=DEFAULT_RULES, cpu_devices=1)
    return ml_collections.ConfigDict(c)


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """The ModelConfig of a validated run config, with the vocabulary size of its tokenizer."""
    m = cfg.model
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size", "mlp_dim"}
    return ModelConfig(vocab_size=vocab_size, mlp_dim=m.mlp_dim or 4 * m.embed_dim, **{k: m[k] for k in fields})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _positive(cfg: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value[part]
        _check(value > 0, f"config.{key} must be positive, got {value!r}")


def _check_keys(cfg: ml_collections.ConfigDict, known: ml_collections.ConfigDict, prefix: str = "config") -> None:
    for key in cfg.keys():
        if key not in known:
            close = difflib.get_close_matches(key, list(known.keys()), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key {prefix}.{key}{hint}; lm.config.defaults() lists the valid keys")
        if isinstance(known[key], ml_collections.ConfigDict):
            _check_keys(cfg[key], known[key], f"{prefix}.{key}")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Rejects impossible run configs with one line naming the key and the fix."""
    _check_keys(cfg, defaults())
    _positive(
        cfg,
        "model.num_layers", "model.num_heads", "model.embed_dim", "model.max_len",
        "train.batch_size", "train.steps", "train.log_every", "train.eval_every",
        "optim.lr", "checkpoint.every", "checkpoint.keep", "tokenizer.vocab_size",
    )
    m, o = cfg.model, cfg.optim
    _check(m.vocab_multiple >= 1, f"config.model.vocab_multiple must be >= 1 (1: no padding), got {m.vocab_multiple}")
    _check(m.scan_unroll >= 0, f"config.model.scan_unroll must be >= 0 (0: all layers), got {m.scan_unroll}")
    _check(m.mlp_dim >= 0, f"config.model.mlp_dim must be >= 0 (0 means 4 * embed_dim), got {m.mlp_dim}")
    _check(
        m.embed_dim % m.num_heads == 0,
        f"config.model.embed_dim={m.embed_dim} is not divisible by config.model.num_heads={m.num_heads}",
    )
    for key, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("position", POSITIONS), ("norm", NORMS),
                         ("mlp", MLPS), ("attention", ATTENTIONS), ("remat", REMATS)):
        _check(m[key] in allowed, f"config.model.{key} must be one of {allowed}, got {m[key]!r}")
    kv = m.num_kv_heads or m.num_heads
    _check(0 < kv <= m.num_heads and m.num_heads % kv == 0,
           f"config.model.num_kv_heads={m.num_kv_heads} must divide num_heads={m.num_heads} (0: as many)")
    _check(m.position != "rope" or (m.embed_dim // m.num_heads) % 2 == 0,
           "RoPE needs an even head dim (config.model.embed_dim / num_heads)")
    b, mb = cfg.train.batch_size, cfg.train.microbatches
    _check(mb >= 1 and b % mb == 0, f"config.train.microbatches={mb} must divide config.train.batch_size={b}")
    _check(cfg.train.z_loss >= 0, f"config.train.z_loss must be >= 0, got {cfg.train.z_loss}")
    _check(cfg.train.nonfinite in NONFINITE_POLICIES,
           f"config.train.nonfinite must be one of {NONFINITE_POLICIES}, got {cfg.train.nonfinite!r}")
    _check(cfg.train.max_skips >= 1, f"config.train.max_skips must be >= 1, got {cfg.train.max_skips}")
    _check(all(isinstance(s, int) and s > 0 for s in cfg.train.nan_steps),
           f"config.train.nan_steps must be a tuple of positive steps, e.g. '(5, 6)', got {cfg.train.nan_steps!r}")
    _check(cfg.tokenizer.sample_chars >= 0,
           f"config.tokenizer.sample_chars must be >= 0 (0: all), got {cfg.tokenizer.sample_chars}")
    _check(
        cfg.tokenizer.type in TOKENIZER_TYPES,
        f"config.tokenizer.type must be one of {TOKENIZER_TYPES}, got {cfg.tokenizer.type!r}",
    )
    _check(0 <= o.min_lr <= o.lr, f"config.optim.min_lr must be in [0, lr={o.lr}], got {o.min_lr}")
    _check(o.warmup_steps >= 0, f"config.optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    _check(0 < o.b1 < 1 and 0 < o.b2 < 1, f"config.optim.b1 and b2 must be in (0, 1), got {o.b1}, {o.b2}")
    _check(o.weight_decay >= 0, f"config.optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.grad_clip >= 0, f"config.optim.grad_clip must be >= 0 (0 turns it off), got {o.grad_clip}")
    _check(cfg.mesh.cpu_devices >= 0,
           f"config.mesh.cpu_devices must be >= 0 (0: one per core), got {cfg.mesh.cpu_devices}")
    _check(cfg.data.ahead >= 0, f"config.data.ahead must be >= 0 (0: no background thread), got {cfg.data.ahead}")
    _check(cfg.data.shards >= 0, f"config.data.shards must be >= 0 (0: one per process), got {cfg.data.shards}")
    _check(cfg.data.format in DATA_FORMATS,
           f"config.data.format must be one of {DATA_FORMATS}, got {cfg.data.format!r}")
    _check(bool(cfg.data.text_key), "config.data.text_key must name the JSONL field that holds the text")
    _check(not (cfg.data.path and cfg.data.tfds_name),
           "set config.data.path (local files) or config.data.tfds_name (a TFDS dataset), not both")
    _check(cfg.data.decode_errors in DECODE_ERRORS,
           f"config.data.decode_errors must be one of {DECODE_ERRORS}, got {cfg.data.decode_errors!r}")
    f = cfg.data.validation_fraction
    _check(0 < f < 1, f"config.data.validation_fraction must be in (0, 1), got {f}")
