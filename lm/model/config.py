"""ModelConfig: the shape and numerics of a decoder-only Transformer, each field a `config.model` key with its
default and meaning, and the checks that make an impossible model one line. The model sees nothing else of the run
config."""

import dataclasses
from typing import Any

from lm.section import key, positive, require

DTYPES = ("float32", "bfloat16")
POSITIONS = ("learned", "rope")
ROPE_SCALINGS = ("none", "llama3")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
# What the backward pass recomputes: 'none', or the jax.checkpoint_policies policy of what it saves.
REMATS = {"none": "", "full": "nothing_saveable", "dots": "checkpoint_dots",
          "dots_no_batch": "checkpoint_dots_with_no_batch_dims"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only Transformer: GPT-2 style by default, Llama style by options."""

    vocab_size: int = key(0, "ids the tokenizer makes (set from the run's tokenizer); logits cover exactly these")
    max_len: int = key(64, "context length in tokens")
    num_layers: int = key(4, "decoder blocks")
    num_heads: int = key(4, "query heads")
    embed_dim: int = key(128, "model width")
    mlp_dim: int = key(0, "MLP width; 0: 4 * embed_dim")
    num_kv_heads: int = key(0, "0: as many as num_heads; fewer: grouped-query attention; 1: multi-query")
    head_dim: int = key(0, "width of each head; 0: embed_dim // num_heads (Qwen3 sets it apart from the width)")
    position: str = key("learned", "learned | rope")
    rope_theta: float = key(10000.0, "RoPE's base wavelength")
    rope_scaling: str = key("none", "none | llama3: Llama 3.1's stretch of the long wavelengths (the rope_* keys)")
    rope_factor: float = key(8.0, "llama3: how much the longest wavelengths are stretched")
    rope_low_freq_factor: float = key(1.0, "llama3: wavelengths above rope_original_max_len / this are stretched "
                                           "fully")
    rope_high_freq_factor: float = key(4.0, "llama3: wavelengths below rope_original_max_len / this are kept")
    rope_original_max_len: int = key(8192, "llama3: the context the model was first trained at")
    sliding_window: int = key(0, "each query sees its own and the window - 1 keys before it (Mistral); 0: all")
    norm: str = key("layernorm", "layernorm | rmsnorm")
    norm_eps: float = key(1e-5, "added to the variance in every norm")
    mlp: str = key("gelu", "gelu (tanh approximation, as GPT-2) | swiglu")
    use_bias: bool = key(True, "biases in projections and LayerNorms (GPT-2); none (Llama)")
    qkv_bias: bool = key(False, "biases on the query, key and value projections even without use_bias (Qwen2)")
    tie_embeddings: bool = key(True, "the output head is the token embedding table")
    vocab_multiple: int = key(1, "embedding/head rows rounded up to a multiple of this (128: aligned GPU matmuls)")
    qk_norm: bool = key(False, "RMSNorm on queries and keys per head")
    attention: str = key("auto", "auto (CPU: cpu; NVIDIA GPU in bfloat16: cudnn; else xla) | xla | cudnn | cpu | "
                                 "reference")
    matmul: str = key("auto", "projections: auto (CPU: cpu; else xla) | xla | cpu (lm/backends/)")
    scan_layers: bool = key(True, "one compiled layer, scanned: compile time does not grow with depth")
    scan_unroll: int = key(1, "layers per iteration of the scanned loop; 0: all (straight-line code)")
    remat: str = key("none", "none | full | dots | dots_no_batch: what the backward pass recomputes")
    dtype: str = key("float32", "activations and products (float32 | bfloat16)")
    param_dtype: str = key("float32", "parameters and optimizer state")

    def __post_init__(self) -> None:
        self._check()
        if not self.mlp_dim:
            object.__setattr__(self, "mlp_dim", 4 * self.embed_dim)
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.embed_dim // self.num_heads)

    def _check(self) -> None:
        positive(self, "model", "num_layers", "num_heads", "embed_dim", "max_len")
        require(self.vocab_multiple >= 1, f"config.model.vocab_multiple must be >= 1 (1: no padding), got "
                                          f"{self.vocab_multiple}")
        require(self.scan_unroll >= 0, f"config.model.scan_unroll must be >= 0 (0: all layers), got {self.scan_unroll}")
        require(self.mlp_dim >= 0, f"config.model.mlp_dim must be >= 0 (0 means 4 * embed_dim), got {self.mlp_dim}")
        require(self.head_dim >= 0, f"config.model.head_dim must be >= 0 (0: embed_dim / num_heads), got "
                                    f"{self.head_dim}")
        require(self.head_dim or self.embed_dim % self.num_heads == 0,
                f"config.model.embed_dim={self.embed_dim} is not divisible by config.model.num_heads="
                f"{self.num_heads} (or set config.model.head_dim)")
        require(self.sliding_window >= 0, f"config.model.sliding_window must be >= 0 (0: none), got "
                                          f"{self.sliding_window}")
        for name, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("position", POSITIONS), ("norm", NORMS),
                              ("mlp", MLPS), ("remat", tuple(REMATS)), ("rope_scaling", ROPE_SCALINGS)):
            value = getattr(self, name)
            require(value in allowed, f"config.model.{name} must be one of {allowed}, got {value!r}")
        kv = self.num_kv_heads or self.num_heads
        require(0 < kv <= self.num_heads and self.num_heads % kv == 0,
                f"config.model.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} (0: as many)")
        require(self.position != "rope" or (self.head_dim or self.embed_dim // self.num_heads) % 2 == 0,
                "RoPE needs an even head dim (config.model.head_dim, or embed_dim / num_heads)")
        require(self.rope_scaling == "none" or 0 < self.rope_low_freq_factor < self.rope_high_freq_factor,
                "config.model.rope_low_freq_factor must be above 0 and below rope_high_freq_factor, got "
                f"{self.rope_low_freq_factor} and {self.rope_high_freq_factor}")

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
