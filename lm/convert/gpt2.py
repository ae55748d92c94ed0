"""Hugging Face GPT-2 (GPT2LMHeadModel) <-> `lm` parameters and model config.

Hugging Face's Conv1D weights are [in, out], as `lm`'s kernels; the fused query/key/value projection is split
into three [D, N, H] kernels.
"""

from typing import Any

import jax
import numpy as np

from lm.errors import UserError
from lm.model import tree
from lm.model.config import ModelConfig

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def model_config(hf: dict[str, Any], scan_layers: bool = True) -> ModelConfig:
    """The ModelConfig of a Hugging Face GPT-2 `config.json`."""
    if hf.get("model_type") != "gpt2" or hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise UserError(f"only GPT-2 with a tanh GELU converts, got model_type={hf.get('model_type')!r}, "
                            f"activation_function={hf.get('activation_function')!r}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get(
            "scale_attn_weights", True) or not hf.get("tie_word_embeddings", True):
        raise UserError("this GPT-2 uses attention scaling options or untied embeddings that lm does not model")
    d = hf["n_embd"]
    return ModelConfig(vocab_size=hf["vocab_size"], max_len=hf["n_positions"], num_layers=hf["n_layer"],
                       num_heads=hf["n_head"], embed_dim=d, mlp_dim=hf.get("n_inner") or 4 * d,
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5), scan_layers=scan_layers)


def canonical_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors named as GPT2LMHeadModel saves them (some files leave out the 'transformer.' prefix)."""
    return {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in tensors.items()}


def is_gpt2_style(c: ModelConfig) -> bool:
    return (c.position, c.norm, c.mlp, c.use_bias, c.tie_embeddings, c.qk_norm, c.qkv_bias, c.kv_heads,
            c.head_dim, c.sliding_window) == ("learned", "layernorm", "gelu", True, True, False, False,
                                              c.num_heads, c.embed_dim // c.num_heads, 0)


def hf_config(c: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
    """A Hugging Face GPT-2 `config.json` for a GPT-2-style ModelConfig, with the tokenizer's start and end ids
    (none without a tokenizer: `transformers` would take GPT-2's 50256, outside a smaller vocabulary)."""
    if not is_gpt2_style(c):
        raise UserError("only GPT-2-style models export (learned positions, LayerNorm, GELU, biases, tied "
                            "embeddings, no QK-norm, as many kv heads as heads)")
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
            "n_positions": c.max_len, "n_embd": c.embed_dim, "n_layer": c.num_layers, "n_head": c.num_heads,
            "n_inner": c.mlp_dim, "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
            "tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "bos_token_id": special_ids.get("bos"), "eos_token_id": special_ids.get("eos")}


def _layer_from_gpt2(t: dict[str, np.ndarray], i: int, c: ModelConfig) -> dict[str, Any]:
    p = f"h.{i}."
    d, n, h = c.embed_dim, c.num_heads, c.head_dim
    qkv_w = np.split(t[p + "attn.c_attn.weight"], 3, axis=1)  # 3 x [D, D]
    qkv_b = np.split(t[p + "attn.c_attn.bias"], 3)
    attn = {name: {"kernel": w.reshape(d, n, h), "bias": b.reshape(n, h)}
            for name, w, b in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True)}
    attn["out"] = {"kernel": t[p + "attn.c_proj.weight"].reshape(n, h, d), "bias": t[p + "attn.c_proj.bias"]}
    norm = lambda k: {"scale": t[p + k + ".weight"], "bias": t[p + k + ".bias"]}  # noqa: E731
    mlp = {name: {"kernel": t[f"{p}mlp.{hf}.weight"], "bias": t[f"{p}mlp.{hf}.bias"]}
           for name, hf in (("fc", "c_fc"), ("proj", "c_proj"))}
    return {"attn": attn, "mlp": mlp, "norm_attn": norm("ln_1"), "norm_mlp": norm("ln_2")}


def params_from_hf(tensors: dict[str, np.ndarray], c: ModelConfig) -> dict[str, Any]:
    """`lm` parameters (numpy, float32) from the tensors of a Hugging Face GPT-2 `model.safetensors`."""
    t = {k.removeprefix("transformer."): v.astype(np.float32) for k, v in canonical_names(tensors).items()}
    layers = [_layer_from_gpt2(t, i, c) for i in range(c.num_layers)]
    params: dict[str, Any] = {
        "token_embedding": t["wte.weight"], "position_embedding": t["wpe.weight"],
        "norm_final": {"scale": t["ln_f.weight"], "bias": t["ln_f.bias"]},
    }
    return tree.with_layers(params, layers, c.scan_layers, stack=np.stack)


def hf_from_params(params: dict[str, Any], c: ModelConfig, xp: Any = np) -> dict[str, Any]:
    """The tensors of a Hugging Face GPT-2 `model.safetensors` from `lm` parameters."""
    params = jax.tree.map(xp.asarray, params)
    d = c.embed_dim
    out = {"transformer.wte.weight": params["token_embedding"][: c.vocab_size],  # without padding rows
           "transformer.wpe.weight": params["position_embedding"],
           "transformer.ln_f.weight": params["norm_final"]["scale"],
           "transformer.ln_f.bias": params["norm_final"]["bias"]}
    for i, layer in enumerate(tree.layers(params, c.num_layers)):
        a, p = layer["attn"], f"transformer.h.{i}."
        qkv = ("query", "key", "value")
        out[p + "attn.c_attn.weight"] = xp.concatenate([a[k]["kernel"].reshape(d, d) for k in qkv], axis=1)
        out[p + "attn.c_attn.bias"] = xp.concatenate([a[k]["bias"].reshape(d) for k in qkv])
        out[p + "attn.c_proj.weight"] = a["out"]["kernel"].reshape(d, d)
        out[p + "attn.c_proj.bias"] = a["out"]["bias"]
        for hf, name in (("ln_1", "norm_attn"), ("ln_2", "norm_mlp")):
            out[f"{p}{hf}.weight"], out[f"{p}{hf}.bias"] = layer[name]["scale"], layer[name]["bias"]
        for hf, name in (("c_fc", "fc"), ("c_proj", "proj")):
            out[f"{p}mlp.{hf}.weight"] = layer["mlp"][name]["kernel"]
            out[f"{p}mlp.{hf}.bias"] = layer["mlp"][name]["bias"]
    finish = np.ascontiguousarray if xp is np else xp.asarray
    return {k: finish(v, dtype=xp.float32) for k, v in out.items()}
