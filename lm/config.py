"""The run config: every key with its default and meaning (`defaults()`), its validation, and the typed, frozen
ModelConfig built from it once.

This is the only place where the ml_collections ConfigDict meets typed code: the model sees a ModelConfig only.
Model keys are defined once, as ModelConfig's fields; `defaults()` takes them from there.
"""

import dataclasses
import difflib
from typing import Any

import ml_collections

from lm import optim
from lm.axes import DEFAULT_RULES
from lm.errors import UserError

TOKENIZER_TYPES = ("char", "bpe", "unigram")
DTYPES = ("float32", "bfloat16")
POSITIONS = ("learned", "rope")
ROPE_SCALINGS = ("none", "llama3")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
ATTENTIONS = ("auto", "xla", "cudnn", "cpu", "reference")
MATMULS = ("auto", "xla", "cpu")
REMATS = ("none", "full", "dots", "dots_no_batch")
NONFINITE_POLICIES = ("stop", "skip")
DECODE_ERRORS = ("strict", "replace")
DATA_FORMATS = ("auto", "text", "jsonl", "jsonl.gz", "parquet")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only Transformer: GPT-2 style by default, Llama style by options."""

    vocab_size: int = 0  # ids the tokenizer makes (set from the run's tokenizer); logits cover exactly these
    max_len: int = 64  # context length in tokens
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads
    embed_dim: int = 128  # model width
    mlp_dim: int = 0  # MLP width; 0: 4 * embed_dim
    num_kv_heads: int = 0  # 0: as many as num_heads; fewer: grouped-query attention; 1: multi-query
    head_dim: int = 0  # width of each head; 0: embed_dim // num_heads (Qwen3 sets it apart from the width)
    position: str = "learned"  # learned | rope
    rope_theta: float = 10000.0  # RoPE's base wavelength
    rope_scaling: str = "none"  # none | llama3: Llama 3.1's stretch of the long wavelengths (the rope_* keys below)
    rope_factor: float = 8.0  # llama3: how much the longest wavelengths are stretched
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above rope_original_max_len / this are stretched fully
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below rope_original_max_len / this are kept
    rope_original_max_len: int = 8192  # llama3: the context the model was first trained at
    sliding_window: int = 0  # each query sees its own and the window - 1 keys before it (Mistral); 0: all before
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5  # added to the variance in every norm
    mlp: str = "gelu"  # gelu (tanh approximation, as GPT-2) | swiglu
    use_bias: bool = True  # biases in projections and LayerNorms (GPT-2); none (Llama)
    qkv_bias: bool = False  # biases on the query, key and value projections even without use_bias (Qwen2)
    tie_embeddings: bool = True  # the output head is the token embedding table
    vocab_multiple: int = 1  # embedding/head rows rounded up to a multiple of this (128: aligned GPU matmuls)
    qk_norm: bool = False  # RMSNorm on queries and keys per head
    attention: str = "auto"  # auto (CPU: cpu; NVIDIA GPU in bfloat16: cudnn; else xla) | xla | cudnn | cpu | reference
    matmul: str = "auto"  # projections: auto (CPU: cpu; else xla) | xla | cpu (lm/backends/)
    scan_layers: bool = True  # one compiled layer, scanned: compile time does not grow with depth
    scan_unroll: int = 1  # layers per iteration of the scanned loop; 0: all (straight-line code, stacked parameters)
    remat: str = "none"  # none | full | dots | dots_no_batch: what the backward pass recomputes
    dtype: str = "float32"  # activations and products (float32 | bfloat16)
    param_dtype: str = "float32"  # parameters and optimizer state

    def __post_init__(self) -> None:
        if not self.mlp_dim:
            object.__setattr__(self, "mlp_dim", 4 * self.embed_dim)
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.embed_dim // self.num_heads)

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
        """From `to_dict()`'s output, also one written by an older lm (fields added since take their defaults)."""
        return cls(**d)


