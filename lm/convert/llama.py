"""Llama-style Hugging Face families <-> `lm` parameters: Llama (LlamaForCausalLM), Qwen2, Qwen3 and Mistral.

They share one layout of tensors (`model.layers.{i}.self_attn.q_proj.weight`, ...), each an option of the one
`lm` model: Qwen2 adds query/key/value biases (`qkv_bias`), Qwen3 a per-head RMSNorm of queries and keys
(`qk_norm`) and a head width of its own (`head_dim`), Mistral a sliding window (`sliding_window`), Llama 3.1 its
RoPE scaling (`rope_scaling='llama3'`). Hugging Face's linear weights are [out, in]; `lm`'s kernels are
[in, ...out] with heads split out: q_proj [N*H, D] -> query kernel [D, N, H], o_proj [D, N*H] -> out [N, H, D].
"""

from typing import Any

import jax
import numpy as np

from lm.errors import UserError
from lm.model import tree
from lm.model.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "mistral": "MistralForCausalLM"}


def canonical_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors as they are: every family here saves the one naming."""
    return tensors


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (earlier)."""
    p = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    theta = p.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = p.get("rope_type", p.get("type", "default"))
    if kind == "default":
        return {"rope_theta": float(theta)}
    if kind != "llama3":
        raise UserError(f"rope scaling type {kind!r} is not supported; lm models 'default' and 'llama3'")
    return {"rope_theta": float(theta), "rope_scaling": "llama3", "rope_factor": float(p["factor"]),
            "rope_low_freq_factor": float(p["low_freq_factor"]), "rope_high_freq_factor": float(p["high_freq_factor"]),
            "rope_original_max_len": int(p["original_max_position_embeddings"])}


def _window(hf: dict[str, Any], family: str) -> int:
    """The sliding window every layer uses (0: none); a window on some layers only is refused."""
    if family == "mistral":
        return int(hf.get("sliding_window") or 0)
    kinds = set(hf.get("layer_types") or [])
    if hf.get("use_sliding_window") or "sliding_attention" in kinds:
        raise UserError(f"{family} with use_sliding_window (a window on some layers only) is not supported; lm "
                        "models a window on every layer (Mistral's sliding_window)")
    return 0


def model_config(hf: dict[str, Any], scan_layers: bool = True) -> ModelConfig:
    """The ModelConfig of a Hugging Face Llama, Qwen2, Qwen3 or Mistral `config.json`."""
    family = hf["model_type"]
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{family} with hidden_act={act!r} is not supported; lm's SwiGLU uses silu")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UserError(f"{family} with attention_bias or mlp_bias is not supported; lm models the query, key "
                        "and value biases of Qwen2 only")
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"], num_layers=hf["num_hidden_layers"],
        num_heads=n, embed_dim=d, mlp_dim=hf["intermediate_size"], num_kv_heads=hf.get("num_key_value_heads") or n,
        head_dim=hf.get("head_dim") or d // n, position="rope", norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu", use_bias=False, qkv_bias=family == "qwen2", qk_norm=family == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), sliding_window=_window(hf, family),
        scan_layers=scan_layers, **_rope(hf))


def family_of(c: ModelConfig) -> str:
    """The Hugging Face family a Llama-style ModelConfig exports as."""
    llama_style = (c.position, c.norm, c.mlp, c.use_bias) == ("rope", "rmsnorm", "swiglu", False)
    if not llama_style or sum((c.qk_norm, c.qkv_bias, c.sliding_window > 0)) > 1:
        raise UserError("this model matches no Hugging Face family lm exports: GPT-2 style (learned positions, "
                        "LayerNorm, GELU, biases) or Llama style (RoPE, RMSNorm, SwiGLU, no biases) with at most "
                        "one of QK-norm (Qwen3), query/key/value biases (Qwen2), a sliding window (Mistral)")
    return "qwen3" if c.qk_norm else "qwen2" if c.qkv_bias else "mistral" if c.sliding_window else "llama"


def hf_config(c: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
    """A Hugging Face `config.json` for a Llama-style ModelConfig (`special_ids`: bos/eos/pad token ids)."""
    family = family_of(c)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling == "llama3":
        rope.update(rope_type="llama3", factor=c.rope_factor, low_freq_factor=c.rope_low_freq_factor,
                    high_freq_factor=c.rope_high_freq_factor, original_max_position_embeddings=c.rope_original_max_len)
    out = {"model_type": family, "architectures": [ARCHITECTURES[family]], "vocab_size": c.vocab_size,
           "hidden_size": c.embed_dim, "intermediate_size": c.mlp_dim, "num_hidden_layers": c.num_layers,
           "num_attention_heads": c.num_heads, "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
           "hidden_act": "silu", "max_position_embeddings": c.max_len, "rms_norm_eps": c.norm_eps,
           "tie_word_embeddings": c.tie_embeddings, "rope_theta": c.rope_theta, "rope_parameters": rope,
           "attention_dropout": 0.0, "dtype": "float32", **{f"{k}_token_id": v for k, v in special_ids.items()}}
    if family == "mistral":
        out["sliding_window"] = c.sliding_window
    elif family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None)
    return out