def defaults() -> ml_collections.ConfigDict:
    """Every key a run config has, with its default; config files start here and override."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameters' initialization and the data order
    c.init_from = ""  # 'WORKDIR' or 'WORKDIR:STEP': start from that run's parameters and tokenizer ('' = from scratch)
    c.data = dict(
        path="",  # text, JSONL (.jsonl, .jsonl.gz, .json.gz) or Parquet files: a file, folder or glob; a prepared
        # folder (lm.prepare); or token files (.bin) read in place ('' = the bundled tiny Shakespeare)
        mixture="",  # several corpora with weights instead of path: 'PATH:WEIGHT,PATH:WEIGHT'
        format="auto",  # auto (by extension) | text | jsonl | jsonl.gz | parquet
        text_key="text",  # the JSONL field, Parquet column (or TFDS feature) that holds a document's text
        prompt_key="",  # a field read before the text whose tokens the loss skips (supervised fine-tuning)
        separator="\n\n",  # text is cut into documents here
        validation_fraction=0.1,  # the last characters of text, or the last rows, of each part held out
        cache_dir="",  # where corpora are prepared as token shards ('' = ~/.cache/lm/data)
        workers=0,  # processes that prepare a corpus (0: one per core)
        token_dtype="auto",  # token files (.bin): uint16 | uint32 (auto: uint16 up to 65,536 ids)
        decode_errors="strict",  # bytes that are not UTF-8: strict (stop, naming file and offset) | replace (U+FFFD)
        tfds_name="",  # a TFDS catalog dataset instead (e.g. 'lm1b'), prepared as array_record in tfds_data_dir
        tfds_data_dir="",  # '' = ~/tensorflow_datasets
        tfds_validation_split="",  # '' = 'validation', else 'test'
        tfds_download=False,  # download and prepare a TFDS dataset that is not prepared
        ahead=2,  # batches a background thread prepares while the train step runs (0: between steps)
    )
    c.tokenizer = dict(
        type="char",  # char | bpe | unigram, trained on the training documents
        vocab_size=256,  # pieces of a bpe or unigram model (char: as many as the characters)
        sample_chars=20_000_000,  # characters of the training documents it is trained on (0: all)
        path="",  # a SentencePiece .model file or a Hugging Face folder (tokenizer.json), used as it is
    )
    c.model = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"}
    c.train = dict(
        batch_size=12,  # rows of max_len tokens per step, over all devices and processes
        steps=2000,  # optimizer steps in the run
        log_every=100,  # steps between console lines and metrics records
        eval_every=500,  # steps between evaluations on the validation split (and one at the end)
        eval_batches=0,  # batches of the validation split per evaluation (0: all of it)
        microbatches=1,  # > 1: accumulate gradients over that many slices of each batch (of every device's rows)
        z_loss=0.0,  # weight of log(Z)^2 of the softmax normalizer
        nonfinite="stop",  # a step with a NaN or infinite loss or gradient: stop the run | skip its update
        max_skips=10,  # with nonfinite='skip': stop after this many such steps in a row
        nan_steps=(),  # steps fed a corrupted batch on purpose (a token id past the vocabulary), to try the policy
    )
    c.eval = dict(
        tasks="",  # downstream tasks scored in training: JSONL files, folders or globs, as lm.evaluate --tasks takes
        every=0,  # steps between task evaluations (0: with each validation evaluation); always at the last step
        examples=0,  # examples of each task scored (0: all of them)
    )
    c.optim = dict(
        name="adamw",  # muon, schedule_free_adamw, or an optax optimizer taking learning_rate: adamw, lion, adam, ...
        lr=1e-3,  # peak learning rate, after a linear warmup
        min_lr=1e-4,  # reached at the last step by the decay (cosine, linear, or wsd's cooldown)
        warmup_steps=100,  # steps of the linear warmup from 0
        schedule="cosine",  # after the warmup: cosine | wsd (warmup-stable-decay) | linear | constant
        cooldown_steps=0,  # wsd: the last steps, decaying from lr to min_lr (0: 20% of the schedule's steps)
        cooldown="linear",  # wsd: the cooldown's shape, linear | 1-sqrt
        schedule_steps=0,  # steps the schedule spans (0: train.steps); past train.steps, a wsd run stops stable
        b1=0.9,  # passed to optimizers that take it, as b2 and weight_decay
        b2=0.99,  # the second moment's decay (AdamW)
        weight_decay=0.1,  # on kernels, embeddings and the head only
        grad_clip=1.0,  # global gradient norm clipped to this (0: off)
        muon_beta=0.95,  # muon: the momentum of the hidden matrices' updates (the rest: AdamW with b1, b2)
        muon_lr=0.0,  # muon: the matrices' peak learning rate, on lr's schedule (0: lr)
        muon_params="*kernel",  # muon: globs of the parameter paths it updates (e.g. 'blocks/*/kernel,lm_head')
    )
    c.checkpoint = dict(
        every=250,  # steps between checkpoints (and one after the first step, and one at the end)
        keep=3,  # the newest checkpoints kept
    )
    c.mesh = dict(
        data=-1,  # splits the batch; one axis size may be -1: the rest of the devices
        fsdp=1,  # splits the batch and every parameter
        tensor=1,  # splits heads, MLP width and vocabulary
        rules=DEFAULT_RULES,  # logical axis name -> mesh axes (lm/parallel/mesh.py)
        cpu_devices=1,  # JAX devices a CPU host is split into (0: one per core); small models train faster so
    )
    return ml_collections.ConfigDict(c)


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """The ModelConfig of a validated run config, with the vocabulary size of its tokenizer."""
    return ModelConfig(vocab_size=vocab_size, **cfg.model.to_dict())


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
    _check(cfg.eval.every >= 0, f"config.eval.every must be >= 0 (0: with each validation evaluation), got "
                                f"{cfg.eval.every}")
    _check(cfg.eval.examples >= 0, f"config.eval.examples must be >= 0 (0: all), got {cfg.eval.examples}")
    _check(m.vocab_multiple >= 1, f"config.model.vocab_multiple must be >= 1 (1: no padding), got {m.vocab_multiple}")
    _check(m.scan_unroll >= 0, f"config.model.scan_unroll must be >= 0 (0: all layers), got {m.scan_unroll}")
    _check(m.mlp_dim >= 0, f"config.model.mlp_dim must be >= 0 (0 means 4 * embed_dim), got {m.mlp_dim}")
    _check(m.head_dim >= 0, f"config.model.head_dim must be >= 0 (0: embed_dim / num_heads), got {m.head_dim}")
    _check(
        m.head_dim or m.embed_dim % m.num_heads == 0,
        f"config.model.embed_dim={m.embed_dim} is not divisible by config.model.num_heads={m.num_heads} "
        "(or set config.model.head_dim)",
    )
    _check(m.sliding_window >= 0, f"config.model.sliding_window must be >= 0 (0: none), got {m.sliding_window}")
    for key, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("position", POSITIONS), ("norm", NORMS),
                         ("mlp", MLPS), ("attention", ATTENTIONS), ("matmul", MATMULS),
                         ("remat", REMATS), ("rope_scaling", ROPE_SCALINGS)):
        _check(m[key] in allowed, f"config.model.{key} must be one of {allowed}, got {m[key]!r}")
    kv = m.num_kv_heads or m.num_heads
    _check(0 < kv <= m.num_heads and m.num_heads % kv == 0,
           f"config.model.num_kv_heads={m.num_kv_heads} must divide num_heads={m.num_heads} (0: as many)")
    _check(m.position != "rope" or (m.head_dim or m.embed_dim // m.num_heads) % 2 == 0,
           "RoPE needs an even head dim (config.model.head_dim, or embed_dim / num_heads)")
    _check(m.rope_scaling == "none" or 0 < m.rope_low_freq_factor < m.rope_high_freq_factor,
           "config.model.rope_low_freq_factor must be above 0 and below rope_high_freq_factor, got "
           f"{m.rope_low_freq_factor} and {m.rope_high_freq_factor}")
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
    _check(o.schedule in optim.SCHEDULES,
           f"config.optim.schedule must be one of {', '.join(optim.SCHEDULES)}, got {o.schedule!r}")
    _check(o.cooldown in optim.COOLDOWNS,
           f"config.optim.cooldown must be one of {', '.join(optim.COOLDOWNS)}, got {o.cooldown!r}")
    _check(o.cooldown_steps >= 0, f"config.optim.cooldown_steps must be >= 0, got {o.cooldown_steps}")
    _check(o.schedule_steps >= 0, f"config.optim.schedule_steps must be >= 0 (0: train.steps), got {o.schedule_steps}")
    if o.schedule == "wsd":
        span = optim.horizon(o, cfg.train.steps)
        cooldown = optim.cooldown_steps(o, span)
        _check(cooldown <= span - o.warmup_steps,
               f"config.optim.cooldown_steps={cooldown} is longer than the run after its warmup (schedule steps "
               f"{span} - warmup_steps {o.warmup_steps} = {span - o.warmup_steps}); shorten the cooldown or lengthen "
               "the run")
    _check(o.name != optim.SCHEDULE_FREE or o.schedule == "constant",
           f"config.optim.name={optim.SCHEDULE_FREE} replaces the decay by averaging; set "
           f"--config.optim.schedule=constant (its warmup stays warmup_steps), got {o.schedule!r}")
    _check(o.muon_lr >= 0, f"config.optim.muon_lr must be >= 0 (0: lr), got {o.muon_lr}")
    _check(0 < o.b1 < 1 and 0 < o.b2 < 1, f"config.optim.b1 and b2 must be in (0, 1), got {o.b1}, {o.b2}")
    _check(o.weight_decay >= 0, f"config.optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.grad_clip >= 0, f"config.optim.grad_clip must be >= 0 (0 turns it off), got {o.grad_clip}")
    _check(cfg.mesh.cpu_devices >= 0,
           f"config.mesh.cpu_devices must be >= 0 (0: one per core), got {cfg.mesh.cpu_devices}")
    _check(cfg.data.ahead >= 0, f"config.data.ahead must be >= 0 (0: no background thread), got {cfg.data.ahead}")
    _check(cfg.data.workers >= 0, f"config.data.workers must be >= 0 (0: one per core), got {cfg.data.workers}")
    _check(cfg.data.token_dtype in ("auto", "uint16", "uint32"),
           f"config.data.token_dtype must be auto, uint16 or uint32, got {cfg.data.token_dtype!r}")
    _check(not (cfg.data.mixture and (cfg.data.path or cfg.data.tfds_name)),
           "set config.data.mixture or config.data.path (or tfds_name), not both")
    _check(cfg.data.format in DATA_FORMATS,
           f"config.data.format must be one of {DATA_FORMATS}, got {cfg.data.format!r}")
    _check(bool(cfg.data.text_key), "config.data.text_key must name the JSONL field that holds the text")
    _check(not (cfg.data.path and cfg.data.tfds_name),
           "set config.data.path (local files) or config.data.tfds_name (a TFDS dataset), not both")
    _check(cfg.data.decode_errors in DECODE_ERRORS,
           f"config.data.decode_errors must be one of {DECODE_ERRORS}, got {cfg.data.decode_errors!r}")
    f = cfg.data.validation_fraction
    _check(0 < f < 1, f"config.data.validation_fraction must be in (0, 1), got {f}")
    optim.optimizer(o, cfg.train.steps)  # an optimizer that cannot take the config is one line now