def _layer_from_hf(t: dict[str, np.ndarray], i: int, c: ModelConfig) -> dict[str, Any]:
    p = f"model.layers.{i}."
    d, n, kv, h = c.embed_dim, c.num_heads, c.kv_heads, c.head_dim
    attn: dict[str, Any] = {}
    for name, hf, heads in (("query", "q_proj", n), ("key", "k_proj", kv), ("value", "v_proj", kv)):
        attn[name] = {"kernel": t[f"{p}self_attn.{hf}.weight"].T.reshape(d, heads, h)}  # [D, heads, H]
        if c.qkv_bias:
            attn[name]["bias"] = t[f"{p}self_attn.{hf}.bias"].reshape(heads, h)
    attn["out"] = {"kernel": t[f"{p}self_attn.o_proj.weight"].T.reshape(n, h, d)}  # [N, H, D]
    if c.qk_norm:
        attn["query_norm"] = {"scale": t[f"{p}self_attn.q_norm.weight"]}
        attn["key_norm"] = {"scale": t[f"{p}self_attn.k_norm.weight"]}
    mlp = {name: {"kernel": t[f"{p}mlp.{hf}.weight"].T} for name, hf in  # [D, F], [F, D]
           (("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj"))}
    return {"attn": attn, "mlp": mlp, "norm_attn": {"scale": t[f"{p}input_layernorm.weight"]},
            "norm_mlp": {"scale": t[f"{p}post_attention_layernorm.weight"]}}


def params_from_hf(tensors: dict[str, np.ndarray], c: ModelConfig) -> dict[str, Any]:
    """`lm` parameters (numpy, float32) from a Llama-style model's safetensors tensors."""
    t = {k: v.astype(np.float32) for k, v in tensors.items()}
    params: dict[str, Any] = {"token_embedding": t["model.embed_tokens.weight"],
                              "norm_final": {"scale": t["model.norm.weight"]}}
    if not c.tie_embeddings:
        params["lm_head"] = t["lm_head.weight"].T  # [D, V]
    return tree.with_layers(params, [_layer_from_hf(t, i, c) for i in range(c.num_layers)], c.scan_layers,
                            stack=np.stack)


def hf_from_params(params: dict[str, Any], c: ModelConfig, xp: Any = np) -> dict[str, Any]:
    """A Llama-style model's safetensors tensors from `lm` parameters."""
    params = jax.tree.map(xp.asarray, params)
    d, n, kv, h = c.embed_dim, c.num_heads, c.kv_heads, c.head_dim
    out = {"model.embed_tokens.weight": params["token_embedding"][: c.vocab_size],  # without padding rows
           "model.norm.weight": params["norm_final"]["scale"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"][:, : c.vocab_size].T
    for i, layer in enumerate(tree.layers(params, c.num_layers)):
        a, p = layer["attn"], f"model.layers.{i}."
        for name, hf, heads in (("query", "q_proj", n), ("key", "k_proj", kv), ("value", "v_proj", kv)):
            out[f"{p}self_attn.{hf}.weight"] = a[name]["kernel"].reshape(d, heads * h).T
            if c.qkv_bias:
                out[f"{p}self_attn.{hf}.bias"] = a[name]["bias"].reshape(heads * h)
        out[f"{p}self_attn.o_proj.weight"] = a["out"]["kernel"].reshape(n * h, d).T
        if c.qk_norm:
            out[f"{p}self_attn.q_norm.weight"] = a["query_norm"]["scale"]
            out[f"{p}self_attn.k_norm.weight"] = a["key_norm"]["scale"]
        for name, hf in (("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj")):
            out[f"{p}mlp.{hf}.weight"] = layer["mlp"][name]["kernel"].T
        out[f"{p}input_layernorm.weight"] = layer["norm_attn"]["scale"]
        out[f"{p}post_attention_layernorm.weight"] = layer["norm_mlp"]["scale"]
    finish = np.ascontiguousarray if xp is np else xp.asarray
    return {k: finish(v, dtype=xp.float32) for k, v in out.items()}
